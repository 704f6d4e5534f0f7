"""Keras callbacks for causal-LM training, usable in any `model.fit`.

Each does one job, keeps its constructor arguments as attributes and writes
what it measures into `logs`, in the style of Keras' own callbacks.
"""

import math
import time

from tfclm.backend import keras, tf
from tfclm.errors import first_line
from tfclm.evaluation.perplexity import evaluate_loss, perplexity
from tfclm.generation.generator import Generator
from tfclm.training.flops import flops_per_token
from tfclm.training.steps import StepClock, optimizer_steps


def _lm(model):
    """The transformers model inside tfclm's trainer, or the model itself in a user's own fit."""
    return getattr(model, "lm", model)


class PerplexityCallback(keras.callbacks.Callback):
    """Adds `perplexity` (and `val_perplexity`) = exp(loss), overflow-safe, to each epoch's logs.

    With `eval_data` and `every_n_steps`, it also evaluates the model on
    `eval_data` (batches of the tfclm contract) every N steps, counting every
    token, and puts `eval_loss` and `eval_perplexity` into that step's logs.

    Example:

    >>> import numpy as np, tensorflow as tf, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (8, 16)).astype("int32")
    >>> held_out = tf.data.Dataset.from_tensor_slices(
    ...     {"input_ids": ids[:4], "attention_mask": np.ones_like(ids[:4]), "labels": ids[:4]}).batch(2)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> ppl = tfclm.callbacks.PerplexityCallback(eval_data=held_out, every_n_steps=1)
    >>> history = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=1, verbose=0, callbacks=[ppl])
    >>> round(history.history["perplexity"][0]) == round(float(np.exp(history.history["loss"][0])))
    True
    >>> [step for step, _ in ppl.evaluations], ppl.evaluations[-1][1]["tokens"]
    ([1, 2], 60)
    """

    def __init__(self, eval_data=None, every_n_steps: int | None = None):
        super().__init__()
        self.eval_data = eval_data
        self.every_n_steps = every_n_steps
        self.evaluations = []  # (optimizer step, {"loss", "perplexity", "tokens"})
        self._clock = StepClock()

    def on_train_begin(self, logs=None):
        self._clock.start(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = self._clock.tick(self.model)
        if step and self.eval_data is not None and self.every_n_steps and step % self.every_n_steps == 0:
            result = evaluate_loss(_lm(self.model), self.eval_data)
            self.evaluations.append((step, result))
            if logs is not None:
                logs["eval_loss"], logs["eval_perplexity"] = result["loss"], result["perplexity"]

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for key in ("loss", "val_loss"):
            if key in logs:
                logs[key.replace("loss", "perplexity")] = perplexity(float(logs[key]))


class ThroughputCallback(keras.callbacks.Callback):
    """Counts training tokens and the seconds spent in training batches; puts `tokens_per_second` into logs.

    `tokens_per_step` is the global batch size times the sequence length.
    With `peak_flops` (the hardware's peak, FLOP/s) it also logs `mfu`, the
    model FLOPs utilisation: FLOPs per token x tokens/s over the peak, with
    FLOPs per token = 6N + 12 L H Q T (`tfclm.training.flops`: N without the
    position embeddings; the attention term needs `sequence_length`).

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (8, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> throughput = tfclm.callbacks.ThroughputCallback(tokens_per_step=4 * 16, peak_flops=200e9, sequence_length=16)
    >>> logs = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, verbose=0, callbacks=[throughput]).history
    >>> throughput.tokens, throughput.steps, logs["tokens_per_second"][0] > 0, 0 < logs["mfu"][0] < 1
    (128, 2, True, True)
    """

    def __init__(self, tokens_per_step: int, peak_flops: float | None = None, sequence_length: int | None = None):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.peak_flops = peak_flops
        self.sequence_length = sequence_length
        self.steps = 0
        self.tokens = 0
        self.seconds = 0.0
        self.parameters = None
        self.flops_per_token = None
        self._started = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mfu(self) -> float | None:
        if not self.peak_flops or not self.flops_per_token:
            return None
        return self.flops_per_token * self.tokens_per_second / self.peak_flops

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def _log(self, logs):
        if logs is not None:
            logs["tokens_per_second"] = self.tokens_per_second
            if self.mfu is not None:
                logs["mfu"] = self.mfu

    def on_train_batch_end(self, batch, logs=None):
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None
        self.steps += 1
        self.tokens += self.tokens_per_step
        if self.parameters is None:  # a subclassed model has weights only after its first step
            lm = _lm(self.model)
            self.parameters = int(sum(v.shape.num_elements() for v in lm.trainable_variables))
            self.flops_per_token = flops_per_token(lm, self.sequence_length)
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)


