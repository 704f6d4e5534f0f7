"""Prompt/completion data: records -> (prompt, completion) pairs -> one padded example each.

A record's prompt comes from `data.prompt_column` or `data.prompt_template`
and its completion from `data.completion_column`; a list of completions
(ELI5's answers) gives one example per completion (`completion_pick: all`),
the first, or the one with the highest score (`max:answers.score`). An
example is the prompt's tokens, the completion's and EOS, cut at
`block_size`; with `train.loss_on: completion` its labels are -100 on the
prompt, so the loss counts the completion and its EOS only.

Examples are never packed: transformers' TF models take a 2-D attention
mask (batch, length), which hides padding but cannot keep two examples in
one row from attending to each other. Each is padded instead, and training
batches are made of examples of similar length (`bucketed_order`) and cut to
their longest, so little of a batch is padding.
"""

import os
import re

import numpy as np

from tfclm.config import DataConfig
from tfclm.data import chat, corpus, preference, sources
from tfclm.data.packing import Blocks
from tfclm.errors import ConfigError

_FIELD = re.compile(r"\{([^{}]+)\}")
BUCKET_BATCHES = 32  # batches sorted by length together: enough to group lengths, few enough to stay shuffled
LENGTH_MULTIPLE = 16  # a batch is cut to its longest example, rounded up to this: fewer shapes to trace


def _text(value, key: str, index: int, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"record {index}: {path!r} holds {type(value).__name__}, not text")
    return value


def prompt_of(record: dict, data: DataConfig, index: int) -> str:
    if data.prompt_template is None:
        key = "data.prompt_column"
        return _text(sources.record_field(record, data.prompt_column, key, index), key, index, data.prompt_column)
    key = "data.prompt_template"
    fields = _FIELD.findall(data.prompt_template)
    if not fields:
        raise ConfigError(key, "names no field; write fields in braces, such as 'Question: {title}\\nAnswer: '")
    values = {}
    for name in fields:
        value = sources.record_field(record, name, key, index)
        values[name] = _text(value, key, index, name)
    return _FIELD.sub(lambda m: values[m.group(1)], data.prompt_template)


def completions_of(record: dict, data: DataConfig, index: int) -> list[str]:
    """The record's completion(s), as `data.completion_pick` says; an empty one is an error."""
    key, path = "data.completion_column", data.completion_column
    value = sources.record_field(record, path, key, index)
    found = [value] if isinstance(value, str) else value
    if not isinstance(found, list) or not all(isinstance(v, str) for v in found):
        raise ConfigError(key, f"record {index}: {path!r} holds {type(value).__name__}, not text or a list of text")
    if not found or not all(v.strip() for v in found):
        raise ConfigError(key, f"record {index}: {path!r} is empty; every record needs a completion")
    pick = data.completion_pick
    if pick == "first":
        return found[:1]
    if pick.startswith("max:"):
        scores = sources.record_field(record, pick[4:], "data.completion_pick", index)
        if not isinstance(scores, list) or len(scores) != len(found):
            raise ConfigError(
                "data.completion_pick",
                f"record {index}: {pick[4:]!r} is not a list of one score per completion ({len(found)})",
            )
        return [found[int(np.argmax(scores))]]
    return found


def pairs(records, data: DataConfig) -> list[tuple[int, str, tuple[str, str]]]:
    """(record index, prompt, (prompt, completion)) of every example, in record order; repeated pairs once."""
    found, seen = [], set()
    for index, record in enumerate(_records(records, data)):
        prompt = prompt_of(record, data, index)
        for completion in completions_of(record, data, index):
            if (prompt, completion) not in seen:
                seen.add((prompt, completion))
                found.append((index, prompt, (prompt, completion)))
    return found


def conversations(records, data: DataConfig) -> list[tuple[int, tuple, tuple]]:
    """(record index, the turns that prompt, the turns) of every conversation; repeated conversations once."""
    found, seen = [], set()
    for index, record in enumerate(_records(records, data)):
        turns = chat.conversation_of(record, data.messages_column, index)
        if turns not in seen:
            seen.add(turns)
            found.append((index, tuple(t for t in turns if t[0] != "assistant"), turns))
    return found


def _records(records, data: DataConfig):
    for index, record in enumerate(records):
        if data.max_documents is not None and index >= data.max_documents:
            return
        yield record


def preference_pairs(records, data: DataConfig) -> list[tuple]:
    """(record index, the prompt, (record index, prompt, chosen, rejected)) of every pair; repeated pairs once."""
    found, seen = [], set()
    for index, record in enumerate(_records(records, data)):
        pair = preference.pair_of(record, data, index)
        if pair not in seen:
            seen.add(pair)
            found.append((index, pair[0], (index, *pair)))
    return found


def examples_of(records, data: DataConfig) -> list[tuple]:
    """(record index, what prompts it, the example): `pairs`, `conversations` or `preference_pairs`, as
    `data.format` says."""
    read = {"messages": conversations, "preference": preference_pairs}.get(data.format, pairs)
    return read(records, data)


