"""Token-weighted evaluation loss and perplexity.

Keras' `evaluate` averages per-batch mean losses, so a short final batch
weighs as much as a full one; and the recipe's `drop_remainder` leaves
tokens out. Here every label that is not -100 counts once: the loss is the
sum of token losses over the count of tokens, computed in float32.
"""

import math

from tfclm.backend import tf
from tfclm.model.loss import token_loss_sums


def perplexity(loss: float) -> float:
    """exp(loss), or inf where exp would overflow a float."""
    return math.exp(loss) if loss < 709.0 else math.inf


def _sum_and_count(model):
    spec = tf.TensorSpec([None, None], tf.int32)

    # One trace for every batch shape: the last batch is usually shorter.
    @tf.function(input_signature=[{"input_ids": spec, "attention_mask": spec, "labels": spec}])
    def step(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=False).logits
        return token_loss_sums(batch["labels"], logits)

    return step


def evaluate_loss(model, dataset) -> dict:
    """{"loss", "perplexity", "tokens"} of `model` over every batch of `dataset`."""
    step = _sum_and_count(model)
    total, count = 0.0, 0.0
    for batch in dataset:
        batch_sum, batch_count = step(batch)
        total += float(batch_sum)
        count += float(batch_count)
    if count == 0:
        return {"loss": math.nan, "perplexity": math.nan, "tokens": 0}
    loss = total / count
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": int(count)}