class StepHistory(keras.callbacks.Callback):
    """Keeps the logs of every `every_n_steps`-th training step (Keras' History keeps epochs only).

    Keras reports `loss` at a step as the running mean since the epoch began;
    here `loss` is the mean over the last `every_n_steps` steps alone (each
    batch's own loss under tfclm's trainer, else taken out of the running mean).

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> steps = tfclm.callbacks.StepHistory(every_n_steps=2)
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=2, verbose=0, callbacks=[steps])
    >>> steps.steps, sorted(steps.history), len(steps.history["loss"])
    ([2, 4, 6, 8], ['loss'], 4)
    """

    def __init__(self, every_n_steps: int = 1):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.steps, self.history = [], {}
        self._clock, self._previous_mean, self._window = StepClock(), 0.0, []

    def on_train_begin(self, logs=None):
        self._clock.start(self.model)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        own = getattr(self.model, "last_batch_loss", None)  # tfclm's trainer keeps it; a skipped step stays out
        if "loss" in logs and own is not None:
            loss = float(own.numpy())
            self._window += [loss] if math.isfinite(loss) else []
        elif "loss" in logs:
            mean = float(logs["loss"])
            # The running epoch mean after batch b (0-based) is the sum of b + 1 losses over b + 1.
            self._window.append((batch + 1) * mean - batch * (self._previous_mean if batch else 0.0))
            self._previous_mean = mean
        step = self._clock.tick(self.model)
        if step is None or step % self.every_n_steps:
            return
        self.steps.append(step)
        for key, value in logs.items():
            if key != "loss" and (isinstance(value, (int, float)) or hasattr(value, "numpy")):
                self.history.setdefault(key, []).append(float(value))
        if self._window:
            self.history.setdefault("loss", []).append(sum(self._window) / len(self._window))
        self._window = []


class SampleTextCallback(keras.callbacks.Callback):
    """Samples text from fixed prompts every `every_n_epochs` epochs (or `every_n_steps` steps) and prints it.

    With `log_dir` the samples also go to TensorBoard as text (tag `samples`).
    Decoding options are those of `tfclm.generate` (max_new_tokens, do_sample,
    top_k, top_p, temperature, seed, ...); a fixed seed makes the samples
    comparable from one epoch to the next. `samples` keeps (step, texts).

    Example:

    >>> import numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> from tfclm.data.tokenizer import train_bpe
    >>> tokenizer = train_bpe(["the list type holds items in order"] * 8, 300)
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=32))
    >>> ids = np.random.default_rng(0).integers(0, len(tokenizer), (8, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> sampler = tfclm.callbacks.SampleTextCallback(
    ...     tokenizer, ["the list"], max_new_tokens=4, seed=0, printer=lambda line: None)
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=2, verbose=0, callbacks=[sampler])
    >>> [(step, len(texts), texts[0].startswith("the list")) for step, texts in sampler.samples]
    [(2, 1, True), (4, 1, True)]
    """

    def __init__(
        self,
        tokenizer,
        prompts,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_dir: str | None = None,
        printer=print,
        **generate_options,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.every_n_epochs = None if every_n_steps else every_n_epochs
        self.every_n_steps = every_n_steps
        self.log_dir = log_dir
        self.printer = printer
        self.generate_options = {"max_new_tokens": 50, **generate_options}
        self.samples = []
        self.failure = None  # why sampling failed, once it has: a report never stops training
        self._clock = StepClock()
        self._writer = None

    def _sample_as_a_report(self):
        if self.failure is not None:
            return
        try:
            self.sample()
        except Exception as exc:  # a model that cannot generate still trains; the run's end says so too
            self.failure = first_line(exc, 200)
            self.printer(f"sample: failed ({self.failure}); no more samples in this run, and training goes on")

    def sample(self):
        texts = [
            s.text
            for s in Generator(_lm(self.model), self.tokenizer, xla=False, log=lambda line: None)(
                self.prompts, **self.generate_options
            )
        ]
        step = optimizer_steps(self.model)
        self.samples.append((step, texts))
        for text in texts:
            self.printer(f"sample at step {step}: {text!r}")
        if self.log_dir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                tf.summary.text("samples", "\n\n".join(f"    {t}" for t in texts), step=step)
            self._writer.flush()
        return texts

    def on_train_begin(self, logs=None):
        self._clock.start(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = self._clock.tick(self.model)
        if step and self.every_n_steps and step % self.every_n_steps == 0:
            self._sample_as_a_report()

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self._sample_as_a_report()


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
        self.steps = 0  # optimizer steps taken in this fit
        self._start = 0

    def on_train_begin(self, logs=None):
        self._start = optimizer_steps(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.steps = optimizer_steps(self.model) - self._start
        if self.steps >= self.max_steps:
            self.model.stop_training = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training when the loss becomes NaN or infinite; `stopped_at` is the optimizer step, `value` the loss.

    Unlike Keras' TerminateOnNaN it keeps what it saw, so the caller can name
    the likely causes, and a checkpoint callback after it saves nothing more.
    Under tfclm's trainer, which skips every update whose loss or gradients
    are not finite, it stops after `patience` skipped steps in a row (None:
    never, as under fp16, whose loss scaling skips steps by design).

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

    def __init__(self, patience: int | None = 1):
        super().__init__()
        self.patience = patience
        self.stopped_at = None
        self.value = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        streak = getattr(self.model, "nonfinite_streak", None)
        if streak is not None:  # tfclm's trainer: the update was skipped, the weights are untouched
            if self.patience is not None and int(streak.numpy()) >= self.patience:
                self.stopped_at, self.value = optimizer_steps(self.model), float("nan")
                self.model.stop_training = True
        elif loss is not None and not math.isfinite(float(loss)):
            self.stopped_at, self.value = optimizer_steps(self.model), float(loss)
            self.model.stop_training = True
