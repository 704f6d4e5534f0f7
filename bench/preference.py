"""Preference tuning (DPO) against supervised fine-tuning, side by side in one run; and whether DPO teaches a
preference that holds on pairs it never saw.

`--only cost`: the distilgpt2 architecture (random weights) on random token rows of `--block` tokens, the
second half of each an answer: SFT on 2 x `--pairs` rows (the loss on the answers) against DPO on `--pairs`
pairs (the same rows, chosen and rejected), through tfclm's trainers and optimizer, in `--precision`: DPO with
its reference scored beforehand (the batches carry its scores: one model in memory), DPO with a live frozen
reference (two models), and LoRA rank 8 (SFT, and DPO with the adapters-off base as reference). Each variant in
a process of its own, a DPO variant taking turns with its SFT step by step (bench/train.py's workers); a row
prints tokens/s (the median of its rounds, with their spread), its ratio to its SFT in the same rounds, and the
process's peak resident memory against its SFT's. Goal: precomputed-reference DPO at most 1.2x SFT's peak.

`--only quality`: `tfclm fit` (the command's own path) on a synthetic task: a question about one of 12 words,
the chosen answer a sentence naming another word, the rejected one the same words in reverse order; training
asks in four phrasings about two other words each, validation in two other phrasings about a third word, so its
pairs are unseen. A tiny GPT-2 (2 x 64, random weights) is
the starting model and the reference. Prints the validation pairs' reward accuracy before and after (goal: at
least 90% after).

    .venv/bin/python bench/preference.py [--only cost|quality] [--pairs 8] [--block 128] [--steps 5] [--rounds 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from train import Worker, device_name, one_step, serve, spread

from common import distilgpt2

SFT, SFT_LORA = "SFT", "SFT, LoRA r8"
VARIANTS = {  # name: (its SFT, preference, reference, LoRA rank)
    SFT: (None, False, None, 0),
    "DPO, reference precomputed": (SFT, True, "precomputed", 0),
    "DPO, reference live (frozen copy)": (SFT, True, "copy", 0),
    SFT_LORA: (None, False, None, 8),
    "DPO, LoRA r8, reference adapters off": (SFT_LORA, True, "adapters off", 8),
}
PRECISION = os.environ.get("TFCLM_BENCH_PRECISION", "bf16")


def build(name, rows, pairs):
    """A variant's step, as `fit` runs it: (tfclm's trainer, its optimizer) on one repeated batch."""
    from tfclm.backend import tf
    from tfclm.config import LoraConfig, PreferenceConfig, TrainConfig
    from tfclm.model import lora
    from tfclm.model.preference_loss import Scorer, reference_scorer
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.preference import PreferenceTrainer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    _, preference, reference, rank = VARIANTS[name]
    set_precision(PRECISION)
    model = distilgpt2(dropout=0.0)
    if rank:
        lora.add_adapters(model, LoraConfig(rank=rank, alpha=2 * rank))
    block = rows.shape[1]
    labels = np.where(np.arange(block) >= block // 2, rows, -100).astype(np.int32)
    batch = {"input_ids": rows, "attention_mask": np.ones_like(rows), "labels": labels}
    if not preference:
        trainer = CausalLMTrainer(model)
    else:
        batch = {**{k: v[:pairs] for k, v in batch.items()}, **{"rejected_" + k: v[pairs:] for k, v in batch.items()}}
        scorer = None
        if reference == "precomputed":
            batch["ref_chosen_logps"] = np.full(pairs, -400.0, np.float32)
            batch["ref_rejected_logps"] = np.full(pairs, -410.0, np.float32)
        elif reference == "copy":
            scorer = Scorer(distilgpt2(seed=1, dropout=0.0))
        else:
            scorer = reference_scorer(model, None)
        trainer = PreferenceTrainer(model, PreferenceConfig(), scorer)
    trainer.compile(optimizer=make_optimizer(TrainConfig(learning_rate=1e-5), model, 10**6))
    return one_step(trainer, tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in batch.items()}))


def cost(args):
    tokens = 2 * args.pairs * args.block
    shape = (args.warmup, args.pairs, args.block)
    results, peaks = {}, {}
    for base in (SFT, SFT_LORA):
        base_worker = Worker(base, *shape, script=__file__)
        for name, (own, *_) in VARIANTS.items():
            if own != base:
                continue
            worker, rounds = Worker(name, *shape, script=__file__), []
            for _ in range(args.rounds):
                seconds = {base: [], name: []}
                for step in range(args.steps):
                    for turn in (base_worker, worker)[:: 1 if step % 2 else -1]:
                        seconds[turn.name].append(turn.step())
                rounds.append({n: tokens / float(np.median(s)) for n, s in seconds.items()})
            results[name] = rounds
            peaks[name] = worker.close()["peak_mb"]
        peaks[base] = base_worker.close()["peak_mb"]
        results[base] = [r for name, rs in results.items() if VARIANTS[name][0] == base for r in rs]
    print(
        f"device: {device_name()}, {os.cpu_count()} cores; distilgpt2 architecture, {PRECISION}; {args.pairs} pairs "
        f"(DPO) or {2 * args.pairs} rows (SFT) of {args.block} tokens a step; {args.rounds} rounds of {args.steps} "
        f"timed steps, each DPO variant in turn with its SFT"
    )
    print(f"{'variant':<40} {'tokens/s':>9} {'spread':>7} {'vs SFT':>7} {'spread':>7} {'peak MB':>8} {'vs SFT':>7}")
    for name, (own, *_) in VARIANTS.items():
        base = own or name
        speeds = [r[name] for r in results[name]]
        ratios = [r[name] / r[base] for r in results[name]]
        print(
            f"{name:<40} {np.median(speeds):>9.1f} {spread(speeds):>7.1%} {np.median(ratios):>6.2f}x "
            f"{spread(ratios):>7.1%} {peaks[name]:>8.0f} {peaks[name] / peaks[base]:>6.2f}x"
        )
    goal = peaks["DPO, reference precomputed"] / peaks[SFT]
    verdict = "met" if goal <= 1.2 else "not met"
    print(f"goal: precomputed-reference DPO at most 1.2x SFT's peak memory: {goal:.2f}x, {verdict}")


WORDS = "list tuple dict set string number file loop class module function value".split()
TRAIN_ASKS = ("What is a {w}?", "Tell me about a {w}.", "Define {w}.", "A {w} is what?")
HELD_OUT_ASKS = ("Explain a {w}.", "What does {w} mean?")


def pairs_file(path, asks, offsets):
    """Pairs whose chosen answer is a sentence and whose rejected one is its words in reverse order."""
    with open(path, "w") as f:
        for i, w in enumerate(WORDS):
            for ask in asks:
                for k in offsets:
                    words = ["It", "goes", "with", "a", WORDS[(i + k) % len(WORDS)]]
                    record = {"prompt": ask.format(w=w), "chosen": " " + " ".join(words) + ".",
                              "rejected": " " + " ".join(reversed(words)) + "."}  # fmt: skip
                    f.write(json.dumps(record) + "\n")


def quality(args):
    folder = tempfile.mkdtemp(prefix="tfclm-bench-dpo-")
    pairs_file(os.path.join(folder, "train.jsonl"), TRAIN_ASKS, (1, 2))
    pairs_file(os.path.join(folder, "unseen.jsonl"), HELD_OUT_ASKS, (5,))
    start = os.path.join(folder, "start")
    made = subprocess.run([sys.executable, __file__, "--start-model", start], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    config = {
        "output_dir": os.path.join(folder, "run"),
        "data": {"dataset": os.path.join(folder, "train.jsonl"), "format": "preference", "block_size": 32,
                 "validation_split": os.path.join(folder, "unseen.jsonl")},
        "model": {"name_or_path": start},
        "train": {"batch_size": 8, "epochs": args.epochs, "learning_rate": 1e-3, "seed": 0},
        "preference": {"beta": 0.1, "precompute_reference": True},
        "generate": {"prompts": ["What is a list?"], "max_new_tokens": 6},
        "logging": {"report_to": ["none"], "curves": False, "sample_every_n_epochs": None},
    }  # fmt: skip
    import yaml

    path = os.path.join(folder, "dpo.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    done = subprocess.run([sys.executable, "-m", "tfclm", "-q", "fit", "--config", path], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(os.path.join(folder, "run", "results.json")))
    before, after = results["preference_before"], results["preference"]
    print(
        f"synthetic preference task (a sentence over its words reversed): {len(WORDS) * len(TRAIN_ASKS) * 2} training "
        f"pairs, {after['pairs']} unseen "
        f"(other phrasings); tiny GPT-2 from random weights, {results['train_steps']} optimizer steps, beta 0.1"
    )
    print(
        f"unseen pairs: reward accuracy {before['reward_accuracy']:.1%} -> {after['reward_accuracy']:.1%}, margin "
        f"{before['reward_margin']:.3f} -> {after['reward_margin']:.3f}, dpo loss {before['dpo_loss']:.4f} -> "
        f"{after['dpo_loss']:.4f}; goal at least 90%: {'met' if after['reward_accuracy'] >= 0.9 else 'not met'}"
    )


def start_model(path):
    """A tiny GPT-2 with random weights and a tokenizer trained on the task's words, saved as a Hub repo is."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.backend import keras
    from tfclm.data.tokenizer import train_bpe

    texts = [
        ask.format(w=w) + f" It goes with {v}." for ask in TRAIN_ASKS + HELD_OUT_ASKS for w in WORDS for v in WORDS
    ]
    tokenizer = train_bpe(texts, 300)
    keras.utils.set_random_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=64, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = TFGPT2LMHeadModel(config)
    model.build_in_name_scope()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["cost", "quality"])
    parser.add_argument("--pairs", type=int, default=8, help="pairs a step (SFT: twice as many rows)")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps a variant a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="quality: passes over the training pairs")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.start_model:
        return start_model(args.start_model)
    if args.serve:
        rows_of = {name: (lambda rows, pairs, name=name: build(name, rows, pairs)) for name in VARIANTS}
        # serve() draws (batch x 16) random rows; a step takes the first 2 x pairs
        variants = {n: (lambda blocks, pairs, f=f: f(blocks[: 2 * pairs], pairs)) for n, f in rows_of.items()}
        return serve(args.serve, args.warmup, args.batch, args.block, variants=variants)
    if args.only != "quality":
        cost(args)
    if args.only != "cost":
        quality(args)


if __name__ == "__main__":
    main()
