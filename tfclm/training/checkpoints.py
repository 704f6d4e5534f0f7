"""Resumable checkpoints: weights, optimizer state and step, in OUTPUT_DIR/checkpoints.

TensorFlow's CheckpointManager writes a checkpoint's files first and then
renames its index into place, so a run killed during a save still points at
the previous, complete checkpoint. A rerun of the same command restores the
latest one and goes on from its step; a finished run is not retrained.
"""

import os
import shutil

import yaml

from tfclm.backend import keras, tf
from tfclm.config import CONFIG_FILENAME
from tfclm.errors import ConfigError

DIRNAME = "checkpoints"
# Sections whose change makes an old checkpoint meaningless for the new run.
RUN_SECTIONS = ("data", "tokenizer", "model", "train")


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, child in value.items():
            _flat(f"{prefix}.{key}" if prefix else key, child, out)
    else:
        out[prefix] = value
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    a = _flat("", {k: old.get(k) for k in RUN_SECTIONS}, {})
    b = _flat("", {k: new.get(k) for k in RUN_SECTIONS}, {})
    # max_steps and epochs only move the finish line: a longer run may resume a shorter one.
    ignored = {"train.max_steps", "train.epochs", "train.checkpoint_steps"}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in ignored)


class Checkpoints:
    """Saves into `output_dir`'s checkpoints; restores from `restore_dir`'s (the chief's, for every worker)."""

    def __init__(self, output_dir: str, lm, optimizer, keep: int = 2, restore_dir: str | None = None):
        self.directory = os.path.join(output_dir, DIRNAME)
        self.restore_directory = os.path.join(restore_dir or output_dir, DIRNAME)
        self.checkpoint = tf.train.Checkpoint(model=lm, optimizer=optimizer)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=keep)
        self.optimizer = optimizer

    @property
    def latest(self):
        return tf.train.latest_checkpoint(self.restore_directory)

    def restore(self) -> int:
        """Restore the latest checkpoint; returns its optimizer step (0 when there is none)."""
        if not self.latest:
            return 0
        self.checkpoint.restore(self.latest).assert_existing_objects_matched()
        return int(self.optimizer.iterations.numpy())

    def weights_finite(self) -> bool:
        return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.checkpoint.model.weights]))

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)


def check_resumable(output_dir: str, new_config: dict, overwrite: bool) -> None:
    """Before a run writes anything: clear old state for --overwrite, or refuse to mix two runs."""
    checkpoint_dir = os.path.join(output_dir, DIRNAME)
    if overwrite:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        results = os.path.join(output_dir, "results.json")
        if os.path.exists(results):
            os.unlink(results)
        return
    if not tf.train.latest_checkpoint(checkpoint_dir):
        return
    saved_path = os.path.join(output_dir, CONFIG_FILENAME)
    saved = yaml.safe_load(open(saved_path, encoding="utf-8")) if os.path.exists(saved_path) else {}
    changed = changed_keys(saved or {}, new_config)
    if changed:
        raise ConfigError(
            "output_dir",
            f"{output_dir!r} holds a checkpoint of a run with other settings ({', '.join(changed[:5])}); "
            "use a new --output-dir, or pass --overwrite to start over there",
        )


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every_steps` optimizer steps and at each epoch's end; never a skipped step or NaN weights.

    Example:

    >>> import tempfile, numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> from tfclm.training.checkpoints import CheckpointCallback, Checkpoints
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.legacy.Adam(1e-3))
    >>> checkpoints = Checkpoints(tempfile.mkdtemp(), model, model.optimizer)
    >>> saver = CheckpointCallback(checkpoints, every_steps=3, steps_per_epoch=4)
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=2, verbose=0, callbacks=[saver])
    >>> saver.saved
    [3, 4, 6, 8]
    """

    def __init__(self, checkpoints: Checkpoints, every_steps: int | None, steps_per_epoch: int | None):
        super().__init__()
        self.checkpoints = checkpoints
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.saved = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.checkpoints.optimizer.iterations.numpy())
        if not step or (self.saved and self.saved[-1] == step):
            return  # mid-accumulation, or already saved at this optimizer step
        due = (self.every_steps and step % self.every_steps == 0) or (
            self.steps_per_epoch and step % self.steps_per_epoch == 0
        )
        streak = getattr(self.model, "nonfinite_streak", None)
        if not due or (streak is not None and int(streak.numpy()) > 0):
            return  # a skipped update: its state is the step before's, which is on disk or not due
        if not self.checkpoints.weights_finite():
            return  # never write a checkpoint a resume would start from NaN
        self.checkpoints.save(step)
        self.saved.append(step)
