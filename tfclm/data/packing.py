"""Tokenize documents and cut them into fixed-length blocks.

Each document's tokens are followed by EOS, so the model learns where a
document ends. Packed (the default), all tokens are laid end to end and cut
into `block_size` blocks: one reshape over one flat array, linear in the
number of tokens (the recipe's `sum(lists, [])` is quadratic). Only the final
partial block is dropped, and the count is reported. Unpacked
(`data.pack: false`), each document is one example, truncated or padded to
`block_size`, with the padding masked out of the labels.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfclm.errors import ConfigError
from tfclm.files import atomic_write_arrays


@dataclass
class Blocks:
    input_ids: np.ndarray  # (n_blocks, block_size) int32; labels are the same array
    documents: int
    tokens: int  # tokens before packing, EOS included
    dropped: int  # tokens not in any block: the final partial block, or truncated document ends
    # None when every position is a real token; else 1 on real tokens, 0 on padding
    attention_mask: np.ndarray | None = None
    # None: the labels are the ids where the mask is 1; else their own array (-100 where not scored)
    labels: np.ndarray | None = None
    # Preference pairs: these blocks are the chosen answers, `rejected` the other answers row for row
    rejected: "Blocks | None" = None
    # Per-row numbers that travel with the rows into batches (the reference's log-probabilities)
    extras: dict | None = None

    def summary(self, name: str) -> str:
        n, size = self.input_ids.shape
        return (
            f"{name}: {self.documents:,} documents, {self.tokens:,} tokens -> {n:,} blocks of {size}, "
            f"{self.dropped:,} tokens dropped"
        )


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each document, EOS appended: the unit that packing lays end to end."""
    # verbose=False: documents longer than the model's context are expected here; packing cuts them.
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return [row + [tokenizer.eos_token_id] for row in ids]


def tokenize(texts: list[str], tokenizer, num_proc: int = 1, desc: str = "tokenizing"):
    """A `datasets.Dataset` with one row of token ids per document, EOS appended."""

    def encode(batch):
        return {"input_ids": encode_documents(tokenizer, batch["text"])}

    docs = datasets.Dataset.from_dict({"text": texts})
    # Forking workers only pays off when each gets a real share of the text.
    procs = num_proc if len(texts) >= 8 * num_proc else None
    return docs.map(encode, batched=True, batch_size=256, num_proc=procs, remove_columns=["text"], desc=desc)


def flat_tokens(tokenized) -> np.ndarray:
    """Every token of every document, in order, as one int32 array (no Python loop over tokens)."""
    column = tokenized.data.column("input_ids")
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int32)
    flat = pc.list_flatten(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int32)


def pack(
    tokens: np.ndarray,
    block_size: int,
    documents: int,
    name: str = "data",
    keep_remainder: bool = False,
    pad_id: int = 0,
) -> Blocks:
    """Cut `tokens` into blocks. `keep_remainder` pads the final partial block
    (masked out) instead of dropping it: evaluation should count every token."""
    n_full = len(tokens) // block_size
    remainder = len(tokens) - n_full * block_size
    if n_full == 0 and not (keep_remainder and remainder):
        raise ConfigError(
            "data.block_size",
            f"the {name} text has {len(tokens):,} tokens, fewer than one block of {block_size}; "
            "add text or lower data.block_size",
        )
    if not keep_remainder or remainder == 0:
        kept = n_full * block_size
        return Blocks(tokens[:kept].reshape(n_full, block_size), documents, len(tokens), len(tokens) - kept)
    padded = np.full((n_full + 1) * block_size, pad_id, dtype=np.int32)
    padded[: len(tokens)] = tokens
    mask = np.zeros_like(padded)
    mask[: len(tokens)] = 1
    return Blocks(padded.reshape(-1, block_size), documents, len(tokens), 0, mask.reshape(-1, block_size))


