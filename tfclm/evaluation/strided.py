"""Sliding-window perplexity and bits per byte: figures that compare with papers and across tokenizers.

Blocks (`perplexity.evaluate_loss` over packed blocks) predict each block's
first token with no context and never score it. With a stride, the text is
read through windows of `max_length` tokens that start every `stride`
tokens; each token is scored once, in the first window that reaches it,
with up to `max_length - 1` tokens of context: the method of transformers'
"perplexity of fixed-length models" guide. The token stream starts with an
end-of-text token, so a document's first token is scored too.

Bits per byte divide the scored tokens' negative log-likelihood, in bits,
by their UTF-8 bytes: a figure that does not depend on the tokenizer.
"""

import numpy as np

from tfclm.evaluation.perplexity import loss_figures, sum_and_count


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes of each token id's text; 0 for special tokens (EOS has no bytes in the text)."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    table = np.zeros(size, dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel"
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        # A byte-level BPE writes each byte as one character: the length is the byte count, even for a token
        # that holds only part of a multi-byte character (which decoding alone would turn into U+FFFD).
        table[token_id] = len(token) if byte_level else len(tokenizer.decode([token_id]).encode("utf-8"))
    return table


def right_padded(rows) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) of token rows of any lengths, padded on the right to the longest."""
    width = max(len(row) for row in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def windows(ids: np.ndarray, max_length: int, stride: int):
    """(window ids, number of scored tokens at its end) for one token stream, as the transformers guide cuts it."""
    previous_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        yield ids[begin:end], end - previous_end
        previous_end = end
        if end == len(ids):
            break


def strided_loss(
    model, streams: list[np.ndarray], max_length: int, stride: int, batch_size: int, byte_table=None
) -> dict:
    """Loss, perplexity, scored tokens (and bits per byte, with `byte_table`) over `streams` of token ids."""
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    step = sum_and_count(model)
    total = count = scored_bytes = 0.0
    batch = []

    def run(batch):
        ids, mask = right_padded([window for window, _ in batch])
        labels = np.full_like(ids, -100)
        for row, (window, targets) in enumerate(batch):
            labels[row, len(window) - targets : len(window)] = window[len(window) - targets :]
        batch_sum, batch_count = step({"input_ids": ids, "attention_mask": mask, "labels": labels})
        scored = labels[:, 1:][labels[:, 1:] != -100]  # the model's shift: position 0 is never predicted
        return float(batch_sum), float(batch_count), float(byte_table[scored].sum()) if byte_table is not None else 0

    for stream in streams:
        for window in windows(np.asarray(stream, np.int32), max_length, stride):
            batch.append(window)
            if len(batch) == batch_size:
                total, count, scored_bytes = (a + b for a, b in zip((total, count, scored_bytes), run(batch)))
                batch = []
    if batch:
        total, count, scored_bytes = (a + b for a, b in zip((total, count, scored_bytes), run(batch)))
    return loss_figures(total, count, scored_bytes if byte_table is not None else None)
