"""LiteRT exports against tfclm's XLA generator at batch 1, side by side in one run: speed, size, perplexity.

The model of a tfclm run (default `runs/default`, what `make train` writes; or `--distilgpt2`, that shape with
random weights) is exported to LiteRT as float32
and as int8 (dynamic range) into a temporary folder. Each round then decodes one greedy answer of
`--new-tokens` tokens to a `--prompt-tokens` prompt (held-out text) with each of the three, in turn: the XLA
generator (compiled beforehand), and the two .tflite files through tfclm's LiteRT runner. Time to first token
is the prefill and the first token's choice; decoding speed is over the tokens after it (for XLA, from the
difference of a 1-token and an N-token answer). Each row prints the median over the rounds, and the median of
the rounds' ratios to XLA with their spread (max - min over the median). Then the files' sizes and the
perplexity of each on the run's validation split.

    .venv/bin/python bench/litert.py [--model runs/default | --distilgpt2] [--rounds 5] [--new-tokens 64]
        [--threads 2]
"""

import argparse
import os
import resource
import tempfile
import time

import numpy as np

import common  # puts the checkout first and sets TF_USE_LEGACY_KERAS


def xla_timings(generator, prompt: str, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, new tokens/s after it) of the XLA generator, greedy: from a 2-token and an
    N-token answer (XLA takes no 1-token one), the first token being the 2-token answer less one step."""
    seconds = {}
    for n in (2, new_tokens):
        started = time.perf_counter()
        generator([prompt], do_sample=False, max_new_tokens=n, min_new_tokens=n)
        seconds[n] = time.perf_counter() - started
    step = (seconds[new_tokens] - seconds[2]) / (new_tokens - 2)
    return seconds[2] - step, 1 / step


def litert_timings(runner, ids: list[int], new_tokens: int) -> tuple[float, float]:
    started = time.perf_counter()
    logits, cache = runner.run(list(ids), 0, runner.empty_cache())
    token = int(np.argmax(logits[-1]))
    first = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(new_tokens - 1):
        logits, cache = runner.run([token], len(ids) + step, cache)
        token = int(np.argmax(logits[-1]))
    return first, (new_tokens - 1) / (time.perf_counter() - started)


def spread(values) -> float:
    return (max(values) - min(values)) / float(np.median(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/default")
    parser.add_argument("--distilgpt2", action="store_true", help="distilgpt2's shape with random weights instead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT's interpreter threads")
    args = parser.parse_args()

    from tfclm.generation.export import to_litert
    from tfclm.generation.generator import Generator
    from tfclm.generation.litert_runner import LiteRTGenerator, held_out_blocks
    from tfclm.model.loading import load_trained

    folder = tempfile.mkdtemp(prefix="tfclm-bench-litert-")
    if args.distilgpt2:  # random weights, no held-out text: speed and size only
        args.model = os.path.join(folder, "distilgpt2")
        common.distilgpt2(dropout=0.0).save_pretrained(args.model)
        common.id_tokenizer().save_pretrained(args.model)
    model, tokenizer = load_trained(args.model)
    length = args.prompt_tokens + args.new_tokens
    held_out = held_out_blocks(args.model, tokenizer, None, args.prompt_tokens + 1)
    if held_out is None:
        prompt = " ".join(f"w{i}" for i in range(100, 100 + args.prompt_tokens))
    else:  # a held-out stretch, past the end-of-text token that opens it
        prompt = tokenizer.decode(held_out[0][1:])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # what the generator will see
    files, reports, runners = {}, {}, {}
    for quantize in ("none", "int8"):
        out = os.path.join(folder, quantize)
        started = time.perf_counter()
        reports[quantize] = to_litert(
            args.model, out, max_length=length, prefill_lengths=(args.prompt_tokens,), quantize=quantize
        )
        reports[quantize]["convert_s"] = time.perf_counter() - started
        files[quantize] = os.path.join(out, "model.tflite")
        runners[quantize] = LiteRTGenerator(files[quantize], tokenizer, num_threads=args.threads)
    converted_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    xla = Generator(model, tokenizer, xla=True, log=lambda line: None)
    xla_timings(xla, prompt, args.new_tokens)  # compiles both lengths

    rows = {name: {"first": [], "tps": [], "ratio": []} for name in ("xla", "none", "int8")}
    for _ in range(args.rounds):
        first, tps = xla_timings(xla, prompt, args.new_tokens)
        rows["xla"]["first"].append(first)
        rows["xla"]["tps"].append(tps)
        rows["xla"]["ratio"].append(1.0)
        for quantize in ("none", "int8"):
            first, speed = litert_timings(runners[quantize], prompt_ids, args.new_tokens)
            rows[quantize]["first"].append(first)
            rows[quantize]["tps"].append(speed)
            rows[quantize]["ratio"].append(speed / tps)

    names = {"xla": "tfclm XLA generator (TF)", "none": "LiteRT float32", "int8": "LiteRT int8 (dynamic range)"}
    print(
        f"batch 1, {len(prompt_ids)}-token prompt, {args.new_tokens} new tokens, greedy; {args.rounds} rounds; "
        f"LiteRT on {args.threads} threads"
    )
    print(f"{'':<30} {'first token ms':>14} {'new tokens/s':>12} {'spread':>7} {'vs XLA':>7} {'spread':>7}")
    for name, row in rows.items():
        print(
            f"{names[name]:<30} {1000 * np.median(row['first']):>14.1f} {np.median(row['tps']):>12.1f} "
            f"{spread(row['tps']):>7.1%} {np.median(row['ratio']):>6.2f}x {spread(row['ratio']):>7.1%}"
        )
    print(f"\n{'file':<30} {'MB':>8} {'of float':>9} {'convert s':>10} {'perplexity':>11} {'TF model':>9}")
    for quantize, report in reports.items():
        print(
            f"{names[quantize]:<30} {report['bytes'] / 1e6:>8.2f} {report['bytes'] / reports['none']['bytes']:>9.1%} "
            f"{report['convert_s']:>10.1f} {report.get('perplexity', float('nan')):>11.3f} "
            f"{report.get('tf_perplexity', float('nan')):>9.3f}"
        )
    print(f"peak resident memory after loading and both conversions: {converted_peak:,.0f} MB")


if __name__ == "__main__":
    main()
