"""Where a training step's time goes: TensorFlow's profiler over tfclm's train step, two variants side by side.

The distilgpt2 architecture at batch 16 x 128 (as `bench/train.py`), trained
by `CausalLMTrainer` for `--warmup` steps, then `--steps` steps under
`tf.profiler.experimental`. The trace's TensorFlow op events (host threads:
this is a CPU) are summed by op type, and each type's time in the two
variants (default: fp32 and bf16, each with the default head in closed form
and the fused activations and layer norms; `bf16-unfused` runs transformers'
ops; `bf16-chunked` the LM-head loss 512 tokens at a time) is printed side
by side with its share of the step, so what does not get faster shows. Op
time is summed over threads, so it can exceed wall time on several cores;
the shares are of the summed time. The XLA-compiled fused functions are one
row, `XLA (fused ops)`: the time of their executions.

    .venv/bin/python bench/profile_step.py [--steps 3] [--warmup 2] [--top 25] [--compare fp32 bf16]
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

from tfclm.backend import keras, tf

from common import VOCAB, distilgpt2

BATCH, BLOCK = 16, 128
OP_EVENT = re.compile(r"[\w./-]+:([_A-Za-z]\w*)")  # not the executor's own `ExecutorState::Process`
XLA_EVENT = "CpuExecutable::ExecuteAsyncOnStream"  # one run of an XLA-compiled function on the CPU
# name: (precision, fused ops, LM-head loss chunk in tokens: 0 is the whole batch at once)
VARIANTS = {
    "fp32": ("fp32", True, 0),
    "bf16": ("bf16", True, 0),
    "bf16-unfused": ("bf16", False, 0),
    "bf16-chunked": ("bf16", True, 512),
}


def op_times(logdir: str) -> Counter:
    """Seconds per TensorFlow op type, summed over the trace's host events (named `name:Type`)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:"):
                continue
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    op = OP_EVENT.fullmatch(name)  # an op of the graph, `scope/name:Type`, scoped or not
                    if op:
                        totals[op.group(1)] += event.duration_ps / 1e12
                    elif name == XLA_EVENT:
                        totals["XLA (fused ops)"] += event.duration_ps / 1e12
    return totals


def profile(precision: str, fused_ops: bool, chunk: int, steps: int, warmup: int) -> dict:
    from tfclm.config import TrainConfig
    from tfclm.data.packing import Blocks
    from tfclm.data.pipeline import fast_dataset
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision(precision)
    model = distilgpt2()
    trainer = CausalLMTrainer(model, fused_ops=fused_ops, loss_chunk_tokens=chunk)
    trainer.compile(optimizer=make_optimizer(TrainConfig(learning_rate=2e-5, weight_decay=0.01), model, 100))
    blocks = np.random.default_rng(0).integers(0, VOCAB - 1, (BATCH * (steps + warmup), BLOCK)).astype(np.int32)
    data = fast_dataset(Blocks(blocks, len(blocks), blocks.size, 0), BATCH, shuffle=False)
    iterator = iter(data)
    step = trainer.make_train_function()
    for _ in range(warmup):
        step(iterator)
    logdir = tempfile.mkdtemp(prefix="tfclm-profile-")
    tf.profiler.experimental.start(logdir)
    started = time.perf_counter()
    for _ in range(steps):
        step(iterator)["loss"].numpy()
    seconds = time.perf_counter() - started
    tf.profiler.experimental.stop()
    keras.mixed_precision.set_global_policy("float32")
    return {"seconds_per_step": seconds / steps, "ops": {k: v / steps for k, v in op_times(logdir).items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--compare", nargs=2, default=["fp32", "bf16"], choices=list(VARIANTS), help="two variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        import json

        print(json.dumps(profile(*VARIANTS[args.variant], args.steps, args.warmup)))
        return
    import json

    found = {}
    for name in args.compare:  # each in a process of its own: one precision policy, one profiler session
        command = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps)]
        done = subprocess.run(command + ["--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
        found[name] = json.loads(done.stdout.strip().splitlines()[-1])
    (a, fa), (b, fb) = found.items()
    print(f"seconds a step (wall, profiled): {a} {fa['seconds_per_step']:.2f}, {b} {fb['seconds_per_step']:.2f} "
          f"({fa['seconds_per_step'] / fb['seconds_per_step']:.2f}x)")  # fmt: skip
    total_a, total_b = sum(fa["ops"].values()), sum(fb["ops"].values())
    print(f"op time a step, summed over threads: {a} {total_a:.2f} s, {b} {total_b:.2f} s")
    print(f"{'op type':<34} {a + ' s':>10} {'share':>6} {b + ' s':>28} {'share':>6} {'speed-up':>8}")
    types = sorted(set(fa["ops"]) | set(fb["ops"]), key=lambda t: -(fa["ops"].get(t, 0) + fb["ops"].get(t, 0)))
    for op in types[: args.top]:
        x, y = fa["ops"].get(op, 0.0), fb["ops"].get(op, 0.0)
        ratio = f"{x / y:.2f}x" if x and y else "-"
        print(f"{op:<34} {x:>10.3f} {x / total_a:>6.1%} {y:>28.3f} {y / total_b:>6.1%} {ratio:>8}")


if __name__ == "__main__":
    main()
