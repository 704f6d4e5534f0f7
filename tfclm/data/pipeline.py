"""Packed blocks -> batches for Keras.

The batch contract, the one every tfclm dataset yields and the model takes:

    {"input_ids": int32 (batch, block), "attention_mask": int32 (batch, block), "labels": int32 (batch, block)}

with `labels = input_ids` where the mask is 1 and -100 elsewhere: the model
shifts the labels by one position itself. EOS tokens keep their labels, so
the model learns to stop.

Two ways to build it: `fast` slices the packed array with `tf.data` and no
Python per batch; `recipe` is the transformers recipe (`prepare_tf_dataset`
with `DataCollatorForLanguageModeling`), kept for comparison and for
datasets that need its collation.
"""

import itertools

import datasets
import numpy as np
from tqdm import tqdm
from transformers import DataCollatorForLanguageModeling

from tfclm.backend import tf
from tfclm.data.examples import LENGTH_MULTIPLE, bucketed_order
from tfclm.data.packing import Blocks, stream_blocks
from tfclm.data.prepare import stream_texts

BATCH_KEYS = ("input_ids", "attention_mask", "labels")
REJECTED = "rejected_"  # a preference batch's rejected rows: rejected_input_ids, ... beside the chosen ones


def labels_for(ids, mask):
    """The labels of the contract: the ids, with -100 where the attention mask is 0 (padding only)."""
    return tf.where(mask == 1, ids, tf.constant(-100, ids.dtype))


def _to_batch(ids, mask):
    return {"input_ids": ids, "attention_mask": mask, "labels": labels_for(ids, mask)}


