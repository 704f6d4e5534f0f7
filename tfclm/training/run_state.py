"""One explicit run state, saved with every checkpoint: where the run is, and what must not change.

`checkpoints/ckpt-N.json` beside TensorFlow's `ckpt-N` files holds the
optimizer step, the epoch in progress and the micro-batches of it already
trained on (an epoch is a pass over the training blocks, or over the
stream), the learning-rate schedule's segments and the settings a resumed
run must share. It is written before the checkpoint it belongs to, so a
checkpoint listed in TensorFlow's state file always has one. A resume reads
it; nothing about the position is recomputed from Keras' counters. It also
keeps what the run has logged so far, so a run resumed at any step, even
its last, reports and plots the whole run.
"""

import dataclasses
import json
import os

from tfclm import config as config_lib
from tfclm.backend import keras, tf
from tfclm.files import atomic_write_json

# Sections whose change makes an old checkpoint meaningless for the new run.
RUN_SECTIONS = ("data", "tokenizer", "model", "train")
# These only move the finish line, say how often to save or what MFU is taken against: a longer run may resume a
# shorter one.
MAY_CHANGE = {
    "train.max_steps",
    "train.epochs",
    "train.checkpoint_steps",
    "train.max_nonfinite_steps",
    "train.peak_tflops",
}


def settings_of(config: dict) -> dict:
    """The flattened settings (`train.batch_size`: 16, ...) that a resumed run must share."""
    flat = config_lib.flatten({k: config.get(k) for k in RUN_SECTIONS})
    return {key: value for key, value in flat.items() if key not in MAY_CHANGE}


def changed_keys(saved: dict, current: dict) -> list[str]:
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


@dataclasses.dataclass
class RunState:
    step: int  # optimizer steps taken
    epoch: int  # the epoch in progress, from 0
    batches_in_epoch: int  # micro-batches of that epoch already trained on
    total_steps: int  # where the schedule ends
    schedule: list  # the learning-rate schedule's segments (tfclm.training.schedule)
    settings: dict  # settings_of(the run's config)
    # What the run has logged so far, so that a resumed run reports (and plots) the whole of it.
    history: dict = dataclasses.field(default_factory=dict)  # per epoch, as Keras' History keeps it
    step_history: dict = dataclasses.field(default_factory=dict)  # {"steps": [...], key: [...]} (StepHistory)
    before: dict | None = None  # the evaluation before training
    trackers: dict = dataclasses.field(default_factory=dict)  # {"mlflow": run id, ...}: a resume continues them

    @staticmethod
    def path(checkpoint_dir: str, step: int) -> str:
        return os.path.join(checkpoint_dir, f"ckpt-{step}.json")

    def write(self, checkpoint_dir: str) -> None:
        atomic_write_json(self.path(checkpoint_dir, self.step), dataclasses.asdict(self))

    @classmethod
    def read(cls, checkpoint_dir: str, step: int) -> "RunState | None":
        try:
            with open(cls.path(checkpoint_dir, step), encoding="utf-8") as handle:
                return cls(**json.load(handle))
        except (OSError, ValueError, TypeError):
            return None


class Position(keras.callbacks.Callback):
    """Where training is in the data: the epoch in progress and the micro-batches of it trained on.

    `epoch_length(epoch)` gives an epoch's micro-batches once known (a stream's
    only when its pass has been read); an epoch ends when that many have been
    trained on, not when Keras ends an epoch that stopped early.
    """

    def __init__(self, epoch: int, batches: int, epoch_length):
        super().__init__()
        self.epoch, self.batches = epoch, batches
        self.epoch_length = epoch_length

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.batches and self.batches == self.epoch_length(self.epoch):
            self.epoch, self.batches = self.epoch + 1, 0


def agree_on_step(strategy, step: int) -> int:
    """The chief's checkpoint step (-1: none), on every worker: a collective that no worker passes before the
    chief has decided (and, with --overwrite, cleared), so no worker reads checkpoints that are about to go."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return step

    def offer():
        # Global replica 0 lives on the chief: only its offer counts, so the sum is the chief's step + 1.
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, tf.constant(step + 1, tf.int64), tf.constant(0, tf.int64))

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(offer), axis=None)
    return int(total.numpy()) - 1
