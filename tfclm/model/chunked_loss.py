"""The causal-LM loss without the logits tensor: the LM head and cross-entropy, chunk by chunk over tokens.

For distilgpt2 at 16 x 128 tokens the logits are 16 x 128 x 50,257 floats
(412 MB in float32, and as much again for their gradient). Here the model's
body gives the last hidden states, and the head's matmul and the token
cross-entropy run over `chunk_tokens` tokens at a time in a loop. The
gradient of a chunk's loss with respect to its logits is known in closed
form (softmax minus the one-hot target), so each chunk's gradients for the
hidden states and the head's weights are taken in the same pass, and no
chunk's logits outlive its turn of the loop, forward or backward. The loss
and the gradients are the plain step's, to float rounding.

The head is found through the model itself, never by family name: a Dense
output layer (GPT-J, Mistral, XGLM: kernel and maybe bias), or the token
embeddings used transposed (GPT-2, OpenAI GPT, OPT, CTRL), plus the bias the
model reports (`get_bias`, CTRL's). The body is the main layer the family
table names (`Family.body`); a family whose head transforms the hidden states
first (the BERT-likes) has none, and is refused.
"""

from tfclm.backend import keras, tf
from tfclm.model.families import check


def _bias(lm):
    found = lm.get_bias() if hasattr(lm, "get_bias") else None
    if not found:
        return None
    (bias,) = found.values()
    return bias


class Head:
    """The LM head as tensors: logits = hidden @ weight (+ bias), where `weight` is (width, vocabulary), or
    (vocabulary, width) used transposed for a head tied to the token embeddings."""

    def __init__(self, weight, transposed: bool, biases):
        self.weight, self.transposed, self.biases = weight, transposed, [b for b in biases if b is not None]

    def tensors(self) -> list:
        """The weights read now: the loss differentiates these tensors, and the tape takes it to the variables."""
        return [tf.convert_to_tensor(self.weight), *(tf.reshape(b, [-1]) for b in self.biases)]


def head_and_body(lm):
    """(body, head): body(input_ids, attention_mask, training) -> hidden states; the `Head` over them."""
    row = check(lm.config.model_type, "model", chunked_loss=True, trust_remote_code=True)
    main = getattr(lm, row.body)
    output = lm.get_output_embeddings()
    if isinstance(output, keras.layers.Dense):
        head = Head(output.kernel, False, [output.bias, _bias(lm)])
    else:
        head = Head(output.weights[0], True, [_bias(lm)])  # (vocabulary, width): the tied head

    def body(input_ids, attention_mask, training):
        return main(input_ids=input_ids, attention_mask=attention_mask, training=training)[0]

    return body, head


def _chunks(hidden, labels, chunk_tokens: int):
    """Hidden states [chunks, chunk_tokens, width] and their targets, the last chunk padded with -100."""
    width = hidden.shape[-1]
    states = tf.reshape(hidden[:, :-1], [-1, width])
    targets = tf.reshape(labels[:, 1:], [-1])
    padding = tf.math.floormod(-tf.shape(targets)[0], chunk_tokens)
    states = tf.reshape(tf.pad(states, [[0, padding], [0, 0]]), [-1, chunk_tokens, width])
    targets = tf.reshape(tf.pad(targets, [[0, padding]], constant_values=-100), [-1, chunk_tokens])
    return states, targets, padding


def _logits(states, weight, transposed, biases):
    logits = tf.matmul(states, tf.cast(weight, states.dtype), transpose_b=transposed)
    for bias in biases:
        logits += tf.cast(bias, logits.dtype)
    return tf.cast(logits, tf.float32)


def _loss_only(states, targets, weight, transposed, biases):
    def turn(i, total):
        mask = tf.cast(targets[i] != -100, tf.float32)
        logits = _logits(states[i], weight, transposed, biases)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(targets[i], 0), logits=logits)
        return i + 1, total + tf.reduce_sum(losses * mask)

    return tf.while_loop(lambda i, _: i < tf.shape(states)[0], turn, (0, tf.constant(0.0)))[1]


def chunked_token_loss_sums(
    hidden, labels, head: Head, chunk_tokens, with_gradients: bool = True, head_trains: bool = True
):
    """(sum of token losses, number of tokens), as `token_loss_sums` gives from the full logits. Without
    `with_gradients` (evaluation) no gradient is taken along the way; without `head_trains` (a frozen head, as
    under LoRA) none for the head's weights."""
    transposed = head.transposed
    count = tf.reduce_sum(tf.cast(labels[:, 1:] != -100, tf.float32))
    if not with_gradients:
        states, targets, _ = _chunks(hidden, labels, chunk_tokens)
        weight, *biases = head.tensors()
        return _loss_only(states, targets, weight, transposed, biases), count

    @tf.custom_gradient
    def loss_sum(hidden, weight, *biases):
        states, targets, padding = _chunks(hidden, labels, chunk_tokens)
        n = tf.shape(states)[0]
        grad_states = tf.TensorArray(hidden.dtype, size=n)
        # A frozen head's gradients are never taken: scalars stand in for them in the loop.
        grad_weight = tf.zeros(weight.shape if head_trains else (), tf.float32)
        grad_biases = [tf.zeros(b.shape if head_trains else (), tf.float32) for b in biases]

        def turn(i, total, grad_states, grad_weight, *grad_biases):
            chunk, target = states[i], targets[i]
            mask = tf.cast(target != -100, tf.float32)
            logits = _logits(chunk, weight, transposed, biases)
            # The kernel gives d(loss)/d(logits) = softmax - one-hot beside the loss, from the one softmax it
            # computes: no second pass over the chunk's logits.
            losses, grad_logits = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
                features=logits, labels=tf.maximum(target, 0)
            )
            grad_logits = grad_logits * mask[:, None]  # for the scored tokens only
            low = tf.cast(grad_logits, chunk.dtype)
            grad_chunk = tf.matmul(low, tf.cast(weight, chunk.dtype), transpose_b=not transposed)
            if head_trains:
                pair = (low, chunk) if transposed else (chunk, low)
                outer = tf.matmul(*pair, transpose_a=True)
                grad_weight += tf.cast(outer, tf.float32)
                grad_biases = [g + tf.reduce_sum(grad_logits, 0) for g in grad_biases]
            return (i + 1, total + tf.reduce_sum(losses * mask), grad_states.write(i, grad_chunk), grad_weight,
                    *grad_biases)  # fmt: skip

        _, total, grad_states, grad_weight, *grad_biases = tf.while_loop(
            lambda i, *_: i < n, turn, (0, tf.constant(0.0), grad_states, grad_weight, *grad_biases)
        )

        def gradient(upstream):
            width = hidden.shape[-1]
            flat = tf.reshape(grad_states.stack(), [-1, width])
            flat = flat[: tf.shape(flat)[0] - padding]
            # The last position predicts nothing: its gradient is zero.
            grad_hidden = tf.pad(tf.reshape(flat, [tf.shape(hidden)[0], -1, width]), [[0, 0], [0, 1], [0, 0]])
            scale = tf.cast(upstream, tf.float32)
            if not head_trains:
                return (grad_hidden * tf.cast(upstream, hidden.dtype), None, *(None for _ in biases))
            return (
                grad_hidden * tf.cast(upstream, hidden.dtype),
                tf.cast(grad_weight * scale, weight.dtype),
                *(tf.cast(g * scale, b.dtype) for g, b in zip(grad_biases, biases)),
            )

        return total, gradient

    return loss_sum(hidden, *head.tensors()), count
