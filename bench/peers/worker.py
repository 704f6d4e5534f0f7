"""A peer's side of bench/peers/run.py: one variant of what a user would pick instead of tfclm, served step by step.

Run by run.py with a peer's own interpreter (`.venv/peers/pytorch` or `.venv/peers/kerashub`, which
`make bench-peers` builds), so it imports neither tfclm nor TensorFlow: PyTorch transformers' GPT-2, or
KerasHub's GPT-2 on Keras 3's JAX backend, of distilgpt2's shape (6 layers x 768, 12 heads, 50,257-token
vocabulary, random weights). It speaks bench/train.py's workers' protocol: after `--warmup` untimed steps a
"ready" line, then one timed step for each "step" line on stdin, each reply a JSON line after "@@ ", and at the
end of stdin the steps it timed and its peak resident memory.

    python bench/peers/worker.py --serve NAME --warmup 2 --batch 16 --block 128 --threads 1
"""

import argparse
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from steps import peak_mb, reply, timed_steps  # noqa: E402

VOCAB, PROMPT = 50257, 16
SHAPE = dict(layers=6, width=768, heads=12, positions=1024)


def torch_gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=SHAPE["layers"], n_embd=SHAPE["width"], n_head=SHAPE["heads"], vocab_size=VOCAB)
    return GPT2LMHeadModel(config)


def torch_train(model, blocks, batch, autocast=False, compiled=False):
    """A plain PyTorch loop: the model's own loss, AdamW(2e-5, weight decay 0.01) as the recipe's optimizer."""
    import contextlib

    import torch

    model = model.train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    batches = iter(torch.tensor(blocks, dtype=torch.long).split(batch) * 10**6)

    def step():
        ids = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def torch_generate(model, prompt, new_tokens):
    """Greedy `generate` of `new_tokens` tokens after `prompt` (token ids, [1, length]), in float32."""
    import torch

    model, ids = model.eval(), torch.tensor(prompt, dtype=torch.long)

    def step():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)  # fmt: skip

    return step


def kerashub_gpt2():
    # Keras 3's JAX backend (Keras 3 defaults to TensorFlow's), and Keras 3 even when started from tfclm's
    # process, whose TF_USE_LEGACY_KERAS would hand Keras' name to Keras 2.
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=SHAPE["layers"], num_heads=SHAPE["heads"], hidden_dim=SHAPE["width"],
        intermediate_dim=4 * SHAPE["width"], max_sequence_length=SHAPE["positions"],
    )  # fmt: skip
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def kerashub_train(blocks, batch):
    """Keras 3's own fit step (`train_on_batch`, jit-compiled by JAX): next-token loss, AdamW(2e-5, 0.01)."""
    import keras

    model = kerashub_gpt2()
    model.compile(optimizer=keras.optimizers.AdamW(2e-5, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    batches = iter(np.split(blocks, len(blocks) // batch) * 10**6)

    def step():
        # All the block's tokens in, each predicting the next: the last has none, so it weighs nothing.
        ids = next(batches)
        labels = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
        weights = np.ones(ids.shape, np.float32)
        weights[:, -1] = 0
        inputs = {"token_ids": ids, "padding_mask": np.ones(ids.shape, dtype=bool)}
        return model.train_on_batch(inputs, labels, sample_weight=weights)

    return step


def kerashub_generate(blocks, new_tokens):
    """KerasHub's `generate` on token ids: it fills the places past the prompt that the padding mask leaves."""
    model = kerashub_gpt2()
    ids = np.zeros((1, PROMPT + new_tokens), np.int32)
    ids[0, :PROMPT] = blocks[0, :PROMPT]
    inputs = {"token_ids": ids, "padding_mask": np.arange(PROMPT + new_tokens)[None] < PROMPT}
    return lambda: model.generate(inputs, stop_token_ids=None)


NEW_TOKENS = int(os.environ.get("TFCLM_BENCH_NEW_TOKENS", "32"))
VARIANTS = {
    "PyTorch fp32": lambda blocks, batch: torch_train(torch_gpt2(), blocks, batch),
    "PyTorch bf16 autocast": lambda blocks, batch: torch_train(torch_gpt2(), blocks, batch, autocast=True),
    "PyTorch bf16 autocast + torch.compile": lambda blocks, batch: torch_train(
        torch_gpt2(), blocks, batch, autocast=True, compiled=True
    ),
    "KerasHub fp32 (JAX)": kerashub_train,
    "PyTorch generate, fp32": lambda blocks, batch: torch_generate(torch_gpt2(), blocks[:1, :PROMPT], NEW_TOKENS),
    "KerasHub generate, fp32 (JAX)": lambda blocks, batch: kerashub_generate(blocks, NEW_TOKENS),
}


def set_threads(threads: int) -> None:
    """The process on `threads` cores, and each framework's own pool to match where it has a knob."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def serve(name, warmup, batch, block, threads, limit):
    set_threads(threads)
    blocks = np.random.default_rng(0).integers(0, VOCAB - 1, (batch * 16, block)).astype(np.int32)
    step = VARIANTS[name](blocks, batch)
    # A warm-up step past `limit` seconds ends the worker: PyTorch's bf16 autocast on a CPU without bf16 units
    # took over 10 minutes a step on one thread.
    signal.signal(signal.SIGALRM, lambda *_: (reply({"over_limit_s": limit}), os._exit(0)))
    for _ in range(warmup):
        signal.alarm(limit)
        step()
    signal.alarm(0)
    reply({"ready": name})
    reply({"steps": timed_steps(step), "peak_mb": peak_mb()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", required=True, choices=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=120, help="seconds a warm-up step may take")
    args = parser.parse_args()
    serve(args.serve, args.warmup, args.batch, args.block, args.threads, args.limit)
