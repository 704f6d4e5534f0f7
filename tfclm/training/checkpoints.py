"""Resumable checkpoints: weights, optimizer state and step, in OUTPUT_DIR/checkpoints.

TensorFlow's CheckpointManager writes a checkpoint's files first and then
renames its index into place, so a run killed during a save still points at
the previous, complete checkpoint. A rerun of the same command restores the
latest one and goes on from its step; a finished run is not retrained.
"""

import logging
import os
import re
import shutil

import yaml

from tfclm.backend import keras, tf
from tfclm.config import CONFIG_FILENAME
from tfclm.errors import ConfigError, first_line
from tfclm.files import MODEL_FILES, TEMP_PREFIX, OutputDir
from tfclm.model.lora import checkpointed
from tfclm.training.run_state import RunState, changed_keys, settings_of

logger = logging.getLogger(__name__)

DIRNAME = OutputDir.CHECKPOINTS


class Checkpoints:
    """Saves into `output_dir`'s checkpoints; restores from `restore_dir`'s (the chief's, for every worker)."""

    def __init__(self, output_dir: str, lm, optimizer, keep: int = 2, restore_dir: str | None = None):
        self.directory = os.path.join(output_dir, DIRNAME)
        self.restore_directory = os.path.join(restore_dir or output_dir, DIRNAME)
        held = checkpointed(lm)
        self.checkpoint = tf.train.Checkpoint(**held, optimizer=optimizer)
        # Read when asked: a model may be built after this.
        self._weights = (lambda: held["trained"]) if "trained" in held else (lambda: lm.weights)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=keep)
        self.optimizer = optimizer

    def restore(self, step: int) -> int:
        """Restore the checkpoint of `step`; returns the optimizer's step after it."""
        self.checkpoint.restore(os.path.join(self.restore_directory, f"ckpt-{step}")).assert_existing_objects_matched()
        return int(self.optimizer.iterations.numpy())

    def weights_finite(self) -> bool:
        return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self._weights()]))

    def save(self, step: int, state: RunState | None = None) -> str:
        if state is not None:
            state.write(self.directory)  # first: a listed checkpoint always has its state
        try:
            path = self.manager.save(checkpoint_number=step)
        except BaseException:
            # A failed save (disk full, a file-size limit) leaves TensorFlow's ckpt-N_temp/ and our state behind.
            remove_unfinished_saves(self.directory, step)
            if state is not None and os.path.exists(RunState.path(self.directory, step)):
                os.unlink(RunState.path(self.directory, step))
            raise
        kept = {os.path.basename(p) + ".json" for p in self.manager.checkpoints}
        for name in os.listdir(self.directory):
            if name.startswith("ckpt-") and name.endswith(".json") and name not in kept:
                os.unlink(os.path.join(self.directory, name))
        return path


def remove_unfinished_saves(checkpoint_dir: str, step: int | None = None) -> None:
    """TensorFlow's ckpt-N_temp/ folders of saves that never finished: of `step`, or (None) of any step."""
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            if re.fullmatch(rf"ckpt-{step if step is not None else '[0-9]+'}_temp.*", name):
                shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)


def checkpoint_steps(checkpoint_dir: str) -> list[int]:
    """Steps of the checkpoints in `checkpoint_dir`, newest first: those TensorFlow's state file lists and those
    whose files are there, so that a garbled state file hides none."""
    steps = set()
    try:
        listed = tf.train.get_checkpoint_state(checkpoint_dir)
        if listed is not None:
            steps.update(int(p.rsplit("-", 1)[1]) for p in listed.all_model_checkpoint_paths)
    except Exception:  # text_format.ParseError and kin: the files present still say what there is
        pass
    if os.path.isdir(checkpoint_dir):
        steps.update(
            int(m[1]) for name in os.listdir(checkpoint_dir) if (m := re.fullmatch(r"ckpt-(\d+)\.index", name))
        )
    return sorted(steps, reverse=True)


def latest_step(checkpoint_dir: str) -> int | None:
    steps = checkpoint_steps(checkpoint_dir)
    return steps[0] if steps else None


