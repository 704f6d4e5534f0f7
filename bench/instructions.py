"""Completion-only loss against the loss on every token, on a task a model must follow: side by side in one run.

A synthetic instruction set: "reverse: abc" -> "cba" and "upper: dog" ->
"DOG" for 2,000 random words of 3 to 5 letters (4,000 records), and 100
held-out words (200 prompts). The same tiny GPT-2 from scratch (2 layers x
64, a byte-level tokenizer of 260 tokens, 20 epochs, batch 32, learning rate
3e-3 with a cosine decay) is trained four times: on prompt/completion records
with `train.loss_on: completion` and `all`, and on the same tasks as two-turn
chats (`data.format: messages`, tfclm's ChatML template) with `assistant`
and `all`; each is scored by greedy exact match on the held-out prompts (a
chat through `generate --chat`'s path, with the share of replies that ended
at the end-of-turn token). tests/test_instructions.py runs the
completion-only row and asks for 90%.

    .venv/bin/python bench/instructions.py [--out DIR]
"""

import argparse
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfclm  # noqa: E402  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

TASKS = {"reverse": lambda word: word[::-1], "upper": str.upper}


def synthetic_tasks(
    path: str, seed: int = 0, train_words: int = 2000, held_out: int = 100, messages: bool = False
) -> list[str]:
    """Write the training records to `path` (JSON lines: prompt and completion, or the two turns of a chat as
    `messages`); return the held-out words."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = list(dict.fromkeys("".join(rng.choice(letters) for _ in range(rng.randint(3, 5))) for _ in range(5000)))
    with open(path, "w", encoding="utf-8") as handle:
        for word in words[:train_words]:
            for task, answer in TASKS.items():
                record = {"prompt": f"{task}: {word}\n", "completion": answer(word)}
                if messages:
                    record = {"messages": [turn("user", f"{task}: {word}"), turn("assistant", answer(word))]}
                handle.write(json.dumps(record) + "\n")
    return words[-held_out:]


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def settings(data_path: str, out: str, loss_on: str, messages: bool = False) -> list[str]:
    if messages:  # a chat: "<|im_start|>user\nupper: dog<|im_end|>\n<|im_start|>assistant\nDOG..."
        data = ["data.format=messages", "data.block_size=48"]
    else:
        data = ["data.format=prompt_completion", "data.prompt_column=prompt", "data.block_size=32"]
    return [
        f"data.dataset={data_path}",
        *data,
        "data.validation_split=0.05",
        "tokenizer.vocab_size=260",  # the bytes and EOS: one token a letter
        "model.config.n_layer=2",
        "model.config.n_embd=64",
        "model.config.n_head=4",
        f"train.loss_on={loss_on}",
        "train.epochs=20",
        "train.learning_rate=3e-3",
        "train.batch_size=32",
        "train.warmup_ratio=0.05",
        "train.lr_schedule=cosine",
        "train.weight_decay=0.0",
        "train.checkpoint_steps=null",
        "evaluate.before_training=false",
        "logging.report_to=[none]",
        "logging.sample_every_n_epochs=null",
        "generate.max_new_tokens=4",
        f"output_dir={out}",
    ]


def exact_match(model_dir: str, words: list[str], chat: bool = False) -> dict:
    """Greedy answers to every held-out prompt: the share that is exactly right, overall and per task (and for
    a chat model, the share of replies that ended at the end-of-turn token)."""
    from tfclm.generation.generator import Generator
    from tfclm.model.loading import load_trained

    prompts = [(f"{task}: {word}", answer(word), task) for word in words for task, answer in TASKS.items()]
    if chat:
        generator = Generator(*load_trained(model_dir))
        samples = generator.chat([p for p, _, _ in prompts], do_sample=False, max_new_tokens=8)
        answers = [s.completion for s in samples]
    else:
        texts = tfclm.generate(model_dir, [p + "\n" for p, _, _ in prompts], do_sample=False, max_new_tokens=8)
        answers = [text[len(p) + 1 :] for (p, _, _), text in zip(prompts, texts)]
    right = {task: [] for task in TASKS}
    for (_, expected, task), answer in zip(prompts, answers):
        right[task].append(answer.strip() == expected)
    every = [ok for found in right.values() for ok in found]
    found = {"all": sum(every) / len(every), **{task: sum(f) / len(f) for task, f in right.items()}}
    if chat:
        found["ended"] = sum(s.stopped_at_eos for s in samples) / len(samples)
    return found


def train_and_score(workdir: str, loss_on: str, messages: bool = False) -> dict:
    from tfclm.config import load_config

    data = os.path.join(workdir, f"tasks-{'chats' if messages else 'pairs'}.jsonl")
    words = synthetic_tasks(data, messages=messages)
    out = os.path.join(workdir, f"{'messages' if messages else 'prompt_completion'}-loss-on-{loss_on}")
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
    results = tfclm.fit(load_config(config, settings(data, out, loss_on, messages)), verbose=0, overwrite=True)
    return {"eval_loss": results["eval_loss"], **exact_match(out, words, messages)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where the two runs go (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.out or tempfile.mkdtemp(prefix="tfclm-instructions-")
    os.makedirs(workdir, exist_ok=True)
    variants = [("prompt_completion", "completion"), ("prompt_completion", "all"), ("messages", "assistant")]
    variants.append(("messages", "all"))
    rows = {(f, loss_on): train_and_score(workdir, loss_on, f == "messages") for f, loss_on in variants}
    print(f"{'data.format':<18} {'train.loss_on':<14} {'exact match':>11} {'reverse':>8} {'upper':>6}")
    for (data_format, loss_on), found in rows.items():
        ended = f"  replies ended at the end of the turn: {found['ended']:.1%}" if "ended" in found else ""
        figures = f"{found['all']:>11.1%} {found['reverse']:>8.1%} {found['upper']:>6.1%}"
        print(f"{data_format:<18} {loss_on:<14} {figures}{ended}")


if __name__ == "__main__":
    main()
