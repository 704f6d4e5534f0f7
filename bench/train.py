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
x tokens/s over the peak of the precision the variant computes in (the
bfloat16 probe for the bf16 variants, the float32 one for the others; the
faster of each probe with and without XLA), so no row can pass 100% by
being measured against a slower unit.

Each variant runs in a process of its own (so its peak resident memory is
its own), alive beside the recipe's: the two take turns step by step (the
recipe first every other step), `--steps` steps each a round, `--rounds`
rounds, so a slow minute of this shared machine falls on both alike. A
round's tokens/s is over its median step; each row prints the median over
its rounds and their spread (max - min over the median), and the median of
its rounds' ratios to the recipe's tokens/s in the same round, with their
spread. The recipe's row is over every round of every pairing. Then memory
at block 1,024: for the recipe and tfclm's bf16 variants, the largest batch
whose training step peaks within `--memory-budget-gb`, measured (one step a
process; the batch above it measured over the budget).

    .venv/bin/python bench/train.py [--steps 10] [--warmup 2] [--rounds 3] [--only speed|memory] [--variants NAME...]

`--variants` times some variants alone (the recipe always runs, as the base of
the ratios). `--batch` and `--block` set the speed part's shape (distilgpt2
at block 1,024 on a GPU: `--only speed --block 1024 --batch 8 --variants
"tfclm bf16 + XLA"`); on a GPU each row also prints the GPU's peak memory
(the workers grow their GPU memory as they need it, so two fit on one
card), and MFU is over the matmul probes of whatever device runs it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from steps import REPLY, peak_mb, reply, timed_steps

from tfclm.backend import keras, tf
from tfclm.training.flops import flops_per_token
from tfclm.training.peak import matmul_peak

from common import VOCAB, distilgpt2, id_tokenizer

BATCH, BLOCK = 16, 128


def recipe(blocks, batch):
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
    return one_step(model, tf_train_set)


def tfclm_engine(blocks, batch, precision, jit, chunk=0, recompute=False, fused_ops=True, seed=0):
    from tfclm.config import TrainConfig
    from tfclm.data.packing import Blocks
    from tfclm.data.pipeline import fast_dataset
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision(precision)
    try:
        model = distilgpt2(dropout=0.1)
        trainer = CausalLMTrainer(model, loss_chunk_tokens=chunk, recompute=recompute, fused_ops=fused_ops, seed=seed)
        trainer.compile(
            optimizer=make_optimizer(TrainConfig(learning_rate=2e-5, weight_decay=0.01), model, 10**6),
            jit_compile=jit,
        )
        step = one_step(trainer, fast_dataset(Blocks(blocks, len(blocks), blocks.size, 0), batch, shuffle=True, seed=0))
        step()  # traced while the precision policy is set, as `fit` would
        return step
    finally:
        keras.mixed_precision.set_global_policy("float32")


def one_step(model, dataset):
    """A function that runs one training step as `fit` does (the model's train function on the dataset's
    iterator) and waits for its loss."""
    train_function, batches = model.make_train_function(), iter(dataset.repeat())
    return lambda: float(next(iter(train_function(batches).values())))


RECIPE = "recipe as written (fp32)"
VARIANTS = {
    RECIPE: lambda *run: recipe(*run),
    "tfclm fp32": lambda *run: tfclm_engine(*run, "fp32", False),
    "tfclm bf16": lambda *run: tfclm_engine(*run, "bf16", False),
    "tfclm bf16, transformers' ops": lambda *run: tfclm_engine(*run, "bf16", False, fused_ops=False),
    # Keras' own dropout, drawn from the process's state (a resume draws other masks): what seeded dropout costs
    "tfclm bf16, Keras' dropout": lambda *run: tfclm_engine(*run, "bf16", False, seed=None),
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


def serve(name, warmup, batch, block, variants=None):
    """A worker: builds `name` (of `variants`, by default this bench's), runs `warmup` steps, then one timed step
    for each "step" line on stdin; at the end of stdin, the steps it timed and its process's peak resident memory.
    Each reply one JSON line."""
    blocks = np.random.default_rng(0).integers(0, VOCAB - 1, (batch * 16, block)).astype(np.int32)
    step = (variants or VARIANTS)[name](blocks, batch)
    for _ in range(warmup):
        step()
    reply({"ready": name})
    found = {"steps": timed_steps(step), "peak_mb": peak_mb()}
    if tf.config.list_logical_devices("GPU"):  # the process's resident memory says nothing of the GPU's
        found["gpu_peak_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    reply(found)


class Worker:
    """A variant in a process of its own (so its peak memory is its own), which waits between the steps it is
    asked for: two workers alive at once take turns step by step, and a slow minute of the machine falls on both."""

    def __init__(self, name, warmup, batch, block, script=__file__, python=sys.executable, options=(), label=None):
        self.name, self.log = label or name, tempfile.TemporaryFile("w+")
        command = [python, script, "--serve", name, "--warmup", str(warmup)]
        command += ["--batch", str(batch), "--block", str(block), *options]
        # Two TensorFlow processes share a GPU only if neither takes all its memory at the start.
        env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.ready = self.answer()

    def step(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self.answer()["seconds"]

    def close(self) -> dict:
        self.process.stdin.close()
        found = self.answer()
        self.process.wait()
        self.log.close()
        return found

    def answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        self.log.seek(0)
        raise RuntimeError(f"{self.name} ended (exit {self.process.wait()}):\n{self.log.read()[-3000:]}")


def measured(name, batch, block) -> dict:
    """One training step of `name` in a process of its own: its peak memory."""
    return Worker(name, 1, batch, block).close()


def largest_batch(name: str, budget_mb: float, block: int) -> tuple[int, dict]:
    """(the largest batch whose one-step peak is within `budget_mb`, every batch measured: its peak MB), found by
    measuring: batch 2 and 4, then along the line through the two nearest points, until a batch that fits sits next
    to one that does not. A line through two small batches alone misleads: there a process's peak is mostly
    TensorFlow's start and the weights (recompute read 31 MB a sequence from batch 2 to 4, 99 from 16 to 32)."""
    peaks = {}

    def peak(batch):
        if batch not in peaks:
            peaks[batch] = measured(name, batch, block)["peak_mb"]
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
    parser.add_argument("--steps", type=int, default=10, help="timed steps a variant a round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, in each process")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a variant, each with the recipe")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--probe-repeats", type=int, default=10, help="timed matmuls in each peak probe")
    parser.add_argument("--only", choices=["speed", "memory"], help="run one of the two parts")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), metavar="NAME", help="time these (and the recipe) alone"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences a step in the speed part")
    parser.add_argument("--block", type=int, default=BLOCK, help="tokens a sequence in the speed part")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.warmup, args.batch, args.block)
    if args.only != "memory":
        speed(args)
    if args.only != "speed":
        memory_at_long_blocks(args.memory_budget_gb * 1024)


