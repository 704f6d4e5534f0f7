"""The causal-LM loss without the logits tensor: the LM head and cross-entropy, chunk by chunk over tokens.

For distilgpt2 at 16 x 128 tokens the logits are 16 x 128 x 50,257 floats
(412 MB in float32, and as much again for their gradient). Here the model's
body gives the last hidden states, and the head's matmul and the token
cross-entropy run over `chunk_tokens` tokens at a time in a loop. The
gradient of a chunk's loss with respect to its logits is known in closed
form (softmax minus the one-hot target), so each chunk's gradients for the
hidden states and the head's weights are taken in the same pass, and no
chunk's logits outlive its turn of the loop, forward or backward. One
softmax gives both the loss (minus the log of the target's probability) and
its gradient. The loss and the gradients are the plain step's, to float
rounding (bfloat16's, for bfloat16 logits: see `_softmax_dtype`).

The head is found through the model itself, never by family name: a Dense
output layer (GPT-J, Mistral, XGLM: kernel and maybe bias), or the token
embeddings used transposed (GPT-2, OpenAI GPT, OPT, CTRL), plus the bias the
model reports (`get_bias`, CTRL's). The body is the main layer the family
table names (`Family.body`); a family whose head transforms the hidden states
first (the BERT-likes) has none, and is refused.
"""

from tfclm.backend import keras, onednn_enabled, tf
from tfclm.errors import ConfigError
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


def closed_form_head(lm, required: bool):
    """(body, head) for the head in closed form, or (None, None) where the family's head is not a plain
    projection and chunks were not asked for. Even in one chunk it is faster than the model's own head and
    loss: that takes the head's weight gradient batch row by batch row from a 3-D matmul and sums the copies,
    and shifting the logits by slicing copies their gradient once more (fp32 1.18x the recipe on the 2-core CPU)."""
    if not required and getattr(lm, "config", None) is None:  # not a transformers model: its own logits
        return None, None
    if not lm.built:  # the head is found among the built model's weights
        lm.build_in_name_scope()
    try:
        return head_and_body(lm)
    except ConfigError:
        if required:
            raise
        return None, None


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
    """The logits of `states` under a head `weight` already in the states' dtype, in that dtype."""
    logits = tf.matmul(states, weight, transpose_b=transposed)
    for bias in biases:
        logits += tf.cast(bias, logits.dtype)
    return logits


def _softmax_dtype(dtype):
    """Where the softmax over the vocabulary runs. oneDNN's CPU softmax sums in float32 whatever it is given, so
    bfloat16 logits stay bfloat16 there (no float32 copy of the logits, one pass); elsewhere (Eigen's kernels
    without oneDNN, GPUs, float16's narrow range) the logits are cast to float32 first."""
    if dtype == tf.float32:
        return tf.float32
    on_cpu = not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return dtype if dtype == tf.bfloat16 and on_cpu and onednn_enabled() else tf.float32


def _losses_and_gradient(logits, targets):
    """Each token's cross-entropy (float32) and d(loss)/d(logits) = softmax - one-hot (in the softmax's dtype),
    from one softmax: TensorFlow's fused kernel is Eigen's, four times slower than oneDNN's softmax here. A
    token whose probability underflows to zero has its loss taken exactly, from a log-sum-exp of its row."""
    probs = tf.nn.softmax(tf.cast(logits, _softmax_dtype(logits.dtype)))
    index = tf.stack([tf.range(tf.shape(targets)[0]), targets], 1)
    target_probs = tf.cast(tf.gather_nd(probs, index), tf.float32)
    losses = -tf.math.log(target_probs)
    lost = tf.where(target_probs == 0.0)
    rows = tf.cast(tf.gather(logits, lost[:, 0]), tf.float32)
    exact = tf.reduce_logsumexp(rows, 1) - tf.cast(tf.gather_nd(logits, tf.gather(index, lost[:, 0])), tf.float32)
    losses = tf.tensor_scatter_nd_update(losses, lost, exact)
    with tf.control_dependencies([losses]):  # once nothing else reads the probabilities, they become the gradient
        gradient = tf.tensor_scatter_nd_sub(probs, index, tf.ones_like(target_probs, probs.dtype))
    return losses, gradient


def _loss_only(states, targets, weight, transposed, biases):
    low_weight = tf.cast(weight, states.dtype)

    def turn(i, total):
        scored = targets[i] != -100
        logits = _logits(states[i], low_weight, transposed, biases)
        losses, _ = _losses_and_gradient(logits, tf.maximum(targets[i], 0))
        return i + 1, total + tf.reduce_sum(tf.where(scored, losses, 0.0))

    # One turn at a time: no chunk waits for another, so by default up to 10 chunks' logits would live at once.
    done = tf.while_loop(lambda i, _: i < tf.shape(states)[0], turn, (0, tf.constant(0.0)), parallel_iterations=1)
    return done[1]


