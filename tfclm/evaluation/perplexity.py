"""Token-weighted evaluation loss and perplexity.

Keras' `evaluate` averages per-batch mean losses, so a short final batch
weighs as much as a full one; and the recipe's `drop_remainder` leaves
tokens out. Here every label that is not -100 counts once: the loss is the
sum of token losses over the count of tokens, computed in float32.
"""

import math
import weakref

from tfclm.backend import tf
from tfclm.model.chunked_loss import chunked_token_loss_sums, head_and_body
from tfclm.model.loss import token_loss_sums


def perplexity(loss: float) -> float:
    """exp(loss), or inf where exp would overflow a float."""
    return math.exp(loss) if loss < 709.0 else math.inf


# One compiled step per model, kept as long as the model lives: a second evaluation (every epoch's, the final
# one, evaluate_loss called again) traces nothing new.
_STEPS = weakref.WeakKeyDictionary()


def sum_and_count(model, chunk_tokens: int = 0):
    """A compiled step: (sum of token losses, tokens scored) of one batch, in float32; with `chunk_tokens`, the
    head's logits exist for that many tokens at a time (`chunked_token_loss_sums`)."""
    steps = _STEPS.setdefault(model, {})
    if chunk_tokens in steps:
        return steps[chunk_tokens]
    spec = tf.TensorSpec([None, None], tf.int32)
    if chunk_tokens:
        body, head = head_and_body(model)

    # One trace for every batch shape: the last batch is usually shorter.
    @tf.function(input_signature=[{"input_ids": spec, "attention_mask": spec, "labels": spec}], autograph=False)
    def step(batch):
        if chunk_tokens:
            hidden = body(batch["input_ids"], batch["attention_mask"], training=False)
            return chunked_token_loss_sums(hidden, batch["labels"], head, chunk_tokens, with_gradients=False)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=False).logits
        return token_loss_sums(batch["labels"], logits)

    steps[chunk_tokens] = step
    return step


def loss_figures(total: float, count: float, n_bytes: float | None = None) -> dict:
    """{"loss", "perplexity", "tokens"} from a sum of token losses (in nats) and its count; with the scored
    tokens' UTF-8 bytes, also "bytes" and "bits_per_byte"."""
    if count == 0:
        figures = {"loss": math.nan, "perplexity": math.nan, "tokens": 0}
    else:
        loss = total / count
        figures = {"loss": loss, "perplexity": perplexity(loss), "tokens": int(count)}
    if n_bytes is not None:
        figures["bytes"] = int(n_bytes)
        figures["bits_per_byte"] = total / math.log(2) / n_bytes if n_bytes else math.nan
    return figures


def evaluate_loss(model, dataset, byte_table=None, chunk_tokens: int = 0) -> dict:
    """{"loss", "perplexity", "tokens"} of `model` over every batch of `dataset`; with `byte_table` (each token
    id's UTF-8 bytes, `strided.token_bytes`), also the bits per byte of the scored tokens."""
    step = sum_and_count(model, chunk_tokens)
    total, count, n_bytes = 0.0, 0.0, 0
    for batch in dataset:
        batch_sum, batch_count = step(batch)
        total += float(batch_sum)
        count += float(batch_count)
        if byte_table is not None:
            labels = batch["labels"].numpy()[:, 1:]  # the model's shift: position 0 is never predicted
            n_bytes += int(byte_table[labels[labels != -100]].sum())
    return loss_figures(total, count, n_bytes if byte_table is not None else None)


def eval_line(figures: dict) -> str:
    """ "eval loss 5.6466, perplexity 283.32, 3.5039 bits per byte"."""
    line = f"eval loss {figures['loss']:.4f}, perplexity {figures['perplexity']:,.2f}"
    return line + (f", {figures['bits_per_byte']:.4f} bits per byte" if "bits_per_byte" in figures else "")
