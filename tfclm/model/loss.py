"""The causal-LM loss, the one that training and evaluation share."""

from tfclm.backend import tf


def token_loss_sums(labels, logits):
    """(sum of token losses, number of tokens) in float32; the model shifts nothing here, so shift."""
    logits = tf.cast(logits[:, :-1], tf.float32)
    labels = labels[:, 1:]
    mask = tf.cast(labels != -100, tf.float32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits)
    return tf.reduce_sum(losses * mask), tf.reduce_sum(mask)
