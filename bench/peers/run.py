"""tfclm against what a user would pick instead on this machine, side by side: PyTorch transformers and KerasHub.

The distilgpt2 architecture (6 layers x 768, random weights) in every row. Training, batch 16 x 128: the recipe
as written (bench/train.py's), tfclm bf16 (its defaults), and each peer: PyTorch transformers' GPT-2 in a plain
loop with AdamW (fp32, bf16 autocast, bf16 autocast + `torch.compile`) and KerasHub's GPT-2 on Keras 3's JAX
backend (`train_on_batch`, AdamW). Generation, batch 1, greedy, a 16-token prompt and 32 new tokens: the
recipe's `model.generate` (transformers' TF, eager), tfclm's XLA generator, PyTorch's `generate` and KerasHub's
`generate` (JAX, compiled), all in float32.

Each peer runs in a process of its own under its own virtual environment (`make bench-peers` builds
`.venv/peers/pytorch` and `.venv/peers/kerashub`), at 1 and at 2 threads (the process pinned to that many cores,
PyTorch's pools set to match); tfclm and the recipe run in this one's venv at the machine's default. The peer
and the two bases stay alive together and take turns step by step (bench/train.py's workers), `--steps` steps
each a round, `--rounds` rounds, so a slow minute of this shared machine falls on all three; each row prints its
median tokens/s over its rounds with their spread, and its rounds' median ratio to the recipe and to tfclm with
their spreads.

    make bench-peers                    # builds the peers' venvs, then runs this (about 30 minutes)
    .venv/bin/python bench/peers/run.py [--steps 5] [--rounds 3] [--warmup 2] [--threads 1 2] [--limit 120]
        [--only train|generate]
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from train import RECIPE, VARIANTS, Worker, device_name, serve, spread  # noqa: E402  - tfclm first, through train

ROOT = os.path.dirname(os.path.dirname(HERE))
PEER_WORKER = os.path.join(HERE, "worker.py")
VENVS = {"PyTorch": ".venv/peers/pytorch", "KerasHub": ".venv/peers/kerashub"}
TRAIN_BASES = (RECIPE, "tfclm bf16")
TRAIN_PEERS = ("PyTorch fp32", "PyTorch bf16 autocast", "PyTorch bf16 autocast + torch.compile", "KerasHub fp32 (JAX)")
GENERATE_BASES = ("recipe generate, fp32", "tfclm XLA generator, fp32")
GENERATE_PEERS = ("PyTorch generate, fp32", "KerasHub generate, fp32 (JAX)")
NEW_TOKENS, PROMPT = 32, 16


def recipe_generate(blocks, batch):
    from common import distilgpt2

    model, ids = distilgpt2(dropout=0.0), blocks[:1, :PROMPT]
    return lambda: model.generate(input_ids=ids, attention_mask=np.ones_like(ids), do_sample=False,
                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)  # fmt: skip


def tfclm_generate(blocks, batch):
    from tfclm.generation.generator import Generator

    from common import distilgpt2, id_tokenizer

    generator = Generator(distilgpt2(dropout=0.0), id_tokenizer(), xla=True, log=lambda line: None)
    prompt = " ".join(f"w{i}" for i in blocks[0, :PROMPT])
    return lambda: generator([prompt], do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)


BASES = {**{name: VARIANTS[name] for name in TRAIN_BASES}, GENERATE_BASES[0]: recipe_generate,
         GENERATE_BASES[1]: tfclm_generate}  # fmt: skip


def peer_worker(name, threads, shape, limit):
    python = os.path.join(ROOT, VENVS[name.split()[0]], "bin", "python")
    if not os.path.exists(python):
        sys.exit(f"{python} is missing: `make bench-peers` builds the peers' virtual environments")
    label = f"{name}, {threads} thread{'s' if threads > 1 else ''}"
    options = ["--threads", str(threads), "--limit", str(limit)]
    return Worker(name, *shape, script=PEER_WORKER, python=python, options=options, label=label)


def compare(bases, peers, args, tokens):
    """Every peer at every thread count in turns with the two bases; each row's tokens/s and ratios."""
    shape = (args.warmup, args.batch, args.block)
    workers = [Worker(name, *shape, script=__file__) for name in bases]
    rows = {name: {"speeds": [], "ratios": ([], [])} for name in bases}
    for name in peers:
        for threads in args.threads:
            peer = peer_worker(name, threads, shape, args.limit)
            if "over_limit_s" in peer.ready:
                rows[peer.name] = {"over_limit_s": args.limit}
                continue
            rows[peer.name] = {"speeds": [], "ratios": ([], [])}
            for _ in range(args.rounds):
                seconds = {w.name: [] for w in (*workers, peer)}
                for step in range(args.steps):  # in turns, the order turned every step
                    turns = (*workers, peer)
                    for worker in turns[step % 3 :] + turns[: step % 3]:
                        seconds[worker.name].append(worker.step())
                speed = {n: tokens / float(np.median(s)) for n, s in seconds.items()}
                for n in speed:
                    rows[n]["speeds"].append(speed[n])
                    for ratios, base in zip(rows[n]["ratios"], bases):
                        ratios.append(speed[n] / speed[base])
            rows[peer.name]["peak_mb"] = peer.close()["peak_mb"]
    for worker in workers:
        rows[worker.name]["peak_mb"] = worker.close()["peak_mb"]
    return rows


def table(title, rows, bases):
    print(f"\n{title}")
    print(f"| variant | tokens/s | spread | vs {bases[0]} | spread | vs {bases[1]} | spread | peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, found in rows.items():
        if "over_limit_s" in found:
            print(f"| {name} | over {found['over_limit_s']} s a step: not timed | | | | | | |")
            continue
        speeds, (first, second) = found["speeds"], found["ratios"]
        cells = [f"{np.median(speeds):,.1f}", f"{spread(speeds):.0%}"]
        cells += [f"{np.median(first):.2f}x", f"{spread(first):.0%}", f"{np.median(second):.2f}x"]
        cells += [f"{spread(second):.0%}", f"{found['peak_mb']:,.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps a variant a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a peer at a thread count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, in each process")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="the peers' thread counts")
    parser.add_argument("--limit", type=int, default=120, help="seconds a peer's warm-up step may take")
    parser.add_argument("--only", choices=["train", "generate"])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.warmup, args.batch, args.block, variants=BASES)
    print(f"device: {device_name()}, {os.cpu_count()} cores; distilgpt2 architecture, random weights; {args.rounds} "
          f"rounds of {args.steps} timed steps a peer and thread count, in turns with the bases")  # fmt: skip
    if args.only != "generate":
        rows = compare(TRAIN_BASES, TRAIN_PEERS, args, args.batch * args.block)
        table(f"Training, batch {args.batch} x {args.block}: tokens/s", rows, TRAIN_BASES)
    if args.only != "train":
        rows = compare(GENERATE_BASES, GENERATE_PEERS, args, NEW_TOKENS)
        table(f"Greedy generation, batch 1, {PROMPT}-token prompt, {NEW_TOKENS} new tokens: new tokens/s", rows,
              GENERATE_BASES)  # fmt: skip


if __name__ == "__main__":
    main()
