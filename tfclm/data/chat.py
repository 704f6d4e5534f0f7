"""Chat data: conversations of {role, content} turns, rendered by a chat template; the loss on the assistant's turns.

A record holds a list of turns (`data.messages_column`, "messages" as chat
datasets name it). It is rendered with the tokenizer's own chat template
(`apply_chat_template`); a tokenizer without one (tfclm's scratch BPE,
GPT-2's) gets `DEFAULT_TEMPLATE`, ChatML, and its two special tokens, which
the model's embeddings grow to hold and train.

Which characters an assistant wrote is found by rendering the conversation
turn by turn: the text up to turn k with the generation prompt, then through
turn k; what lies between is the answer and its end-of-turn token, whatever
the template. Tokens starting there are scored under `train.loss_on:
assistant`; everything else gets the label -100.
"""

import copy

import numpy as np

from tfclm.data.packing import Blocks
from tfclm.data.sources import record_field
from tfclm.errors import ConfigError, first_line

ROLES = ("system", "user", "assistant")
START, END = "<|im_start|>", "<|im_end|>"
# ChatML: every turn opens with START and its role, and closes with END, which ends a reply in generation too.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def with_template(tokenizer):
    """(tokenizer, tokens added): the tokenizer itself where it has a chat template, else a copy given
    DEFAULT_TEMPLATE and its special tokens (a copy: a cached tokenizer stays as it was trained)."""
    if tokenizer.chat_template:
        return tokenizer, []
    tokenizer = copy.deepcopy(tokenizer)
    added = [t for t in (START, END) if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": [START, END]}, replace_additional_special_tokens=False)
    tokenizer.chat_template = DEFAULT_TEMPLATE
    return tokenizer, added


def _as_messages(turns) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


PROBE = (("user", "Hi"), ("assistant", "Probe reply"), ("user", "And then?"), ("assistant", "Second reply"))


def check_template(tokenizer, key: str) -> None:
    """Render a probe conversation with the tokenizer's chat template once, before anything is written: a template
    that raises, does not parse, or loses the assistant's text is one line naming where it came from."""
    source = f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'!r}"
    fix = "mend chat_template in its tokenizer_config.json (or chat_template.jinja), or use another tokenizer"
    messages = _as_messages(PROBE)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja2's TemplateSyntaxError and TemplateError, and whatever a template raises
        raise ConfigError(key, f"{source} fails on a plain conversation ({first_line(exc)}); {fix}") from None
    if not isinstance(text, str) or any(reply not in text for role, reply in PROBE if role == "assistant"):
        raise ConfigError(key, f"{source} leaves the assistant's replies out of the conversation it renders; {fix}")


def end_of_turn_id(tokenizer) -> int:
    """The token the template puts after a reply: the first special token after it, else EOS."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Probe reply"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    after = text[text.rindex("Probe reply") + len("Probe reply") :]
    special = set(tokenizer.all_special_ids)
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return next((i for i in ids if i in special), tokenizer.eos_token_id)


def turns_of(turns, key: str, index: int, path: str) -> tuple:
    """`turns` as ((role, content), ...), or a one-line error naming the record and turn."""
    if not isinstance(turns, list) or not turns:
        raise ConfigError(key, f"record {index}: {path!r} is not a list of {{role, content}} turns")
    found = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not {"role", "content"} <= set(turn):
            raise ConfigError(key, f"record {index}, turn {k}: not a {{role, content}} object: {str(turn)[:60]}")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ConfigError(key, f"record {index}, turn {k}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConfigError(key, f"record {index}, turn {k}: content holds {type(content).__name__}, not text")
        found.append((role, content))
    return tuple(found)


def conversation_of(record: dict, path: str, index: int) -> tuple:
    """The record's turns as ((role, content), ...), or a one-line error naming the record and turn."""
    key = "data.messages_column"
    found = turns_of(record_field(record, path, key, index), key, index, path)
    roles = [role for role, _ in found]
    if "assistant" not in roles or not any(c.strip() for r, c in found if r == "assistant"):
        raise ConfigError(key, f"record {index} has no assistant turn with text; there is nothing to learn from")
    if roles[0] == "assistant":
        raise ConfigError(key, f"record {index} starts with an assistant turn; start with a system or user turn")
    return found


def render(tokenizer, turns) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant's replies (each with its end of turn)."""
    messages = _as_messages(turns)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for k, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not through.startswith(before) or not text.startswith(through):
            raise ConfigError(
                "train.loss_on",
                "the tokenizer's chat template does not render a conversation turn by turn, so the replies cannot "
                "be found; set train.loss_on: all",
            )
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def prompt_text(tokenizer, turns, system: str | None = None) -> str:
    """A conversation so far, rendered up to the assistant's next reply."""
    if system is not None and not (turns and turns[0][0] == "system"):
        turns = (("system", system), *turns)
    return tokenizer.apply_chat_template(_as_messages(turns), tokenize=False, add_generation_prompt=True)


def encode(conversations: list[tuple], tokenizer, block_size: int, loss_on_assistant: bool) -> Blocks:
    """One padded row per conversation, cut at block_size; labels -100 on padding, and outside the replies when
    the loss is on the assistant. A conversation cut before any reply is left out and counted as dropped."""
    if not tokenizer.is_fast:
        raise ConfigError("tokenizer.name_or_path", "data.format messages needs a fast tokenizer (tokenizer.json)")
    rendered = [render(tokenizer, turns) for turns in conversations]
    encoded = tokenizer(
        [text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = np.full((len(rendered), block_size), pad, dtype=np.int32)
    labels = np.full((len(rendered), block_size), -100, dtype=np.int32)
    mask = np.zeros((len(rendered), block_size), dtype=np.int32)
    kept, tokens, dropped = 0, 0, 0
    for (_, spans), row, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
        starts = np.array([start for start, _ in offsets[:block_size]])
        scored = np.zeros(len(starts), dtype=bool)
        for start, end in spans:
            scored |= (starts >= start) & (starts < end)
        if not loss_on_assistant:
            scored[:] = True
        tokens += len(row)
        dropped += len(row) - len(starts)
        if not scored[1:].any():  # the first token predicts nothing: a reply must start after it
            dropped += len(starts)
            continue
        length = len(starts)
        ids[kept, :length], mask[kept, :length] = row[:length], 1
        labels[kept, :length] = np.where(scored, row[:length], -100)
        kept += 1
    return Blocks(ids[:kept], len(rendered), tokens, dropped, mask[:kept], labels[:kept])