def _chunk_gradients(chunk, target, low_weight, transposed, biases, head_trains):
    """One chunk's loss sum, d(loss)/d(chunk), and (head trains) the head gradient as (width, vocabulary), in the
    chunk's dtype (the caller sums in float32), and the biases' float32 gradients."""
    scored = target != -100
    losses, grad_logits = _losses_and_gradient(_logits(chunk, low_weight, transposed, biases), tf.maximum(target, 0))
    low = tf.cast(grad_logits, chunk.dtype)
    # Unscored tokens contribute nothing: their rows are zeroed in the chunk's (tokens x width) operands rather
    # than in the (tokens x vocabulary) gradient, which is 65 times larger.
    low_mask = tf.cast(scored, chunk.dtype)[:, None]
    loss = tf.reduce_sum(tf.where(scored, losses, 0.0))
    grad_chunk = low_mask * tf.matmul(low, low_weight, transpose_b=not transposed)
    if not head_trains:
        return loss, grad_chunk, None, []
    # (width, vocabulary) whichever way the head is stored: oneDNN writes that layout faster from two token-major
    # operands.
    grad_weight = tf.matmul(chunk * low_mask, low, transpose_a=True)
    mask = tf.cast(scored, grad_logits.dtype)
    grad_biases = [tf.cast(tf.linalg.matvec(grad_logits, mask, transpose_a=True), tf.float32) for _ in biases]
    return loss, grad_chunk, grad_weight, grad_biases


def chunked_token_loss_sums(
    hidden, labels, head: Head, chunk_tokens=None, with_gradients: bool = True, head_trains: bool = True
):
    """(sum of token losses, number of tokens), as `token_loss_sums` gives from the full logits, `chunk_tokens`
    tokens at a time (None: all in one). Without `with_gradients` (evaluation) no gradient is taken along the
    way; without `head_trains` (a frozen head, as under LoRA) none for the head's weights."""
    transposed = head.transposed
    count = tf.reduce_sum(tf.cast(labels[:, 1:] != -100, tf.float32))
    if not with_gradients:
        states, targets, _ = _chunks(hidden, labels, chunk_tokens or tf.maximum(tf.size(labels[:, 1:]), 1))
        weight, *biases = head.tensors()
        return _loss_only(states, targets, weight, transposed, biases), count

    @tf.custom_gradient
    def loss_sum(hidden, weight, *biases):
        low_weight = tf.cast(weight, hidden.dtype)  # cast once, not once a chunk and again for its gradient
        width = hidden.shape[-1]
        if chunk_tokens is None:  # one chunk: no loop, and no zeros to sum the head's gradient into
            states, targets = tf.reshape(hidden[:, :-1], [-1, width]), tf.reshape(labels[:, 1:], [-1])
            total, grad_states, grad_weight, grad_biases = _chunk_gradients(
                states, targets, low_weight, transposed, biases, head_trains
            )
            grad_weight = None if grad_weight is None else tf.cast(grad_weight, tf.float32)
            padding = 0
        else:
            total, grad_states, grad_weight, grad_biases, padding = _chunk_loop(
                hidden, labels, chunk_tokens, low_weight, transposed, biases, head_trains
            )

        def gradient(upstream):
            flat = tf.reshape(grad_states, [-1, width])
            flat = flat[: tf.shape(flat)[0] - padding]
            # The last position predicts nothing: its gradient is zero.
            grad_hidden = tf.pad(tf.reshape(flat, [tf.shape(hidden)[0], -1, width]), [[0, 0], [0, 1], [0, 0]])
            grad_hidden *= tf.cast(upstream, hidden.dtype)
            if not head_trains:
                return (grad_hidden, None, *(None for _ in biases))
            scale = tf.cast(upstream, tf.float32)
            grad_head = tf.transpose(grad_weight) if transposed else grad_weight
            return (
                grad_hidden,
                tf.cast(grad_head * scale, weight.dtype),
                *(tf.cast(g * scale, b.dtype) for g, b in zip(grad_biases, biases)),
            )

        return total, gradient

    return loss_sum(hidden, *head.tensors()), count


@tf.function(jit_compile=True)
def _accumulate(total, part):
    """total + float32(part) in one pass: as two ops, the float32 copy of a (width x vocabulary) part is written
    and read again. Four distilgpt2 head parts summed in 65-104 ms from zeros with two ops, 35-41 ms from the
    first part this way (2 cores); the bits are the same."""
    return total + tf.cast(part, tf.float32)


def _chunk_loop(hidden, labels, chunk_tokens, low_weight, transposed, biases, head_trains):
    """`_chunk_gradients` over `chunk_tokens` tokens at a time: (loss sum, d(loss)/d(states) stacked by chunk,
    head gradient summed, biases' gradients summed, the padding of the last chunk)."""
    states, targets, padding = _chunks(hidden, labels, chunk_tokens)
    n = tf.shape(states)[0]
    # The first chunk's gradients start the sums (no zeros to add to); a frozen head's are never taken: scalars
    # stand in for them in the loop.
    total, first_states, grad_weight, grad_biases = _chunk_gradients(
        states[0], targets[0], low_weight, transposed, biases, head_trains
    )
    if head_trains:
        grad_weight = tf.cast(grad_weight, tf.float32)
    else:
        grad_weight, grad_biases = tf.zeros(()), [tf.zeros(()) for _ in biases]

    def turn(i, total, grad_states, grad_weight, *grad_biases):
        loss, grad_chunk, chunk_weight, chunk_biases = _chunk_gradients(
            states[i], targets[i], low_weight, transposed, biases, head_trains
        )
        if head_trains:
            grad_weight = _accumulate(grad_weight, chunk_weight)
            grad_biases = [g + c for g, c in zip(grad_biases, chunk_biases)]
        return (i + 1, total + loss, grad_states.write(i, grad_chunk), grad_weight, *grad_biases)

    start = (1, total, tf.TensorArray(hidden.dtype, size=n).write(0, first_states), grad_weight, *grad_biases)
    # As in `_loss_only`: one turn at a time, so one chunk's logits at a time.
    _, total, grad_states, grad_weight, *grad_biases = tf.while_loop(
        lambda i, *_: i < n, turn, start, parallel_iterations=1
    )
    return total, grad_states.stack(), grad_weight, grad_biases, padding
