"""Keras callbacks for causal-LM training, usable in any `model.fit`.

Each does one job, keeps its constructor arguments as attributes and writes
what it measures into `logs`, in the style of Keras' own callbacks.
"""
import math
import time

from tfclm.backend import load
from tfclm.evaluate import perplexity

tf, keras = load()


class PerplexityCallback(keras.callbacks.Callback):
    """Adds `perplexity` (and `val_perplexity`) = exp(loss) to each epoch's logs.

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (8, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> history = model.fit({"input_ids": ids, "labels": ids}, epochs=1, verbose=0,
    ...                     callbacks=[tfclm.callbacks.PerplexityCallback()])
    >>> round(history.history["perplexity"][0]) == round(float(np.exp(history.history["loss"][0])))
    True
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for key in ("loss", "val_loss"):
            if key in logs:
                logs[key.replace("loss", "perplexity")] = perplexity(float(logs[key]))


class ThroughputCallback(keras.callbacks.Callback):
    """Counts training tokens and the seconds spent in training batches; puts `tokens_per_second` into logs.

    `tokens_per_step` is the global batch size times the sequence length.

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (8, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> throughput = tfclm.callbacks.ThroughputCallback(tokens_per_step=4 * 16)
    >>> history = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=1, verbose=0, callbacks=[throughput])
    >>> throughput.tokens, throughput.steps, history.history["tokens_per_second"][0] > 0
    (128, 2, True)
    """

    def __init__(self, tokens_per_step: int):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.steps = 0
        self.tokens = 0
        self.seconds = 0.0
        self._started = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None
        self.steps += 1
        self.tokens += self.tokens_per_step
        if logs is not None:
            logs["tokens_per_second"] = self.tokens_per_second

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["tokens_per_second"] = self.tokens_per_second


class StopAfterSteps(keras.callbacks.Callback):
    """Stops training after `max_steps` optimizer steps, mid-epoch if need be.

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (32, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> stop = tfclm.callbacks.StopAfterSteps(max_steps=3)
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=5, verbose=0, callbacks=[stop])
    >>> stop.steps
    3
    """

    def __init__(self, max_steps: int):
        super().__init__()
        self.max_steps = max_steps
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.max_steps:
            self.model.stop_training = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training when the loss becomes NaN or infinite; `stopped_at` is the batch, `value` the loss.

    Unlike Keras' TerminateOnNaN it keeps what it saw, so the caller can name
    the likely causes, and a checkpoint callback after it saves nothing more.

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.legacy.SGD(1e30))  # a learning rate that must blow up
    >>> guard = tfclm.callbacks.StopOnNonFiniteLoss()
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=2, epochs=3, verbose=0, callbacks=[guard])
    >>> guard.stopped_at is not None and not np.isfinite(guard.value)
    True
    """

    def __init__(self):
        super().__init__()
        self.stopped_at = None
        self.value = None
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stopped_at, self.value = self._batches, float(loss)
            self.model.stop_training = True


from tfclm.hub import PushToHubCallback  # noqa: E402,F401  - a callback too; it lives with the Hub code
