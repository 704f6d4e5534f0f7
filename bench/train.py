"""Training speed: the recipe as written against tfclm's engine, side by side in one run.

The distilgpt2 architecture (GPT2Config(n_layer=6), random weights) at batch
16 x 128 on random token blocks. The recipe: `prepare_tf_dataset` with
`DataCollatorForLanguageModeling`, `AdamWeightDecay(2e-5, 0.01)`,
`compile()` with the model's own loss. tfclm: the fast `tf.data` pipeline and
`CausalLMTrainer` in fp32, fp32 + XLA, and bf16. Also this machine's matmul
peak in float32 and bfloat16, and model FLOPs utilisation: FLOPs per token
(6N + 12 L H Q T, `tfclm.training.flops`) x tokens/s over the float32 peak.

    .venv/bin/python bench/train.py [--steps 6] [--warmup 2]
"""

import argparse
import os
import time

import numpy as np

from tfclm.backend import keras, tf
from tfclm.training.flops import flops_per_token

from common import VOCAB, distilgpt2, id_tokenizer

BATCH, BLOCK = 16, 128


def matmul_peak(dtype, n=2048, repeats=20) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    step = tf.function(lambda x: tf.matmul(x, x))
    step(a).numpy()
    started = time.perf_counter()
    for _ in range(repeats):
        out = step(a)
    out.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - started)


class StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.times, self._t = warmup, [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)

    def tokens_per_second(self):
        measured = self.times[self.warmup :]
        return BATCH * BLOCK * len(measured) / sum(measured)


def recipe(blocks, steps, warmup):
    import datasets
    from transformers import AdamWeightDecay, DataCollatorForLanguageModeling

    model = distilgpt2()
    lm_dataset = datasets.Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": np.ones_like(blocks), "labels": blocks}
    )
    data_collator = DataCollatorForLanguageModeling(tokenizer=id_tokenizer(), mlm=False, return_tensors="tf")
    tf_train_set = model.prepare_tf_dataset(lm_dataset, shuffle=True, batch_size=BATCH, collate_fn=data_collator)
    optimizer = AdamWeightDecay(learning_rate=2e-5, weight_decay_rate=0.01)
    model.compile(optimizer=optimizer)
    timer = StepTimer(warmup)
    model.fit(x=tf_train_set, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    return timer.tokens_per_second()


def tfclm_engine(blocks, steps, warmup, precision, jit):
    from tfclm.config import TrainConfig
    from tfclm.data.packing import Blocks
    from tfclm.data.pipeline import fast_dataset
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision(precision)
    try:
        model = distilgpt2()
        trainer = CausalLMTrainer(model)
        trainer.compile(
            optimizer=make_optimizer(TrainConfig(learning_rate=2e-5, weight_decay=0.01), model, warmup + steps),
            jit_compile=jit,
        )
        timer = StepTimer(warmup)
        data = fast_dataset(Blocks(blocks, len(blocks), blocks.size, 0), BATCH, shuffle=True, seed=0)
        trainer.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
        return timer.tokens_per_second()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    blocks = (
        np.random.default_rng(0).integers(0, VOCAB - 1, (BATCH * (args.steps + args.warmup), BLOCK)).astype(np.int32)
    )
    model = distilgpt2()
    model.build_in_name_scope()
    params = sum(v.shape.num_elements() for v in model.trainable_variables)
    per_token = flops_per_token(model, BLOCK)
    peak32, peak16 = matmul_peak(tf.float32), matmul_peak(tf.bfloat16)
    rows = [("recipe as written (fp32)", recipe(blocks, args.steps, args.warmup))]
    rows.append(("tfclm fast pipeline, fp32", tfclm_engine(blocks, args.steps, args.warmup, "fp32", False)))
    rows.append(("tfclm fast pipeline, fp32 + XLA", tfclm_engine(blocks, args.steps, args.warmup, "fp32", True)))
    rows.append(("tfclm fast pipeline, bf16", tfclm_engine(blocks, args.steps, args.warmup, "bf16", False)))
    device = tf.config.list_physical_devices()[-1].device_type
    print(
        f"device: {device}, {os.cpu_count()} cores; distilgpt2 architecture ({params / 1e6:.1f}M parameters), batch "
        f"{BATCH} x {BLOCK}; "
        f"{args.steps} timed steps after {args.warmup} warm-up steps"
    )
    print(
        f"matmul peak: float32 {peak32 / 1e9:.0f} GFLOP/s, bfloat16 {peak16 / 1e9:.0f} GFLOP/s ({peak16 / peak32:.2f}x)"
    )
    base = rows[0][1]
    print(f"{'variant':<34} {'tokens/s':>9} {'vs recipe':>10} {'MFU (fp32 peak)':>16}")
    for name, tps in rows:
        print(f"{name:<34} {tps:>9.1f} {tps / base:>9.2f}x {per_token * tps / peak32:>15.0%}")


if __name__ == "__main__":
    main()
