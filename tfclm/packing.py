"""Tokenize documents and pack them into fixed-length blocks.

Each document's tokens are followed by EOS, so the model learns where a
document ends; then all tokens are laid end to end and cut into
`block_size` blocks. The cut is one reshape over one flat array: linear in
the number of tokens (the recipe's `sum(lists, [])` is quadratic). Only the
final partial block is dropped, and the count of dropped tokens is reported.
"""
from dataclasses import dataclass

import numpy as np

from tfclm.errors import ConfigError


@dataclass
class Blocks:
    input_ids: np.ndarray  # (n_blocks, block_size) int32; labels are the same array
    documents: int
    tokens: int  # tokens before packing, EOS included
    dropped: int  # tokens of the final partial block, when it is not kept
    # None when every block is full; else 1 on real tokens, 0 on the padding of a kept final block
    attention_mask: np.ndarray | None = None

    def summary(self, name: str) -> str:
        n, size = self.input_ids.shape
        return f"{name}: {self.documents:,} documents, {self.tokens:,} tokens -> {n:,} blocks of {size}, {self.dropped:,} tokens dropped as the remainder"


def tokenize(texts: list[str], tokenizer, num_proc: int = 1):
    """A `datasets.Dataset` with one row of token ids per document, EOS appended."""
    import datasets

    eos = tokenizer.eos_token_id

    def encode(batch):
        # verbose=False: documents longer than the model's context are expected here; packing cuts them.
        ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return {"input_ids": [row + [eos] for row in ids]}

    docs = datasets.Dataset.from_dict({"text": texts})
    # Forking workers only pays off when each gets a real share of the text.
    procs = num_proc if len(texts) >= 8 * num_proc else None
    return docs.map(encode, batched=True, batch_size=256, num_proc=procs, remove_columns=["text"], desc="tokenizing")


def flat_tokens(tokenized) -> np.ndarray:
    """Every token of every document, in order, as one int32 array (no Python loop over tokens)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = tokenized.data.column("input_ids")
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int32)
    flat = pc.list_flatten(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int32)


def pack(tokens: np.ndarray, block_size: int, documents: int, name: str = "data", keep_remainder: bool = False, pad_id: int = 0) -> Blocks:
    """Cut `tokens` into blocks. `keep_remainder` pads the final partial block
    (masked out) instead of dropping it: evaluation should count every token."""
    n_full = len(tokens) // block_size
    remainder = len(tokens) - n_full * block_size
    if n_full == 0 and not (keep_remainder and remainder):
        raise ConfigError(
            "data.block_size",
            f"the {name} text has {len(tokens):,} tokens, fewer than one block of {block_size}; add text or lower data.block_size",
        )
    if not keep_remainder or remainder == 0:
        kept = n_full * block_size
        return Blocks(tokens[:kept].reshape(n_full, block_size), documents, len(tokens), len(tokens) - kept)
    padded = np.full((n_full + 1) * block_size, pad_id, dtype=np.int32)
    padded[: len(tokens)] = tokens
    mask = np.zeros_like(padded)
    mask[: len(tokens)] = 1
    return Blocks(padded.reshape(-1, block_size), documents, len(tokens), 0, mask.reshape(-1, block_size))


def build_blocks(texts: list[str], tokenizer, block_size: int, num_proc: int = 1, name: str = "data", keep_remainder: bool = False) -> Blocks:
    tokens = flat_tokens(tokenize(texts, tokenizer, num_proc))
    return pack(tokens, block_size, len(texts), name, keep_remainder, tokenizer.pad_token_id or 0)
