"""Dropout masks that a resumed run draws again: each a pure function of the step, never of the process.

Keras' `Dropout` draws from random state that lives in the process (an op's
seed counter, a generator whose state is not checkpointed), so a run resumed
from a checkpoint draws other masks from there on than the uninterrupted run
did, and ends on other weights; and a block recomputed in the backward pass
would draw other masks than its forward pass did. `seed_dropout` swaps the
`call` of every `Dropout` layer in a model for stateless dropout whose seed is
the train step's seed (run seed, optimizer step, micro-batch, replica) folded
with the call's place in the step (the n-th dropout the step calls: OPT and
XGLM call one layer several times a block). Outside `seeded(...)` (evaluation,
generation, a caller's own loop) the layers run Keras' own dropout.

>>> from tfclm.backend import keras, tf
>>> seed = step_seed(7, step=3, micro_batch=0)
>>> layer = keras.layers.Dropout(0.5)
>>> _ = seed_dropout_layers([layer])
>>> x = tf.ones([2, 8])
>>> with seeded(seed):
...     first = layer(x, training=True)
>>> with seeded(seed):
...     again = layer(x, training=True)
>>> bool(tf.reduce_all(first == again)), sorted(set(first.numpy().ravel().tolist())) == [0.0, 2.0]
(True, True)
"""

import contextlib
import threading

from tfclm.backend import keras, tf

_SEEDED = "_tfclm_seeded_dropout"


class _Draws(threading.local):
    seed = None  # the step's seed, an int64 [2] tensor, while a train step is traced
    count = 0  # dropout calls so far in this step


_draws = _Draws()


def step_seed(seed: int, step, micro_batch, replica=0):
    """The seed of one micro-batch's masks: `seed` (the run's, 0 to 2**32 - 1) folded with the optimizer step,
    the micro-batch inside it and the replica (scalars or scalar tensors)."""
    folded = tf.constant([seed, 0], tf.int64)
    for data in (step, micro_batch, replica):
        folded = tf.random.experimental.stateless_fold_in(folded, tf.cast(data, tf.int64))
    return folded


@contextlib.contextmanager
def seeded(seed):
    """Seeded layers called inside draw their masks from `seed` (a `step_seed`), in call order."""
    before = (_draws.seed, _draws.count)
    _draws.seed, _draws.count = seed, 0
    try:
        yield
    finally:
        _draws.seed, _draws.count = before


def position() -> int:
    """How many seeded dropouts this step has called: a recomputed block `rewind`s to it to draw the same masks."""
    return _draws.count


def rewind(count: int) -> None:
    _draws.count = count


def seed_dropout(lm) -> int:
    """Seed every Dropout layer of `lm` (once); returns how many layers drop out."""
    return seed_dropout_layers(lm._flatten_layers(include_self=False))


def seed_dropout_layers(layers) -> int:
    dropping = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    for layer in dropping:
        if not getattr(layer, _SEEDED, False):
            layer.call = _seeded_call(layer, layer.call)
            setattr(layer, _SEEDED, True)
    return sum(1 for layer in dropping if not (isinstance(layer.rate, (int, float)) and layer.rate == 0))


def _seeded_call(layer, keras_call):
    def call(inputs, training=None):
        seed = _draws.seed
        if seed is None:
            return keras_call(inputs, training=training)
        number = _draws.count
        _draws.count += 1
        if isinstance(layer.rate, (int, float)) and layer.rate == 0:
            return tf.identity(inputs)
        if training is None:
            training = keras.backend.learning_phase()

        def dropped():
            return tf.nn.experimental.stateless_dropout(
                inputs,
                rate=layer.rate,
                seed=tf.random.experimental.stateless_fold_in(seed, number),
                noise_shape=layer._get_noise_shape(inputs),
            )

        return tf.__internal__.smart_cond.smart_cond(training, dropped, lambda: tf.identity(inputs))

    return call