def train_and_validation(data: DataConfig, seed: int):
    """(training examples, validation examples, how validation was chosen); a seeded split is by record, so that
    no prompt is on both sides."""
    if corpus.is_builtin(data.dataset) or (os.path.exists(data.dataset) and sources._txt_files(data.dataset)):
        raise ConfigError(
            "data.format",
            f"{data.format} reads records with fields (.json, .jsonl, .csv, .parquet, a saved or Hub dataset), "
            f"and {data.dataset!r} holds plain text",
        )
    examples = examples_of(sources.load_records(data), data)
    other = sources.validation_source(data)
    if other is not None:
        held_out = examples_of(sources.load_records(other), other)
        prompts = {p for _, p, _ in held_out}
        train = [e for e in examples if e[1] not in prompts]  # a prompt in both would flatter the model
        if not held_out or not train:
            raise ConfigError(
                "data.validation_split",
                f"{data.validation_split!r} leaves {len(held_out)} validation and {len(train)} training examples; "
                f"use a split or file with other prompts than the training data's",
            )
    else:
        records = sorted({i for i, _, _ in examples})
        if len(records) < 2:
            raise ConfigError("data.dataset", f"{data.dataset!r} gave {len(records)} record; splitting needs 2")
        kept, held = sources.split_documents(records, data.validation_split, seed)
        held = set(held)
        train = [e for e in examples if e[0] not in held]
        held_out = [e for e in examples if e[0] in held]
    how = f"validation: {len(held_out):,} examples, training: {len(train):,}"
    return [e[2] for e in train], [e[2] for e in held_out], how


def encode(pairs_: list[tuple[str, str]], tokenizer, block_size: int, loss_on_completion: bool) -> Blocks:
    """One padded row per example; labels -100 on padding, and on the prompt when the loss is on the completion."""
    prompts = tokenizer([p for p, _ in pairs_], add_special_tokens=False, verbose=False)["input_ids"]
    answers = tokenizer([c for _, c in pairs_], add_special_tokens=False, verbose=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = np.full((len(pairs_), block_size), pad, dtype=np.int32)
    labels = np.full((len(pairs_), block_size), -100, dtype=np.int32)
    mask = np.zeros((len(pairs_), block_size), dtype=np.int32)
    kept, tokens, dropped = 0, 0, 0
    for prompt, answer in zip(prompts, answers):
        row = (prompt + answer + [tokenizer.eos_token_id])[:block_size]
        tokens += len(prompt) + len(answer) + 1
        dropped += len(prompt) + len(answer) + 1 - len(row)
        if len(prompt) >= len(row):  # nothing of the completion is left to learn from: all of it is dropped
            dropped += len(row)
            continue
        ids[kept, : len(row)], mask[kept, : len(row)] = row, 1
        scored = len(prompt) if loss_on_completion else 0
        labels[kept, scored : len(row)] = row[scored:]
        kept += 1
    return Blocks(ids[:kept], len(pairs_), tokens, dropped, mask[:kept], labels[:kept])


def loss_on(data: DataConfig, setting: str) -> str:
    """`train.loss_on` resolved: auto is completion for prompt_completion, assistant for messages, all for text."""
    if setting != "auto":
        return setting
    return {"prompt_completion": "completion", "messages": "assistant", "preference": "completion"}.get(
        data.format, "all"
    )


SCORED = {"completion": "the completions", "assistant": "the assistant's replies", "all": "every token"}


def encode_examples(
    found: list, tokenizer, data: DataConfig, scored: str, block_size: int, preference_settings=None
) -> Blocks:
    """`found` (pairs, conversations or preference pairs) as padded rows, the loss on `scored` (a resolved
    `loss_on`); preference pairs take the config's `preference:` section."""
    if data.format == "messages":
        return chat.encode(found, tokenizer, block_size, scored != "all")
    if data.format == "preference":
        return preference.encode(found, tokenizer, block_size, preference_settings)
    return encode(found, tokenizer, block_size, scored != "all")


def bucketed_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the examples whose consecutive `batch_size` rows have similar lengths: shuffled, sorted
    by length within runs of BUCKET_BATCHES batches, and the batches shuffled again."""
    order = rng.permutation(len(lengths))
    usable = len(order) // batch_size * batch_size
    run = batch_size * BUCKET_BATCHES
    for start in range(0, usable, run):
        part = order[start : min(start + run, usable)]
        order[start : start + len(part)] = part[np.argsort(lengths[part], kind="stable")]
    batches = order[:usable].reshape(-1, batch_size)
    return np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), order[usable:]])


def padded_length(longest: int, block_size: int) -> int:
    return min(block_size, -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE)


def padding_share(lengths: np.ndarray, batch_size: int, seed: int, block_size: int) -> float:
    """The share of padding in the first epoch's batches, each cut to its longest example."""
    order = bucketed_order(lengths, batch_size, np.random.default_rng([seed, 0]))
    batches = order[: len(order) // batch_size * batch_size].reshape(-1, batch_size)
    if not len(batches):
        return 0.0
    cells = sum(padded_length(int(lengths[b].max()), block_size) * batch_size for b in batches)
    return 1.0 - float(lengths[batches].sum()) / cells
