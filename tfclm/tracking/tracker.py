"""What every tracker callback shares: the points it sends, when it sends them, and what happens when it fails."""

import logging
import os
import time

from tfclm.backend import keras
from tfclm.errors import first_line
from tfclm.training.callbacks import StepHistory
from tfclm.training.steps import optimizer_steps

logger = logging.getLogger(__name__)


class TrackerCallback(keras.callbacks.Callback):
    """Sends a run's metrics to an experiment tracker, by optimizer step.

    Step metrics (the loss over the last `every_n_steps` steps, the learning
    rate, tokens/s, ...) go every `every_n_steps` optimizer steps; epoch
    metrics (`epoch_loss`, `epoch_val_loss`, `epoch_val_perplexity`, ...) at
    each epoch's end, at its optimizer step. With `hold`, points wait until
    `flush(step)` sends those up to `step`: tfclm's fit flushes just before
    each checkpoint is written. A run that continues a tracker run (`run_id`)
    first asks the tracker for the last step of each metric it holds and
    sends nothing at or before it: a run killed between a flush and its
    checkpoint repeats those steps after the resume, and the tracker gets
    them once.

    A tracker that fails (a server down from the start or gone mid-run) is
    reported once, in `failure`, and left behind: training goes on. A
    subclass implements `start`, `send`, `finish_run` and `last_steps`, and
    sets `run_id`.
    """

    name = "tracker"

    def __init__(self, every_n_steps: int = 10, hold: bool = False, run_id: str | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.hold = hold
        self.run_id = run_id  # given: continue that run (a resumed fit); else set by start()
        self.failure = None
        self.pending = []  # [(step, {metric: value})], oldest first
        self.sent = {}  # metric (or "*": every metric) -> the last step the continued tracker run holds
        self._steps = StepHistory(every_n_steps)
        self._started = False

    # What a tracker implements.
    def start(self) -> None:
        raise NotImplementedError

    def send(self, points: list) -> None:
        raise NotImplementedError

    def finish_run(self, results: dict | None, files: list[str], texts: dict, model_dir: str | None) -> None:
        raise NotImplementedError

    def last_steps(self) -> dict:
        """{metric: its last step} in the tracker run being continued."""
        raise NotImplementedError

    # Keras' hooks.
    def set_model(self, model):
        super().set_model(model)
        self._steps.set_model(model)

    def on_train_begin(self, logs=None):
        self._steps.on_train_begin(logs)
        if not self._started:
            self._start()

    def on_train_batch_end(self, batch, logs=None):
        seen = len(self._steps.steps)
        self._steps.on_train_batch_end(batch, logs)
        if len(self._steps.steps) > seen:
            step = self._steps.steps[-1]
            self._record(step, {key: values[-1] for key, values in self._steps.history.items()})

    def on_epoch_end(self, epoch, logs=None):
        numbers = {f"epoch_{k}": float(v) for k, v in (logs or {}).items() if _is_number(v)}
        self._record(optimizer_steps(self.model), numbers)

    def on_train_end(self, logs=None):
        if not self.hold:
            self.flush()

    # The run's side.
    def flush(self, upto: int | None = None) -> None:
        """Send the points of steps up to `upto` (all, when None)."""
        ready, waiting = [], []
        for step, values in self.pending:
            (ready if upto is None or step <= upto else waiting).append((step, values))
        self.pending = waiting
        fresh = []
        for step, values in ready:
            new = {key: value for key, value in values.items() if step > self._held(key)}
            if new:
                fresh.append((step, new))
        if fresh:
            self._guard(self.send, fresh)

    def _held(self, metric: str) -> int:
        """The last step of `metric` that the continued tracker run holds already: nothing goes twice."""
        return self.sent.get(metric, self.sent.get("*", -1))

    def finish(
        self,
        results: dict | None = None,
        files: list[str] = (),
        texts: dict | None = None,
        model_dir: str | None = None,
    ) -> None:
        """At the run's end: what is left, the results as summary values, `files` and `texts` ({name: text},
        such as the model card) as artifacts, and the files of `model_dir` (the saved model)."""
        if not self._started:
            self._start()
        self.flush()
        self._guard(self.finish_run, results, list(files), dict(texts or {}), model_dir)

    def _start(self) -> None:
        self._started = True
        continued = self.run_id is not None
        self._guard(self.start)
        if continued and self.failure is None:
            self._guard(lambda: self.sent.update(self.last_steps()))

    def _record(self, step: int, metrics: dict) -> None:
        if metrics:
            self.pending.append((step, metrics))
        if not self.hold:
            self.flush()

    def _guard(self, call, *args) -> None:
        if self.failure is not None:
            return
        try:
            call(*args)
        except Exception as exc:  # a tracker's failure is a report's, never the run's
            self.failure = f"{self.name}: {first_line(exc, 200)}"
            self.pending = []
            logger.warning(f"{self.failure}; nothing more is sent to {self.name} in this run, and training goes on")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "numpy") and getattr(value, "shape", None) == ())


# The figures of results.json a tracker shows as the run's outcome.
FINAL = (
    "train_loss", "eval_loss", "perplexity", "bits_per_byte", "eval_loss_before", "perplexity_before",
    "train_tokens", "tokens_per_second", "train_seconds",
)  # fmt: skip


def final_metrics(results: dict) -> dict:
    """The run's end figures: results.json's headline numbers, and a preference run's validation pairs'."""
    found = {key: float(results[key]) for key in FINAL if results.get(key) is not None}
    found.update({f"preference/{key}": float(value) for key, value in (results.get("preference") or {}).items()})
    return found


def model_files(model_dir: str | None) -> list[str]:
    """The saved model's files in an output dir: not its checkpoints, cache, logs or trackers' own files."""
    if model_dir is None:
        return []
    names = (n for n in sorted(os.listdir(model_dir)) if not n.startswith(".") and n != "mlflow.db")
    return [p for p in (os.path.join(model_dir, n) for n in names) if os.path.isfile(p)]


def now_ms() -> int:
    return int(time.time() * 1000)
