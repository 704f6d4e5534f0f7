"""Generation speed: eager `generate` against tfclm's XLA path, side by side in one run.

The distilgpt2 architecture (GPT2Config(n_layer=6), 50,257 tokens) with
random weights (no download), 100 new tokens, top-k 50 + top-p 0.95, at batch
1 and 8; then a second prompt length inside the same bucket, which must not
compile again. Also a plain `tf.function(generate, jit_compile=True)` with
transformers' own warpers, to show what the fused top-k/top-p step buys.

Each batch's row also prints the memory bound: a decoding step reads every
weight once and the KV cache up to its position, so this machine's read
bandwidth (the best of float32 matrix-vector products over 256 MB) over
those bytes caps the steps a second; new tokens/s is at most batch x that.

    .venv/bin/python bench/generate.py [--new-tokens 100] [--repeats 2]
"""

import argparse
import os
import time

from tfclm.backend import tf

from common import distilgpt2, id_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from tfclm.generation.generator import Generator

    model = distilgpt2()
    tokenizer = id_tokenizer()
    prompt = " ".join(f"w{i}" for i in range(100, 112))  # 12 tokens
    second = " ".join(f"w{i}" for i in range(200, 209))  # 9 tokens: the same 16-token bucket
    options = dict(
        do_sample=True, top_k=50, top_p=0.95, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, seed=1
    )

    def timed(run, prompts):
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            run(prompts)
            best = min(best, time.perf_counter() - started)
        return len(prompts) * args.new_tokens / best

    rows = []
    eager = Generator(model, tokenizer, xla=False, log=lambda line: None)
    xla = Generator(model, tokenizer, xla=True, log=lambda line: None)
    for batch in (1, 8):
        prompts = [prompt] * batch
        eager_tps = timed(lambda p: eager(p, **options), prompts)
        started = time.perf_counter()
        xla(prompts, **options)
        compile_s = time.perf_counter() - started
        xla_tps = timed(lambda p: xla(p, **options), prompts)
        rows.append((batch, eager_tps, xla_tps, compile_s))

    # transformers' own warpers under one plain tf.function (sorts the whole vocabulary for top-p).
    plain = tf.function(model.generate, jit_compile=True)
    encoded = tokenizer([prompt], return_tensors="tf")
    hf = dict(
        do_sample=True,
        top_k=50,
        top_p=0.95,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=50256,
        seed=[1, 0],
    )
    plain(**encoded, **hf)
    plain_tps = timed(lambda p: plain(**encoded, **hf), [prompt])

    traces = xla.traces
    started = time.perf_counter()
    xla([second], **options)
    second_s = time.perf_counter() - started
    started = time.perf_counter()
    xla([prompt], **options)
    first_again_s = time.perf_counter() - started

    print(
        f"device: {tf.config.list_physical_devices()[-1].device_type}, {os.cpu_count()} cores; distilgpt2 "
        f"architecture, random weights; "
        f"{args.new_tokens} new tokens, top-k 50 + top-p 0.95; best of {args.repeats}"
    )
    bandwidth = read_bandwidth()
    per_step = step_bytes(model, prompt_tokens=12, new_tokens=args.new_tokens)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s (float32 matvec); a batch-1 step reads {per_step / 1e6:.0f} MB")
    header = f"{'batch':>5} {'eager tok/s':>12} {'tfclm XLA tok/s':>16} {'ratio':>7} {'first call (compile) s':>23}"
    print(header + f" {'memory bound tok/s':>19} {'XLA of bound':>13}")
    for batch, e, x, c in rows:
        # The weights are read once a step for the whole batch; each row reads its own cache.
        bound = batch * bandwidth / (per_step + (batch - 1) * cache_bytes(model, 12, args.new_tokens))
        print(f"{batch:>5} {e:>12.1f} {x:>16.1f} {x / e:>6.2f}x {c:>23.1f} {bound:>19.1f} {x / bound:>12.0%}")
    print(
        f"plain tf.function(generate, jit_compile=True), transformers' warpers, batch 1: {plain_tps:.1f} tok/s "
        f"(tfclm XLA is {rows[0][2] / plain_tps:.2f}x that)"
    )
    print(
        f"second prompt length in the same bucket: {second_s:.2f} s (the first length again: {first_again_s:.2f} s); "
        f"new traces: {xla.traces - traces}"
    )


def read_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes read a second by the best of `repeats` float32 matrix-vector products over `megabytes` (what a
    decoding step does with each weight matrix), on every core."""
    side = int((megabytes * 2**20 / 4) ** 0.5)
    matrix, vector = tf.random.normal([side, side]), tf.random.normal([side])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.linalg.matvec(matrix, vector).numpy()
        best = min(best, time.perf_counter() - started)
    return side * side * 4 / best


def cache_bytes(model, prompt_tokens: int, new_tokens: int) -> float:
    """The keys and values one row's step reads, at the middle of its answer (float32)."""
    config = model.config
    positions = prompt_tokens + new_tokens / 2
    return 2 * config.n_layer * config.n_embd * positions * 4


def step_bytes(model, prompt_tokens: int, new_tokens: int) -> float:
    """What a batch-1 decoding step reads: every weight once (float32) and the cache."""
    weights = sum(v.shape.num_elements() for v in model.weights) * 4
    return weights + cache_bytes(model, prompt_tokens, new_tokens)


if __name__ == "__main__":
    main()