def speed(args):
    model = distilgpt2()
    params = sum(v.shape.num_elements() for v in model.trainable_variables)
    per_token, tokens = flops_per_token(model, args.block), args.batch * args.block
    probe = dict(repeats=args.probe_repeats)
    peak32, peak16 = matmul_peak(tf.float32, **probe), matmul_peak(tf.bfloat16, **probe)
    xla32, xla16 = matmul_peak(tf.float32, jit=True, **probe), matmul_peak(tf.bfloat16, jit=True, **probe)
    names = [name for name in VARIANTS if name != RECIPE and (not args.variants or name in args.variants)]
    shape = (args.warmup, args.batch, args.block)
    recipe_worker, rounds, peaks = Worker(RECIPE, *shape), {name: [] for name in names}, {}
    for name in names:
        worker = Worker(name, *shape)
        for _ in range(args.rounds):
            seconds = {RECIPE: [], name: []}
            for step in range(args.steps):  # in turns, each first every other step
                for turn in (recipe_worker, worker)[:: 1 if step % 2 else -1]:
                    seconds[turn.name].append(turn.step())
            # A round's tokens/s is over its median step: a step the machine slowed moves it little.
            rounds[name].append({n: tokens / float(np.median(s)) for n, s in seconds.items()})
        peaks[name] = worker.close()
    peaks[RECIPE] = recipe_worker.close()
    print(
        f"device: {device_name()}, {os.cpu_count()} cores; distilgpt2 architecture ({params / 1e6:.1f}M parameters), "
        f"batch {args.batch} x {args.block}; {args.rounds} rounds of {args.steps} timed steps a variant, each in turn "
        f"with the recipe's, after {args.warmup} warm-up steps"
    )
    print(
        f"matmul peak: float32 {peak32 / 1e9:.0f} GFLOP/s, bfloat16 {peak16 / 1e9:.0f} GFLOP/s "
        f"({peak16 / peak32:.2f}x); under XLA: float32 {xla32 / 1e9:.0f}, bfloat16 {xla16 / 1e9:.0f} GFLOP/s "
        f"({xla16 / xla32:.2f}x)"
    )
    print(
        f"{'variant':<32} {'tokens/s':>9} {'spread':>7} {'vs recipe':>10} {'spread':>7} {'MFU':>5} {'peak MB':>8} "
        f"{'vs recipe':>10}"
    )
    recipe_speeds = [found[RECIPE] for name in names for found in rounds[name]]
    peak = {"fp32": max(peak32, xla32), "bf16": max(peak16, xla16)}
    row(RECIPE, recipe_speeds, [1.0], per_token / peak["fp32"], peaks[RECIPE], peaks[RECIPE]["peak_mb"])
    for name in names:
        ratios = [found[name] / found[RECIPE] for found in rounds[name]]
        speeds = [found[name] for found in rounds[name]]
        share = per_token / peak["bf16" if "bf16" in name else "fp32"]
        row(name, speeds, ratios, share, peaks[name], peaks[RECIPE]["peak_mb"])


def device_name() -> str:
    """The GPU's name, or the CPU's with the matrix units that decide bf16's speed (AMX: several times AVX-512's)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line.split(":", 1) for line in cpuinfo if ":" in line]
    except OSError:
        return "CPU"
    info = {key.strip(): value.strip() for key, value in reversed(lines)}
    units = [flag for flag in ("amx_bf16", "avx512_bf16", "avx512f") if flag in info.get("flags", "").split()]
    return f"CPU {info.get('model name', '')} ({', '.join(units) or 'no AVX-512'})"


def row(name, speeds, ratios, flop_share, peak, base_mb):
    """A variant's line: median tokens/s and its spread over the rounds (max - min over the median), the median
    of its rounds' ratios to the recipe's tokens/s in the same round and their spread, MFU, peak memory."""
    tps, ratio = float(np.median(speeds)), float(np.median(ratios))
    print(
        f"{name:<32} {tps:>9.1f} {spread(speeds):>7.1%} {ratio:>9.2f}x {spread(ratios):>7.1%} "
        f"{flop_share * tps:>5.0%} {peak['peak_mb']:>8.0f} {peak['peak_mb'] / base_mb:>9.0%}"
        + (f"  GPU peak {peak['gpu_peak_mb']:,.0f} MB" if "gpu_peak_mb" in peak else "")
    )


def spread(values) -> float:
    return (max(values) - min(values)) / float(np.median(values))


if __name__ == "__main__":
    main()
