"""Training speed and memory: the recipe as written against tfclm's engine, side by side in one run.

The distilgpt2 architecture (GPT2Config(n_layer=6), random weights) at batch
16 x 128 on random token blocks. The recipe: `prepare_tf_dataset` with
`DataCollatorForLanguageModeling`, `AdamWeightDecay(2e-5, 0.01)`,
`compile()` with the model's own loss. tfclm: the fast `tf.data` pipeline and
`CausalLMTrainer` in fp32, bf16, bf16 without the fused activations and
layer norms (`train.fused_ops: false`), bf16 + XLA, and bf16 with the chunked
LM-head loss (`train.loss_chunk_tokens`). Also this machine's matmul peak in
float32 and bfloat16 (repeated matmuls at the model's head shape), and model
FLOPs utilisation: FLOPs per token (6N + 12 L H Q T, `tfclm.training.flops`)
x tokens/s over the float32 peak.

Each variant runs in a process of its own, so its peak resident memory is its
own; the variants take turns, `--rounds` times, and each row prints the
median tokens/s and the spread (max - min over the median) of its rounds; a
round's tokens/s is over its median step, of 20 by default: this shared
machine has slow minutes (a process's steps range over 6% to 9% of their
median), and with 8 or 12 steps the rows spread by up to 7% between rounds.
Then memory at block 1,024: for the recipe and tfclm's bf16 variants, the
largest batch whose training step peaks within `--memory-budget-gb`,
measured (one step a process; the batch above it measured over the budget).

    .venv/bin/python bench/train.py [--steps 20] [--warmup 2] [--rounds 3] [--only speed|memory] [--variants NAME...]

`--variants` times some variants alone (the recipe always runs, as the base of
the ratios): more rounds of a comparison in the same time. `--batch` and
`--block` set the speed part's shape (distilgpt2 at block 1,024 on a GPU:
`--only speed --block 1024 --batch 8 --variants "tfclm bf16 + XLA"`); on a
GPU each row also prints the GPU's peak memory, and MFU stays over the
float32 matmul probe of whatever device runs it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from tfclm.backend import keras, tf
from tfclm.training.flops import flops_per_token
from tfclm.training.peak import matmul_peak

from common import VOCAB, distilgpt2, id_tokenizer

BATCH, BLOCK = 16, 128


class StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup, tokens_per_step):
        super().__init__()
        self.warmup, self.tokens_per_step, self.times, self._t = warmup, tokens_per_step, [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)

    def tokens_per_second(self):
        """Over the median step: a step the machine slowed (another process, a page-in) moves it little."""
        measured = self.times[self.warmup :] or self.times
        return self.tokens_per_step / float(np.median(measured))


def recipe(blocks, steps, warmup, batch):
    import datasets
    from transformers import AdamWeightDecay, DataCollatorForLanguageModeling

    model = distilgpt2()
    lm_dataset = datasets.Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": np.ones_like(blocks), "labels": blocks}
    )
    data_collator = DataCollatorForLanguageModeling(tokenizer=id_tokenizer(), mlm=False, return_tensors="tf")
    tf_train_set = model.prepare_tf_dataset(lm_dataset, shuffle=True, batch_size=batch, collate_fn=data_collator)
    optimizer = AdamWeightDecay(learning_rate=2e-5, weight_decay_rate=0.01)
    model.compile(optimizer=optimizer)
    timer = StepTimer(warmup, batch * blocks.shape[1])
    model.fit(x=tf_train_set, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    return timer.tokens_per_second()


def tfclm_engine(blocks, steps, warmup, batch, precision, jit, chunk=0, recompute=False, fused_ops=True):
    from tfclm.config import TrainConfig
    from tfclm.data.packing import Blocks
    from tfclm.data.pipeline import fast_dataset
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision(precision)
    try:
        model = distilgpt2(dropout=0.0 if recompute else 0.1)  # a recomputed block must not drop out
        trainer = CausalLMTrainer(model, loss_chunk_tokens=chunk, recompute=recompute, fused_ops=fused_ops)
        trainer.compile(
            optimizer=make_optimizer(TrainConfig(learning_rate=2e-5, weight_decay=0.01), model, warmup + steps),
            jit_compile=jit,
        )
        timer = StepTimer(warmup, batch * blocks.shape[1])
        data = fast_dataset(Blocks(blocks, len(blocks), blocks.size, 0), batch, shuffle=True, seed=0)
        trainer.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
        return timer.tokens_per_second()
    finally:
        keras.mixed_precision.set_global_policy("float32")


RECIPE = "recipe as written (fp32)"
VARIANTS = {
    RECIPE: lambda *run: recipe(*run),
    "tfclm fp32": lambda *run: tfclm_engine(*run, "fp32", False),
    "tfclm bf16": lambda *run: tfclm_engine(*run, "bf16", False),
    "tfclm bf16, transformers' ops": lambda *run: tfclm_engine(*run, "bf16", False, fused_ops=False),
    "tfclm bf16 + XLA": lambda *run: tfclm_engine(*run, "bf16", True),
    "tfclm bf16 + chunked loss 512": lambda *run: tfclm_engine(*run, "bf16", False, chunk=512),
    "tfclm bf16 + chunked + recompute": lambda *run: tfclm_engine(*run, "bf16", False, chunk=512, recompute=True),
}
# Memory at block 1,024: the variants that differ in what a step keeps.
MEMORY_VARIANTS = (
    "recipe as written (fp32)",
    "tfclm bf16",
    "tfclm bf16 + chunked loss 512",
    "tfclm bf16 + chunked + recompute",
)


def run_variant(name, steps, warmup, batch, block):
    """In a process of its own: tokens/s and the process's peak resident memory, as one JSON line."""
    shape = (batch * (steps + warmup), block)
    blocks = np.random.default_rng(0).integers(0, VOCAB - 1, shape).astype(np.int32)
    tps = VARIANTS[name](blocks, steps, warmup, batch)
    found = {"tokens_per_second": tps, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB
    if tf.config.list_logical_devices("GPU"):  # the process's resident memory says nothing of the GPU's
        found["gpu_peak_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    print(json.dumps(found))


def measured(name, steps, warmup, batch=BATCH, block=BLOCK) -> dict:
    command = [sys.executable, __file__, "--variant", name, "--steps", str(steps), "--warmup", str(warmup)]
    command += ["--batch", str(batch), "--block", str(block)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_batch(name: str, budget_mb: float, block: int) -> tuple[int, dict]:
    """(the largest batch whose one-step peak is within `budget_mb`, every batch measured: its peak MB), found by
    measuring: batch 2 and 4, then along the line through the two nearest points, until a batch that fits sits next
    to one that does not. A line through two small batches alone misleads: there a process's peak is mostly
    TensorFlow's start and the weights (recompute read 31 MB a sequence from batch 2 to 4, 99 from 16 to 32)."""
    peaks = {}

    def peak(batch):
        if batch not in peaks:
            peaks[batch] = measured(name, 1, 0, batch, block)["peak_mb"]
        return peaks[batch]

    peak(2), peak(4)
    for _ in range(12):
        fits = [b for b in peaks if peaks[b] <= budget_mb]
        if not fits:
            return (1 if peak(1) <= budget_mb else 0), peaks
        low = max(fits)
        over = [b for b in peaks if b > low]
        if over and min(over) == low + 1:
            return low, peaks
        # Between the two batches around the budget, or on from the two largest that fit (2 and 4 are measured).
        other = min(over) if over else max(b for b in peaks if b < low)
        slope = max((peaks[other] - peaks[low]) / (other - low), 1.0)
        guess = low + int((budget_mb - peaks[low]) // slope)
        # Never more than 4 times the largest batch that fits (a flat line would ask for hundreds), never past
        # a batch known to be over.
        guess = max(low + 1, min(guess, 4 * low, min(over) - 1 if over else guess))
        peak(guess if guess not in peaks else low + 1)
    return max(b for b in peaks if peaks[b] <= budget_mb), peaks


def memory_at_long_blocks(budget_mb: float, block: int = 1024) -> None:
    """The largest batch of `block` tokens whose training step fits in `budget_mb`, measured, for each variant."""
    print(f"\npeak resident memory of one training step at block {block:,} (its own process each):")
    print(f"{'variant':<34} {'largest batch':>13}  batches measured (peak MB)")
    largest = {}
    for name in MEMORY_VARIANTS:
        largest[name], peaks = largest_batch(name, budget_mb, block)
        found = ", ".join(f"{b}: {peaks[b]:,.0f}" for b in sorted(peaks))
        print(f"{name:<34} {largest[name]:>13}  {found}")
    base = largest[RECIPE] or 1
    best = largest["tfclm bf16 + chunked + recompute"]
    print(
        f"largest batch within {budget_mb / 1024:.0f} GB: bf16 + chunked + recompute {best}, recipe "
        f"{largest[RECIPE]} ({best / base:.1f}x)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--only", choices=["speed", "memory"], help="run one of the two parts")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), metavar="NAME", help="time these (and the recipe) alone"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences a step in the speed part")
    parser.add_argument("--block", type=int, default=BLOCK, help="tokens a sequence in the speed part")
    args = parser.parse_args()
    if args.variant:
        return run_variant(args.variant, args.steps, args.warmup, args.batch, args.block)
    if args.only != "memory":
        speed(args)
    if args.only != "speed":
        memory_at_long_blocks(args.memory_budget_gb * 1024)


def speed(args):
    model = distilgpt2()
    params = sum(v.shape.num_elements() for v in model.trainable_variables)
    per_token = flops_per_token(model, args.block)
    peak32, peak16 = matmul_peak(tf.float32, repeats=10), matmul_peak(tf.bfloat16, repeats=10)
    xla32, xla16 = matmul_peak(tf.float32, repeats=10, jit=True), matmul_peak(tf.bfloat16, repeats=10, jit=True)
    runs = {name: [] for name in VARIANTS if name == RECIPE or not args.variants or name in args.variants}
    for _ in range(args.rounds):  # interleaved, so a slow minute of the machine falls on every variant alike
        for name in runs:
            runs[name].append(measured(name, args.steps, args.warmup, args.batch, args.block))
    device = tf.config.list_physical_devices()[-1].device_type
    print(
        f"device: {device}, {os.cpu_count()} cores; distilgpt2 architecture ({params / 1e6:.1f}M parameters), batch "
        f"{args.batch} x {args.block}; {args.steps} timed steps after {args.warmup} warm-up steps, {args.rounds} rounds"
    )
    print(
        f"matmul peak: float32 {peak32 / 1e9:.0f} GFLOP/s, bfloat16 {peak16 / 1e9:.0f} GFLOP/s "
        f"({peak16 / peak32:.2f}x); under XLA: float32 {xla32 / 1e9:.0f}, bfloat16 {xla16 / 1e9:.0f} GFLOP/s "
        f"({xla16 / xla32:.2f}x)"
    )
    medians = {name: float(np.median([r["tokens_per_second"] for r in found])) for name, found in runs.items()}
    base, base_mb = medians[RECIPE], max(r["peak_mb"] for r in runs[RECIPE])
    print(
        f"{'variant':<32} {'tokens/s':>9} {'spread':>7} {'vs recipe':>10} {'MFU':>5} {'peak MB':>8} {'vs recipe':>10}"
    )
    for name, found in runs.items():
        tps, speeds = medians[name], [r["tokens_per_second"] for r in found]
        peak_mb = max(r["peak_mb"] for r in found)
        print(
            f"{name:<32} {tps:>9.1f} {(max(speeds) - min(speeds)) / tps:>7.1%} {tps / base:>9.2f}x "
            f"{per_token * tps / peak32:>5.0%} {peak_mb:>8.0f} {peak_mb / base_mb:>9.0%}"
            + (f"  GPU peak {max(r['gpu_peak_mb'] for r in found):,.0f} MB" if "gpu_peak_mb" in found[0] else "")
        )


if __name__ == "__main__":
    main()
