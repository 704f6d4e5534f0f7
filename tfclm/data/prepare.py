"""The data stage: documents -> split -> tokenizer -> blocks, with a cache of the blocks.

In memory (the default) the blocks are built once and cached in
`OUTPUT_DIR/cache/`, keyed by the documents, the tokenizer, block_size and
packing; a rerun with the same inputs skips tokenization and says so. With
`data.streaming: true` nothing is built here: the pipeline packs on the fly.
Nothing is written here: the cache is written by `PreparedData.write_cache`,
once the run has checked everything else and goes ahead.
"""

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from tfclm.config import Config, DataConfig
from tfclm.data import chat, examples, packing, preference, sources
from tfclm.data.packing import Blocks
from tfclm.data.tokenizer import load_tokenizer
from tfclm.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer: object
    train: Optional[Blocks] = None  # None when streaming
    validation: Optional[Blocks] = None
    facts: dict = field(default_factory=dict)  # counts for results.json
    cache_writes: list = field(default_factory=list)  # what the cache lacks, written by write_cache

    def write_cache(self) -> None:
        for write in self.cache_writes:
            write()
        self.cache_writes.clear()


def _in_validation(text: str, fraction: float, seed: int) -> bool:
    """A seeded coin per document, the same on every pass: a stream's split without holding the stream."""
    digest = hashlib.blake2b(f"{seed}\0{text.strip()}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def stream_texts(data: DataConfig, seed: int, side: str) -> Iterator[str]:
    """The training or validation documents of a stream, read lazily."""
    other = sources.validation_source(data)
    if other is not None:
        source = other if side == "validation" else data
        yield from sources.unique_documents(sources.iter_texts(source), source.max_documents)
        return
    for text in sources.unique_documents(sources.iter_texts(data), data.max_documents):
        if _in_validation(text, data.validation_split, seed) == (side == "validation"):
            yield text


def prepare(config: Config, cache_dir: str | None = None, own_pad: bool = False) -> PreparedData:
    """`cache_dir` defaults to OUTPUT_DIR/cache; non-chief workers keep theirs elsewhere. `own_pad`: see
    `load_tokenizer`."""
    data, seed = config.data, config.train.seed
    cache_dir = cache_dir or os.path.join(config.output_dir, "cache")
    if data.streaming:
        tokenizer = load_tokenizer(
            config, stream_texts(data, seed, "train"), cache_dir, own_pad=own_pad
        )  # a stream's: not cached
        logger.info(f"data: streaming {data.dataset}; blocks of {data.block_size} are packed on the fly")
        return PreparedData(tokenizer, facts={"streaming": True})

    if data.format != "text":
        return _prepare_examples(config, cache_dir, own_pad)
    train_texts, eval_texts, how = sources.train_and_validation(data, seed)
    logger.info(f"data: {len(train_texts) + len(eval_texts):,} distinct documents from {data.dataset}; {how}")
    writes = []
    tokenizer = load_tokenizer(config, train_texts, cache_dir, writes, own_pad)
    key = packing.blocks_key(train_texts, eval_texts, tokenizer, data.block_size, data.pack)
    cache = os.path.join(cache_dir, f"blocks-{key}.npz")
    if os.path.exists(cache):
        blocks = packing.load_blocks(cache, ("train", "validation"))
        logger.info(f"data: reusing the blocks cached in {cache}; tokenization skipped")
    else:
        build = dict(block_size=data.block_size, num_proc=data.num_proc, pack_documents=data.pack)
        blocks = {
            "train": packing.build_blocks(train_texts, tokenizer, name="training", **build),
            "validation": packing.build_blocks(eval_texts, tokenizer, name="validation", keep_remainder=True, **build),
        }
        writes.append(lambda: packing.save_blocks(cache, blocks))
    train, validation = blocks["train"], blocks["validation"]
    logger.info(train.summary("train"))
    logger.info(validation.summary("validation"))
    facts = {
        "documents": len(train_texts) + len(eval_texts),
        "train_documents": len(train_texts),
        "validation_documents": len(eval_texts),
        "train_blocks": int(len(train.input_ids)),
        "validation_blocks": int(len(validation.input_ids)),
        "train_tokens_dropped": train.dropped,
        "validation_tokens_dropped": validation.dropped,
        "validation": how,
    }
    return PreparedData(tokenizer, train, validation, facts, writes)


def _check_room(found, data, train, kind: str) -> None:
    """Examples whose prompt fills the block are left out; when that leaves less than one step, the block is what
    to change, not the batch."""
    left_out = found.documents - len(found.input_ids)
    if left_out and len(found.input_ids) < train.batch_size * train.gradient_accumulation_steps:
        what = "conversation reaches no reply" if data.format == "messages" else "prompt fills the block"
        raise ConfigError(
            "data.block_size",
            f"{left_out:,} of {found.documents:,} training {kind} were left out because their {what} within "
            f"{data.block_size} tokens, and {len(found.input_ids):,} are fewer than one step; raise data.block_size "
            f"(up to the model's positions) or shorten the prompts",
        )


KINDS = {"messages": "conversations", "prompt_completion": "prompt/completion examples", "preference": "pairs"}


def _text_of(example, kind: str) -> str:
    """An example's text, for training a tokenizer on: its turns' contents, its prompt and completion, or the
    prompt and answers of a pair."""
    if kind == "messages":
        return " ".join(c for _, c in example)
    if kind == "prompt_completion":
        return example[0] + example[1]
    parts = [p if isinstance(p, str) else " ".join(c for _, c in p) for p in example[1:]]
    return " ".join(parts)


def _prepare_examples(config: Config, cache_dir: str, own_pad: bool) -> PreparedData:
    """Prompt/completion examples or conversations, one padded row each (see `tfclm.data.examples` and
    `tfclm.data.chat`); tokenized on every run."""
    data, train = config.data, config.train
    train_found, eval_found, how = examples.train_and_validation(data, train.seed)
    kind = KINDS[data.format]
    logger.info(f"data: {len(train_found) + len(eval_found):,} {kind} from {data.dataset}; {how}")
    writes = []
    tokenizer = load_tokenizer(config, [_text_of(e, data.format) for e in train_found], cache_dir, writes, own_pad)
    facts = {}
    if data.format == "messages" or (data.format == "preference" and preference.conversational(train_found)):
        tokenizer, added = chat.with_template(tokenizer)
        chat.check_template(
            tokenizer, "tokenizer.name_or_path" if config.tokenizer.name_or_path else "model.name_or_path"
        )
        facts["chat_template"] = f"tfclm's ChatML, adding {' and '.join(added)}" if added else "the tokenizer's own"
        logger.info(f"data: conversations rendered with {facts['chat_template']}")
    scored = examples.loss_on(data, train.loss_on)
    sides = {
        side: examples.encode_examples(found, tokenizer, data, scored, data.block_size, config.preference)
        for side, found in (("train", train_found), ("validation", eval_found))
    }
    _check_room(sides["train"], data, train, kind)
    lengths = sides["train"].attention_mask.sum(axis=1)
    share = examples.padding_share(lengths, train.batch_size, train.seed, data.block_size)
    for side, found in sides.items():
        logger.info(
            f"{side}: {len(found.input_ids):,} examples of {found.tokens:,} tokens, {found.dropped:,} cut at "
            f"block_size {data.block_size}; the loss on {examples.SCORED[scored]}"
        )
    logger.info(f"train: padding is {share:.1%} of the training batches' tokens (batched by length)")
    facts.update(
        examples=len(train_found) + len(eval_found),
        train_examples=int(len(sides["train"].input_ids)),
        validation_examples=int(len(sides["validation"].input_ids)),
        train_tokens_cut=sides["train"].dropped,
        padding_share=round(share, 4),
        loss_on=scored,
        validation=how,
    )
    return PreparedData(tokenizer, sides["train"], sides["validation"], facts, writes)
