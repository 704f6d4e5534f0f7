"""tfclm's sampling: top-k then top-p filtering and Gumbel noise from a counter-based hash.

Sampling with top-k runs top-p over the k survivors only: transformers' TF
top-p warper sorts the whole vocabulary at every step, which under XLA on a
CPU costs more than the model itself. The noise comes from (seed, step,
position) through integer arithmetic, so eager and XLA runs draw the same
numbers.
"""

from transformers.generation.tf_logits_process import TFLogitsProcessor

from tfclm.backend import tf


def filter_logits(scores, top_k: int, top_p: float, temperature: float):
    """Temperature, then top-k, then top-p (among the k survivors when top-k is on); the rest become -inf.

    Equals transformers' temperature + top-k + top-p warpers, since top-p after
    top-k only ever sees the k survivors, with a partial sort of k entries
    instead of a full sort of the vocabulary.
    """
    scores = tf.cast(scores, tf.float32) / temperature
    vocab = int(scores.shape[-1])
    per_row = tf.is_tensor(top_p)  # a [rows, 1] tensor: each row its own top_p, 1.0 keeping all
    if top_k <= 0 and not per_row and top_p >= 1.0:
        return scores
    k = min(top_k, vocab) if top_k > 0 else vocab
    values, _ = tf.math.top_k(scores, k=k)  # sorted, descending
    if per_row or top_p < 1.0:
        probs = tf.nn.softmax(values, axis=-1)
        mass_before = tf.math.cumsum(probs, axis=-1, exclusive=True)
        # Keep a token while the mass before it is under top_p; the first always stays.
        kept = tf.logical_or(mass_before < top_p, tf.range(k) == 0)
        if per_row:
            # A row's top_p of 1 keeps all k, even where rounding lets the mass before a token reach 1.
            kept = tf.logical_or(kept, top_p >= 1.0)
        values = tf.where(kept, values, tf.fill(tf.shape(values), float("inf")))
    threshold = tf.reduce_min(values, axis=-1, keepdims=True)
    return tf.where(scores >= threshold, scores, tf.fill(tf.shape(scores), float("-inf")))


_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2**32 for x < 2**32 held in int64, in 16-bit halves so nothing overflows."""
    low, high = tf.bitwise.bitwise_and(x, 0xFFFF), tf.bitwise.right_shift(x, 16)
    return tf.bitwise.bitwise_and(low * c + tf.bitwise.bitwise_and(high * c, 0xFFFF) * 65536, _MASK32)


def _hash32(x):
    """A 32-bit integer mixer (lowbias32): exact integer arithmetic, so XLA and TF's kernels agree bit for bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def counter_uniform(shape, seed, step):
    """Uniforms in (0, 1) from (seed, step, position) alone.

    tf.random's stateless ops give other numbers under XLA than in TF's own
    kernels for the same seed, so eager and compiled sampling would differ.
    """
    seed = tf.cast(seed, tf.int64)
    rows, cols = shape[0], shape[1]
    position = tf.range(tf.cast(rows * cols, tf.int64), dtype=tf.int64)
    key = _hash32(
        tf.bitwise.bitwise_and(seed[0] * 0x9E3779B1 + seed[1] + tf.cast(step, tf.int64) * 0x85EBCA77, _MASK32)
    )
    bits = _hash32(tf.bitwise.bitwise_xor(_hash32(tf.bitwise.bitwise_and(position, _MASK32)), key))
    bits = _hash32(tf.bitwise.bitwise_xor(bits, tf.bitwise.right_shift(position, 32) + key))
    return tf.reshape((tf.cast(bits, tf.float64) + 0.5) / 2.0**32, [rows, cols])


def row_uniform(seeds, step, vocab: int):
    """Uniforms in (0, 1) for each row from its own (seed, stream) pair in `seeds` [rows, 2], the step and the
    token's index: a row draws what it would alone, whichever rows share its batch. A row seeded (s, 0)
    draws what `counter_uniform` gives the first row of a batch seeded s."""
    seeds = tf.cast(seeds, tf.int64)
    position = tf.range(vocab, dtype=tf.int64)[None, :]
    key = _hash32(
        tf.bitwise.bitwise_and(seeds[:, :1] * 0x9E3779B1 + seeds[:, 1:] + tf.cast(step, tf.int64) * 0x85EBCA77, _MASK32)
    )
    bits = _hash32(tf.bitwise.bitwise_xor(_hash32(position), key))
    bits = _hash32(tf.bitwise.bitwise_xor(bits, key))
    return (tf.cast(bits, tf.float64) + 0.5) / 2.0**32


def gumbel(uniform, dtype):
    return -tf.cast(tf.math.log(-tf.math.log(uniform)), dtype)


class SamplingLogitsProcessor(TFLogitsProcessor):
    """Sampling as a logits processor: filter, then add Gumbel noise drawn with a per-step seed.

    The argmax of logits plus Gumbel noise is a draw from their softmax, so
    greedy decoding over these scores samples. transformers' own TF sampling
    passes the same seed to every step, so a seeded run draws the same
    uniform each step and repeats itself ("an an an ..."); here the step's
    noise comes from (seed, tokens generated so far, position) through an
    integer hash: the same seed gives the same text, eager or under XLA (whose
    prompts are padded longer), and steps differ.
    """

    def __init__(self, top_k: int, top_p: float, temperature: float, seed, prompt_length: int = 0, enabled=None):
        self.top_k = top_k
        self.top_p = top_p
        self.temperature = temperature
        self.seed = seed  # int32 [2]
        self.prompt_length = prompt_length
        self.enabled = enabled  # a bool tensor, or None for always: false leaves greedy decoding

    def __call__(self, input_ids, scores, cur_len):
        filtered = filter_logits(scores, self.top_k, self.top_p, self.temperature)
        uniform = counter_uniform(tf.shape(filtered), self.seed, tf.cast(cur_len, tf.int32) - self.prompt_length)
        noise = gumbel(uniform, filtered.dtype)
        if self.enabled is not None:
            # Filtering keeps the likeliest token and scaling keeps the order, so without noise this is greedy.
            noise = noise * tf.cast(self.enabled, filtered.dtype)
        return filtered + noise


class HoldStopsBack(TFLogitsProcessor):
    """min_new_tokens where several tokens end a sample (EOS and a chat's end of turn): transformers' TF
    min-length processor takes one."""

    def __init__(self, stop_ids, min_length: int):
        self.stop_ids = list(stop_ids)
        self.min_length = min_length

    def __call__(self, input_ids, scores, cur_len):
        stops = tf.reduce_max(tf.one_hot(self.stop_ids, int(scores.shape[-1])), axis=0) > 0
        held = tf.logical_and(stops[None, :], cur_len < self.min_length)
        return tf.where(held, tf.fill(tf.shape(scores), tf.constant(float("-inf"), scores.dtype)), scores)
