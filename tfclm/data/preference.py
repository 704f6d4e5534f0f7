"""Preference pairs: a prompt, the answer preferred and the one not, tokenized as TRL's DPOTrainer tokenizes them.

A record holds TRL's standard shape (`prompt`, `chosen`, `rejected` as text)
or its conversational one (`chosen` and `rejected` as lists of {role,
content} turns, the prompt a list of turns or, without one, the turns both
share at their start). Conversations are rendered with the tokenizer's chat
template as TRL renders them: the prompt with the generation prompt, each
answer as what the whole conversation adds after it.

The prompt and each answer are tokenized apart, EOS after each answer; the
prompt keeps its last `preference.max_prompt_length` tokens and an answer
its first `max_completion_length`; a row longer than `data.block_size`
keeps its end (TRL's `truncation_mode: keep_end`). Each pair becomes two
padded rows, chosen and rejected, whose labels are -100 except on the
answer: the log-probability of an answer is the sum over those tokens.
"""

import os

import numpy as np

from tfclm.data import chat
from tfclm.data.packing import Blocks
from tfclm.data.sources import record_field
from tfclm.errors import ConfigError


def _side(record: dict, path: str, key: str, index: int):
    value = record_field(record, path, key, index)
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(key, f"record {index}: {path!r} is empty; every pair needs two answers")
        return value
    if not isinstance(value, list):
        raise ConfigError(key, f"record {index}: {path!r} holds {type(value).__name__}, not text or a list of turns")
    return chat.turns_of(value, key, index, path)


def _shared_start(chosen, rejected) -> int:
    """TRL's `extract_prompt`: where the two answers first differ (for text, before a space that precedes it)."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return idx


def pair_of(record: dict, data, index: int) -> tuple:
    """(prompt, chosen, rejected), each text or turns; a one-line error naming the record and field."""
    chosen = _side(record, data.chosen_column, "data.chosen_column", index)
    rejected = _side(record, data.rejected_column, "data.rejected_column", index)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ConfigError(
            "data.rejected_column", f"record {index}: one answer is text and the other turns; give both the same shape"
        )
    prompt_key = data.prompt_column or "prompt"
    if data.prompt_column is not None or record.get("prompt") is not None:
        prompt = record_field(record, prompt_key, "data.prompt_column", index)
        prompt = prompt if isinstance(prompt, str) else chat.turns_of(prompt, "data.prompt_column", index, prompt_key)
        if isinstance(prompt, str) != isinstance(chosen, str):
            raise ConfigError(
                "data.prompt_column", f"record {index}: the prompt and the answers are not all text or all turns"
            )
    else:  # no prompt field: what the answers share at their start
        cut = _shared_start(chosen, rejected)
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    if chosen == rejected:
        raise ConfigError(
            "data.rejected_column", f"record {index}: the chosen and rejected answers are the same; drop the pair"
        )
    for key, answer in (("data.chosen_column", chosen), ("data.rejected_column", rejected)):
        if not answer or (isinstance(answer, str) and not answer.strip()):
            raise ConfigError(key, f"record {index}: the answer is empty once the shared prompt is taken off")
    if not isinstance(prompt, str) and prompt and prompt[-1][0] not in ("user", "assistant"):
        raise ConfigError("data.prompt_column", f"record {index}: the prompt's last turn is a system turn")
    return prompt, chosen, rejected


def conversational(found: list) -> bool:
    """Whether any of the pairs (record index, prompt, chosen, rejected) holds turns, which the chat template
    renders; each pair is rendered by its own shape, as TRL renders each record."""
    return any(not isinstance(chosen, str) for _, _, chosen, _ in found)


def render(tokenizer, prompt, chosen, rejected) -> tuple[str, str, str]:
    """The pair as text: conversations through the chat template as TRL's `maybe_apply_chat_template` does."""
    if isinstance(chosen, str):
        return prompt, chosen, rejected

    def messages(turns):
        return [{"role": role, "content": content} for role, content in turns]

    follows = prompt[-1][0] == "assistant" if prompt else False
    text = tokenizer.apply_chat_template(
        messages(prompt), tokenize=False, add_generation_prompt=not follows, continue_final_message=follows
    )
    with_chosen = tokenizer.apply_chat_template(messages(prompt + chosen), tokenize=False)
    text = os.path.commonprefix([text, with_chosen])  # a template that adds a token after the generation prompt
    chosen_text = with_chosen[len(text) :]
    with_rejected = tokenizer.apply_chat_template(messages(prompt + rejected), tokenize=False)
    text = os.path.commonprefix([text, with_rejected])
    return text, chosen_text, with_rejected[len(text) :]


def _rows(prompt, answer, block_size: int) -> tuple[list, int]:
    """(row, where the answer starts in it): the end kept when the row is longer than the block."""
    row = prompt + answer
    start = len(prompt)
    if len(row) > block_size:
        start -= len(row) - block_size
        row = row[-block_size:]
    return row, max(start, 0)


def encode(found: list, tokenizer, block_size: int, preference, key: str = "data.block_size") -> Blocks:
    """`found` ((record index, prompt, chosen, rejected), ...) as padded chosen rows, the rejected rows in
    `.rejected`; a prompt that fills the block is a one-line error naming its record and `key`, the setting of
    `block_size`."""
    rendered = [render(tokenizer, *pair) for _, *pair in found]

    def ids(texts):
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    prompts = ids([p for p, _, _ in rendered])
    answers = [ids([r[k] for r in rendered]) for k in (1, 2)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shape = (len(found), block_size)
    sides = []
    for side in answers:
        ids_ = np.full(shape, pad, dtype=np.int32)
        labels, mask = np.full(shape, -100, dtype=np.int32), np.zeros(shape, dtype=np.int32)
        tokens, cut = 0, 0
        for k, (prompt, answer) in enumerate(zip(prompts, side)):
            prompt = prompt[-preference.max_prompt_length :] if preference.max_prompt_length else prompt
            answer = answer + [tokenizer.eos_token_id]
            answer = answer[: preference.max_completion_length] if preference.max_completion_length else answer
            if len(prompt) >= block_size:
                raise ConfigError(
                    key,
                    f"record {found[k][0]}: its prompt is {len(prompt):,} tokens and fills the block of {block_size}; "
                    f"raise {key} or lower preference.max_prompt_length",
                )
            row, start = _rows(prompt, answer, block_size)
            tokens += len(prompt) + len(answer)
            cut += len(prompt) + len(answer) - len(row)
            ids_[k, : len(row)], mask[k, : len(row)] = row, 1
            labels[k, start : len(row)] = row[start:]
        sides.append(Blocks(ids_, len(found), tokens, cut, mask, labels))
    chosen, rejected = sides
    chosen.rejected = rejected
    return chosen
