"""LoRA against full fine-tuning, side by side in one run: trainable parameters, optimizer state, memory, speed.

The distilgpt2 architecture (GPT2Config(n_layer=6), random weights) at batch
16 x 128 on random token blocks, through tfclm's `CausalLMTrainer` and
optimizer (AdamWeightDecay): full fine-tuning, and LoRA rank 8 (alpha 16) on
the attention and MLP projections (c_attn, c_proj, c_fc), in fp32 and in
bf16 (LoRA with its frozen base kept in bfloat16, `lora.base_precision`).
Each variant runs in a process of its own, the variants take turns over
`--rounds`, and each row prints the median tokens/s and its spread. Memory is
the process's peak resident set over its whole life (load included) and over
the training steps alone (the peak is reset once the model and optimizer are
built, through /proc/self/clear_refs).

`--only width`: the widest GPT-2 (12 layers, 64-wide heads) whose training
steps at batch 1 x 512 stay within `--memory-budget-gb`, fully fine-tuned in
fp32 and with LoRA and a bfloat16 base (built in bfloat16, as `fit` loads
it); widths grow (by 256 and 512) until a step's peak passes the budget, and
none is tried whose weights alone would not fit this machine's memory.

    .venv/bin/python bench/lora.py [--steps 6] [--warmup 2] [--rounds 3] [--only speed|width]
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from common import VOCAB, distilgpt2

BATCH, BLOCK = 16, 128
VARIANTS = {
    "full fine-tuning fp32": ("fp32", 0),
    "LoRA r8 fp32": ("fp32", 8),
    "full fine-tuning bf16": ("bf16", 0),
    "LoRA r8 bf16, bf16 base": ("bf16", 8),
}


class StepTimer:
    """Keras callback timing each batch after the warm-up."""

    def __new__(cls, warmup, tokens_per_step):
        from tfclm.backend import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times, self._t = [], None

            def on_train_batch_begin(self, batch, logs=None):
                self._t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self._t)

            def tokens_per_second(self):
                timed = self.times[warmup:] or self.times
                return tokens_per_step * len(timed) / sum(timed)

        return Timer()


def training_peak_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) / 1024


def run_variant(precision, rank, steps, warmup, batch, block, width=768, layers=6):
    """In a process of its own: one JSON line of parameters, optimizer bytes, peak memory and tokens/s."""
    from tfclm.backend import keras
    from tfclm.config import LoraConfig, TrainConfig
    from tfclm.data.packing import Blocks
    from tfclm.data.pipeline import fast_dataset
    from tfclm.model import lora
    from tfclm.model.loading import built_in_bfloat16
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision(precision)
    shape = dict(n_layer=layers, n_embd=width, n_head=width // 64, n_positions=max(block, 1024))
    frozen_bf16 = rank > 0 and precision == "bf16"
    with built_in_bfloat16() if frozen_bf16 else contextlib.nullcontext():  # as `fit` loads a bf16 base
        model = distilgpt2(dropout=0.1, **shape)
    total = sum(v.shape.num_elements() for v in model.weights)
    if rank:
        base = "bf16" if frozen_bf16 else "fp32"
        lora.add_adapters(model, LoraConfig(rank=rank, alpha=2 * rank, base_precision=base))
    trainer = CausalLMTrainer(model)
    trainer.compile(optimizer=make_optimizer(TrainConfig(learning_rate=2e-5), model, warmup + steps))
    state = [v for v in trainer.inner_optimizer.variables() if len(v.shape)]
    blocks = np.random.default_rng(0).integers(0, VOCAB - 1, (batch * (steps + warmup), block)).astype(np.int32)
    data = fast_dataset(Blocks(blocks, len(blocks), blocks.size, 0), batch, shuffle=True, seed=0)
    timer = StepTimer(warmup, batch * block)
    with open("/proc/self/clear_refs", "w") as handle:  # from here on, the peak of the training steps alone
        handle.write("5")
    trainer.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    print(
        json.dumps(
            {
                "parameters": total,
                "trainable": sum(v.shape.num_elements() for v in model.trainable_variables),
                "optimizer_bytes": sum(v.shape.num_elements() * v.dtype.size for v in state),
                "tokens_per_second": timer.tokens_per_second(),
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: kilobytes
                "training_peak_mb": training_peak_mb(),
            }
        )
    )


def measured(name, steps, warmup, batch=BATCH, block=BLOCK, width=768, layers=6) -> dict | None:
    command = [sys.executable, __file__, "--variant", name, "--steps", str(steps), "--warmup", str(warmup)]
    command += ["--batch", str(batch), "--block", str(block), "--width", str(width), "--layers", str(layers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(f"  {name} at width {width}: failed ({done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args) -> None:
    runs = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):  # interleaved, so a slow minute of the machine falls on every variant alike
        for name in VARIANTS:
            runs[name].append(measured(name, args.steps, args.warmup))
    print(
        f"{os.cpu_count()} cores; distilgpt2 architecture, batch {BATCH} x {BLOCK}; {args.steps} timed steps after "
        f"{args.warmup} warm-up steps, {args.rounds} rounds; AdamWeightDecay"
    )
    head = f"{'variant':<26} {'trainable':>10} {'share':>6} {'optimizer MB':>12} {'peak MB':>8} {'vs full':>8}"
    print(head + f" {'steps MB':>9} {'vs full':>8} {'tokens/s':>9} {'spread':>7} {'vs full':>8}")
    full = runs["full fine-tuning fp32"]
    full_peak, full_steps = max(r["peak_mb"] for r in full), max(r["training_peak_mb"] for r in full)
    full_tps = float(np.median([r["tokens_per_second"] for r in full]))
    for name, found in runs.items():
        speeds = [r["tokens_per_second"] for r in found]
        tps, first = float(np.median(speeds)), found[0]
        peak, steps_peak = max(r["peak_mb"] for r in found), max(r["training_peak_mb"] for r in found)
        print(
            f"{name:<26} {first['trainable']:>10,} {first['trainable'] / first['parameters']:>6.2%} "
            f"{first['optimizer_bytes'] / 1e6:>12.1f} {peak:>8.0f} {peak / full_peak:>8.0%} {steps_peak:>9.0f} "
            f"{steps_peak / full_steps:>8.0%} {tps:>9.1f} {(max(speeds) - min(speeds)) / tps:>7.1%} "
            f"{tps / full_tps:>7.2f}x"
        )


def params_at(width: int, layers: int = 12) -> int:
    return 12 * layers * width * width + (VOCAB + 1024) * width


WIDTH_SEARCH = {  # variant: (first width, step, bytes a parameter needs at least: weights, gradients, slots)
    "full fine-tuning fp32": (768, 256, 16),
    "LoRA r8 bf16, bf16 base": (2048, 512, 2),
}


def widest(args) -> None:
    budget = args.memory_budget_gb * 1024
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    print(f"\nwidest 12-layer GPT-2 whose training steps at batch 1 x 512 stay within {args.memory_budget_gb:g} GB:")
    for name, (width, step, least) in WIDTH_SEARCH.items():
        fits = None
        while True:
            if params_at(width) * least / 2**20 > 0.8 * machine:
                print(f"  {name}: width {width} not tried: its weights alone would not fit this machine")
                break
            found = measured(name, 1, 1, batch=1, block=512, width=width, layers=12)
            if found is None:
                break
            within = found["training_peak_mb"] <= budget
            print(
                f"  {name}: width {width} ({found['parameters'] / 1e9:.2f}B parameters): peak "
                f"{found['training_peak_mb']:,.0f} MB{'' if within else ' (over the budget)'}, "
                f"{found['tokens_per_second']:.0f} tokens/s"
            )
            if not within:
                break
            fits, width = width, width + step
        print(f"{name}: widest within the budget {fits} (widths {step} apart)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-budget-gb", type=float, default=16.0)
    parser.add_argument("--only", choices=["speed", "width"], help="run one of the two parts")
    for hidden in ("--variant", "--batch", "--block", "--width", "--layers"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        precision, rank = VARIANTS[args.variant]
        return run_variant(
            precision, rank, args.steps, args.warmup, int(args.batch), int(args.block), int(args.width),
            int(args.layers),
        )  # fmt: skip
    if args.only != "width":
        speed(args)
    if args.only != "speed":
        widest(args)


if __name__ == "__main__":
    main()