def pad_documents(rows: Iterable[list[int]], block_size: int, pad_id: int = 0) -> Blocks:
    """One example per document: truncated to `block_size`, or padded with the padding masked."""
    rows = list(rows)
    ids = np.full((len(rows), block_size), pad_id, dtype=np.int32)
    mask = np.zeros_like(ids)
    tokens = dropped = 0
    for i, row in enumerate(rows):
        n = min(len(row), block_size)
        ids[i, :n] = row[:n]
        mask[i, :n] = 1
        tokens += len(row)
        dropped += len(row) - n
    return Blocks(ids, len(rows), tokens, dropped, mask)


def build_blocks(
    texts: list[str],
    tokenizer,
    block_size: int,
    num_proc: int = 1,
    name: str = "data",
    keep_remainder: bool = False,
    pack_documents: bool = True,
) -> Blocks:
    tokenized = tokenize(texts, tokenizer, num_proc, f"tokenizing {name}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not pack_documents:
        return pad_documents(tokenized["input_ids"], block_size, pad_id)
    return pack(flat_tokens(tokenized), block_size, len(texts), name, keep_remainder, pad_id)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}|{tokenizer.pad_token_id}".encode()).hexdigest()[:16]


def blocks_key(train: list[str], validation: list[str], tokenizer, block_size: int, pack_documents: bool) -> str:
    """Changes with the documents (so with source and text selection), the tokenizer, block_size and packing."""
    digest = hashlib.sha256(f"blocks-v1|{block_size}|{pack_documents}|{tokenizer_fingerprint(tokenizer)}".encode())
    for side in (train, validation):
        digest.update(f"|{len(side)}|".encode())
        for text in side:
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def save_blocks(path: str, blocks: dict[str, Blocks]) -> None:
    """Both splits in one .npz, written to a temporary name and renamed."""
    arrays = {}
    for name, b in blocks.items():
        arrays[f"{name}_ids"] = b.input_ids
        if b.attention_mask is not None:
            arrays[f"{name}_mask"] = b.attention_mask
        arrays[f"{name}_counts"] = np.array([b.documents, b.tokens, b.dropped], dtype=np.int64)
    atomic_write_arrays(path, arrays)


def load_blocks(path: str, names: tuple[str, ...]) -> dict[str, Blocks]:
    with np.load(path) as arrays:
        out = {}
        for name in names:
            documents, tokens, dropped = (int(x) for x in arrays[f"{name}_counts"])
            mask = arrays[f"{name}_mask"] if f"{name}_mask" in arrays else None
            out[name] = Blocks(arrays[f"{name}_ids"], documents, tokens, dropped, mask)
        return out


def stream_blocks(
    texts: Iterable[str],
    tokenizer,
    block_size: int,
    pack_documents: bool = True,
    keep_remainder: bool = False,
    chunk: int = 256,
    progress=None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, mask) blocks from a stream of documents, with memory bounded by one chunk of documents.

    Packed, it yields exactly the blocks `build_blocks` makes of the same text.
    """
    eos = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    full_mask = np.ones(block_size, dtype=np.int32)
    carry = np.zeros(0, dtype=np.int32)
    batch = []

    def flush(docs):
        nonlocal carry
        rows = encode_documents(tokenizer, docs)
        if progress is not None:
            progress(documents=len(rows), tokens=sum(map(len, rows)))
        if not pack_documents:
            padded = pad_documents(rows, block_size, pad_id)
            yield from zip(padded.input_ids, padded.attention_mask)
            return
        carry = np.concatenate([carry, *(np.asarray(r, dtype=np.int32) for r in rows)])
        n = len(carry) // block_size
        for i in range(n):
            yield carry[i * block_size : (i + 1) * block_size], full_mask
        carry = carry[n * block_size :]

    for text in texts:
        batch.append(text)
        if len(batch) >= chunk:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)
    if keep_remainder and len(carry):
        ids = np.full(block_size, pad_id, dtype=np.int32)
        mask = np.zeros(block_size, dtype=np.int32)
        ids[: len(carry)], mask[: len(carry)] = carry, 1
        yield ids, mask