def unreadable(path: str) -> str | None:
    """Why the checkpoint at `path` cannot be restored (every tensor read), or None when it can."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as exc:  # a missing, truncated or foreign file: TensorFlow raises many types for one cause
        return first_line(exc, 160)
    return None


def newest_readable(checkpoint_dir: str) -> int | None:
    """The newest checkpoint that reads whole; older ones stand in for a damaged one, and a dir whose
    checkpoints all fail is an error, never a silent start from step 0."""
    steps = checkpoint_steps(checkpoint_dir)
    for step in steps:
        problem = unreadable(os.path.join(checkpoint_dir, f"ckpt-{step}"))
        if problem is None:
            return step
        logger.warning(f"checkpoint: ckpt-{step} cannot be read ({problem}); trying the one before")
    if steps:
        raise ConfigError(
            "output_dir",
            f"no checkpoint in {checkpoint_dir!r} can be read; restore them from a backup, or pass --overwrite "
            "to start over",
        )
    return None


# What a run writes into its output dir: a dir holding only these (or nothing) is tfclm's to write into.
RUN_FILES = {
    OutputDir.CONFIG, OutputDir.RESULTS, DIRNAME, OutputDir.CACHE, OutputDir.LOGS, OutputDir.CURVES, OutputDir.LOCK,
    OutputDir.CARD, *OutputDir.TRACKER_FILES, *(name for name in MODEL_FILES if "*" not in name),
}  # fmt: skip


def check_resumable(output_dir: str, new_config: dict, overwrite: bool) -> None:
    """Before a run writes anything: refuse a dir that is not tfclm's, or a run that would mix with another.

    `--overwrite` deletes nothing here: the old run is cleared (`clear_run`) only once every input has loaded.
    """
    if not os.path.isdir(output_dir) or overwrite:
        return
    names = set(os.listdir(output_dir))
    foreign = sorted(n for n in names - RUN_FILES if not n.startswith(TEMP_PREFIX))
    if CONFIG_FILENAME not in names and foreign:
        raise ConfigError(
            "output_dir",
            f"{output_dir!r} holds files tfclm did not write ({', '.join(foreign[:3])}); choose a new or empty "
            "--output-dir",
        )
    checkpoint_dir = os.path.join(output_dir, DIRNAME)
    step = latest_step(checkpoint_dir)
    state = RunState.read(checkpoint_dir, step) if step is not None else None
    saved_path = os.path.join(output_dir, CONFIG_FILENAME)
    if state is not None:
        saved = state.settings
    elif os.path.exists(saved_path):  # no run state: compare with the run's tfclm.yaml
        saved = settings_of(yaml.safe_load(open(saved_path, encoding="utf-8")) or {})
    else:
        return
    changed = changed_keys(saved, settings_of(new_config))
    if changed:
        what = "a checkpoint of a run" if step is not None else "a run"
        raise ConfigError(
            "output_dir",
            f"{output_dir!r} holds {what} with other settings ({', '.join(changed[:5])}); "
            "use a new --output-dir, or pass --overwrite to start over there",
        )
    if step is None and OutputDir.RESULTS in names:
        raise ConfigError(
            "output_dir",
            f"{output_dir!r} already holds a finished run (results.json, no checkpoints to go on from); use a new "
            "--output-dir, or --overwrite to train again",
        )


def clear_run(output_dir: str) -> None:
    """--overwrite, once the new run's inputs have loaded: the old run's checkpoints and results go."""
    shutil.rmtree(os.path.join(output_dir, DIRNAME), ignore_errors=True)
    results = os.path.join(output_dir, OutputDir.RESULTS)
    if os.path.exists(results):
        os.unlink(results)


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

    def __init__(
        self, checkpoints: Checkpoints, every_steps: int | None, steps_per_epoch: int | None, state=None, before_save=()
    ):
        super().__init__()
        self.checkpoints = checkpoints
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.state = state  # step -> RunState to save beside each checkpoint, or None
        self.before_save = list(before_save)  # called with the step just before a checkpoint (or its state) is written
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
        self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            return  # stopped early: the run saves its last step itself, or must not (a skipped one)
        step = int(self.checkpoints.optimizer.iterations.numpy())
        if step and self.saved and self.saved[-1] == step:
            for call in self.before_save:
                call(step)
            if self.state is not None:
                self.state(step).write(self.checkpoints.directory)  # the same weights, now at the next epoch's start
        elif step and (self.steps_per_epoch is None or step % self.steps_per_epoch == 0):
            self._save(step)

    def _save(self, step: int) -> None:
        if not self.checkpoints.weights_finite():
            return  # never write a checkpoint a resume would start from NaN
        for call in self.before_save:
            call(step)
        self.checkpoints.save(step, self.state(step) if self.state is not None else None)
        self.saved.append(step)