def _arrays(blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
    ids = blocks.input_ids.astype(np.int32)
    mask = blocks.attention_mask if blocks.attention_mask is not None else np.ones_like(ids)
    return ids, mask.astype(np.int32)


def epoch_order(
    n_blocks: int,
    batch_size: int,
    seed: int,
    epochs: int,
    first_epoch: int = 0,
    multiple: int = 1,
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Block indices of every training batch, epoch after epoch: (batches, batch_size).

    Each epoch is its own seeded permutation, fixed by (seed, epoch) alone, so
    a resumed run can skip exactly the batches it already trained on. An
    epoch holds a whole `multiple` of batches (the micro-batches of an
    optimizer step), so that no step spans two epochs. With `lengths`
    (prompt/completion examples), each batch holds examples of similar length.
    """
    per_epoch = n_blocks // batch_size // multiple * multiple

    def permutation(rng):
        return rng.permutation(n_blocks) if lengths is None else bucketed_order(lengths, batch_size, rng)

    orders = [
        permutation(np.random.default_rng([seed, epoch]))[: per_epoch * batch_size]
        for epoch in range(first_epoch, first_epoch + epochs)
    ]
    return np.concatenate(orders).reshape(-1, batch_size).astype(np.int32)


def fast_dataset(
    blocks: Blocks,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epochs: int = 1,
    skip_batches: int = 0,
    first_epoch: int = 0,
    multiple: int = 1,
):
    """Shuffled training batches drop each epoch's remainder (fixed shapes); evaluation batches keep every block.

    Training batches are those of `epochs` epochs from `first_epoch`, less the first `skip_batches`.
    """
    if blocks.labels is not None:
        return _examples_dataset(blocks, batch_size, shuffle, seed, epochs, skip_batches, first_epoch, multiple)
    ids, mask = _arrays(blocks)
    if not shuffle:
        ds = tf.data.Dataset.from_tensor_slices((ids, mask)).batch(batch_size)
    else:
        ids_t, mask_t = tf.constant(ids), tf.constant(mask)
        order = epoch_order(len(ids), batch_size, seed, epochs, first_epoch, multiple)[skip_batches:]
        ds = tf.data.Dataset.from_tensor_slices(order).map(
            lambda rows: (tf.gather(ids_t, rows), tf.gather(mask_t, rows))
        )
    return ds.map(_to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _examples_dataset(blocks: Blocks, batch_size, shuffle, seed, epochs, skip_batches, first_epoch, multiple):
    """Padded examples with labels of their own: batches of similar lengths, each cut to its longest example."""
    lengths = blocks.attention_mask.sum(axis=1)
    sides = {"": blocks} if blocks.rejected is None else {"": blocks, REJECTED: blocks.rejected}
    arrays = {
        prefix + key: tf.constant(getattr(side, key).astype(np.int32))
        for prefix, side in sides.items()
        for key in BATCH_KEYS
    }
    if blocks.rejected is not None:  # a pair's rows are cut to the same length: the longer answer's
        lengths = np.maximum(lengths, blocks.rejected.attention_mask.sum(axis=1))
    extras = {key: tf.constant(value) for key, value in (blocks.extras or {}).items()}
    lengths_t, block = tf.constant(lengths.astype(np.int32)), blocks.input_ids.shape[1]
    if shuffle:
        order = epoch_order(len(lengths), batch_size, seed, epochs, first_epoch, multiple, lengths)[skip_batches:]
        rows = tf.data.Dataset.from_tensor_slices(order)
    else:
        rows = tf.data.Dataset.range(len(lengths)).map(lambda i: tf.cast(i, tf.int32)).batch(batch_size)

    def gather(rows):
        longest = tf.reduce_max(tf.gather(lengths_t, rows))
        cut = tf.minimum(block, (longest + LENGTH_MULTIPLE - 1) // LENGTH_MULTIPLE * LENGTH_MULTIPLE)
        cut_rows = {key: tf.gather(value, rows)[:, :cut] for key, value in arrays.items()}
        return {**cut_rows, **{key: tf.gather(value, rows) for key, value in extras.items()}}

    return rows.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class CausalLMCollator(DataCollatorForLanguageModeling):
    """The recipe's collator without its EOS bug.

    With pad = eos, `DataCollatorForLanguageModeling` masks the label of every
    EOS token, padding or not, so the model never learns to end a document.
    Here labels are masked where the attention mask is 0: padding only.
    """

    def __init__(self, tokenizer):
        super().__init__(tokenizer=tokenizer, mlm=False, return_tensors="tf")

    def tf_call(self, examples):
        batch = super().tf_call(examples)
        batch["labels"] = labels_for(batch["input_ids"], batch["attention_mask"])
        return batch


def recipe_dataset(model, blocks: Blocks, tokenizer, batch_size: int, shuffle: bool):
    ids, mask = _arrays(blocks)
    table = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask})
    batches = model.prepare_tf_dataset(
        table,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=CausalLMCollator(tokenizer),
        drop_remainder=shuffle,
    )
    # prepare_tf_dataset splits the labels off as Keras' y; put them back into
    # the one batch dict so both pipelines yield the same contract.
    return batches.map(
        lambda features, labels: {
            key: tf.cast(value, tf.int32) for key, value in {**features, "labels": labels}.items()
        }
    )


def make_dataset(
    kind: str,
    blocks: Blocks,
    batch_size: int,
    shuffle: bool,
    seed: int,
    model=None,
    tokenizer=None,
    epochs: int = 1,
    skip_batches: int = 0,
    first_epoch: int = 0,
    multiple: int = 1,
):
    if kind == "recipe":
        ds = recipe_dataset(model, blocks, tokenizer, batch_size, shuffle)
        # prepare_tf_dataset reshuffles on every pass: a resumed run skips as many batches, not the same ones.
        return ds.repeat(epochs).skip(skip_batches) if shuffle else ds
    return fast_dataset(blocks, batch_size, shuffle, seed, epochs, skip_batches, first_epoch, multiple)


SHUFFLE_BUFFER = 10_000  # blocks: bounds a stream's memory, 10,000 x 128 tokens = 5 MB


def shuffled(items, buffer: int, rng):
    """A seeded buffer shuffle, memory bounded by `buffer` items: the same seed gives the same order."""
    pool = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        j = int(rng.integers(len(pool)))
        yield pool[j]
        pool[j] = item
    for j in rng.permutation(len(pool)):
        yield pool[j]


def stream_dataset(
    config,
    tokenizer,
    side: str,
    batch_size: int,
    shuffle: bool,
    first_pass: int = 0,
    skip_batches: int = 0,
    pass_lengths: dict | None = None,
    multiple: int = 1,
):
    """Batches packed on the fly from a stream of documents; memory is bounded by the shuffle buffer.

    Each iteration of the dataset (Keras makes one an epoch) is one pass over the stream: the n-th, from 0,
    is pass `first_pass + n`, shuffled by (seed, pass) alone; the first skips `skip_batches` batches, so a
    resumed run starts at the batch it stopped at. Once a pass has been read, `pass_lengths[pass]` holds
    its number of batches: a whole `multiple` of them (the micro-batches of an optimizer step), so that no
    step spans two passes.
    """
    data = config.data
    block = data.block_size
    passes = itertools.count(first_pass)

    def blocks():
        stream_pass = next(passes)
        texts = stream_texts(data, config.train.seed, side)
        counts = {"tokens": 0, "blocks": 0}
        skip = skip_batches * batch_size if stream_pass == first_pass else 0
        with tqdm(desc=f"streaming {side}", unit=" docs", leave=False) as bar:

            def progress(documents, tokens):
                counts["tokens"] += tokens
                bar.update(documents)
                bar.set_postfix(tokens=f"{counts['tokens']:,}", blocks=f"{counts['blocks']:,}", refresh=False)

            produced = stream_blocks(texts, tokenizer, block, data.pack, keep_remainder=not shuffle, progress=progress)
            if shuffle:
                produced = shuffled(produced, SHUFFLE_BUFFER, np.random.default_rng([config.train.seed, stream_pass]))
            for pair in produced:
                counts["blocks"] += 1
                if counts["blocks"] > skip:
                    yield pair
        if pass_lengths is not None:
            pass_lengths[stream_pass] = counts["blocks"] // batch_size // multiple * multiple

    spec = tf.TensorSpec([block], tf.int32)
    ds = tf.data.Dataset.from_generator(blocks, output_signature=(spec, spec))
    ds = ds.batch(batch_size, drop_remainder=shuffle)
    if shuffle and multiple > 1:
        ds = ds.batch(multiple, drop_remainder=True).unbatch()
    return ds.map(_to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
