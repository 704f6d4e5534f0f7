"""The log-probability of each row's scored tokens, summed: what preference losses compare.

`logps_from_logits` takes the full logits where the family's head is not a
plain projection; elsewhere `chunked_sequence_logps` runs the LM head
`chunk_tokens` tokens at a time, as `tfclm.model.chunked_loss` does for the
token loss, so no batch x length x vocabulary tensor exists. Its gradient
cannot be taken in the forward pass (each row's weight, d(loss)/d(logp),
comes from the preference loss after it), so the backward pass runs each
chunk's head again: one more head matmul than the token loss's, and still
one chunk's logits at a time.
"""

from tfclm.backend import tf
from tfclm.model.chunked_loss import _chunks, _logits


def logps_from_logits(labels, logits):
    """(log-probability sums, tokens scored), one per row, in float32, from the model's logits."""
    targets = labels[:, 1:]
    scored = tf.cast(targets != -100, tf.float32)
    token_logps = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(targets, 0), logits=tf.cast(logits[:, :-1], tf.float32)
    )
    return tf.reduce_sum(token_logps * scored, 1), tf.reduce_sum(scored, 1)


def _chunk_logps(states, targets, low_weight, transposed, biases):
    logits = tf.cast(_logits(states, low_weight, transposed, biases), tf.float32)
    logps = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(targets, 0), logits=logits)
    return tf.where(targets != -100, logps, 0.0), logits


def chunked_sequence_logps(hidden, labels, head, chunk_tokens=None, head_trains: bool = True):
    """(log-probability sums, tokens scored) per row from the last hidden states and the `Head`, `chunk_tokens`
    tokens at a time (None: all at once); without `head_trains` no gradient for the head's weights."""
    rows, length, width = tf.shape(hidden)[0], tf.shape(hidden)[1], hidden.shape[-1]
    count = tf.reduce_sum(tf.cast(labels[:, 1:] != -100, tf.float32), 1)
    chunk = chunk_tokens or tf.maximum(rows * (length - 1), 1)
    transposed = head.transposed

    @tf.custom_gradient
    def logps(hidden, weight, *biases):
        low_weight = tf.cast(weight, hidden.dtype)
        states, targets, padding = _chunks(hidden, labels, chunk)
        n = tf.shape(states)[0]

        def turn(i, found):
            return i + 1, found.write(i, _chunk_logps(states[i], targets[i], low_weight, transposed, biases)[0])

        _, found = tf.while_loop(
            lambda i, _: i < n, turn, (0, tf.TensorArray(tf.float32, size=n)), parallel_iterations=1
        )
        flat = tf.reshape(found.stack(), [-1])
        per_row = tf.reduce_sum(tf.reshape(flat[: tf.size(flat) - padding], [rows, length - 1]), 1)

        def gradient(upstream):
            # Each token's weight is its row's d(loss)/d(logp); d(logp)/d(logits) = one-hot - softmax.
            weights = tf.reshape(tf.repeat(tf.cast(upstream, tf.float32), length - 1), [-1])
            weights = tf.reshape(tf.pad(weights, [[0, padding]]), [n, -1])

            def back(i, grad_states, grad_weight, *grad_biases):
                _, logits = _chunk_logps(states[i], targets[i], low_weight, transposed, biases)
                scored = tf.cast(targets[i] != -100, tf.float32) * weights[i]
                # (one-hot - softmax) x weight, without a one-hot tensor the size of the logits
                index = tf.stack([tf.range(tf.shape(logits)[0]), tf.maximum(targets[i], 0)], 1)
                grad_logits = tf.tensor_scatter_nd_add(-tf.nn.softmax(logits) * scored[:, None], index, scored)
                low = tf.cast(grad_logits, states.dtype)
                grad_states = grad_states.write(i, tf.matmul(low, low_weight, transpose_b=not transposed))
                if head_trains:
                    grad_weight += tf.cast(tf.matmul(states[i], low, transpose_a=True), tf.float32)
                    grad_biases = [g + tf.reduce_sum(grad_logits, 0) for g in grad_biases]
                return (i + 1, grad_states, grad_weight, *grad_biases)

            head_shape = [width, tf.shape(low_weight)[0 if transposed else 1]]
            start = (
                0,
                tf.TensorArray(hidden.dtype, size=n),
                tf.zeros(head_shape if head_trains else [], tf.float32),
                *(tf.zeros(tf.shape(b) if head_trains else [], tf.float32) for b in biases),
            )
            _, grad_states, grad_weight, *grad_biases = tf.while_loop(
                lambda i, *_: i < n, back, start, parallel_iterations=1
            )
            flat_states = tf.reshape(grad_states.stack(), [-1, width])
            flat_states = flat_states[: tf.shape(flat_states)[0] - padding]
            grad_hidden = tf.pad(tf.reshape(flat_states, [rows, -1, width]), [[0, 0], [0, 1], [0, 0]])
            if not head_trains:
                return (grad_hidden, None, *(None for _ in biases))
            grad_head = tf.transpose(grad_weight) if transposed else grad_weight
            return (
                grad_hidden,
                tf.cast(grad_head, weight.dtype),
                *(tf.cast(g, b.dtype) for g, b in zip(grad_biases, biases)),
            )

        return per_row, gradient

    return logps(hidden, *head.tensors()), count
