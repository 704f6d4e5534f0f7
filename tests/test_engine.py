"""The training engine: accumulation, precision, XLA switch, NaN guard, checkpoints and resume."""

import json
import os
import subprocess

import numpy as np
import pytest

from helpers import DEFAULT_CONFIG, ROOT, TINY, TINY_BUILTIN, fit_command, kill_after_checkpoint, run_cli, sets


def tiny_lm(seed=0):
    import tf_keras as keras
    from transformers import GPT2Config, TFGPT2LMHeadModel

    keras.utils.set_random_seed(seed)
    lm = TFGPT2LMHeadModel(
        GPT2Config(
            n_layer=1,
            n_embd=32,
            n_head=2,
            vocab_size=64,
            n_positions=16,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    lm.build_in_name_scope()
    return lm


def batches(ids, size):
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices(ids)
        .batch(size)
        .map(lambda x: {"input_ids": x, "attention_mask": tf.ones_like(x), "labels": x})
    )


def poisoned_lm(poison):
    """A small LM (not a transformers one) whose logits get `poison` added in any batch holding token 63: a
    constant, so the other batches' gradients stay finite (unlike tf.where over logits * nan)."""
    import collections

    import tensorflow as tf
    import tf_keras as keras

    Output = collections.namedtuple("Output", "logits")

    class PoisonedLM(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed, self.head = keras.layers.Embedding(64, 16), keras.layers.Dense(64)

        def call(self, input_ids, attention_mask=None, training=False):
            added = tf.where(tf.reduce_any(input_ids == 63), poison, tf.zeros_like(poison))
            return Output(self.head(self.embed(input_ids)) + added)

    return PoisonedLM()


def test_accumulation_equals_one_large_batch_step():
    """SGD with learning rate 1, so each weight moves by its gradient: an accumulated gradient off in scale (a sum
    where the mean belongs) fails. Adam's first step is near lr x sign(gradient), blind to scale, and where a
    gradient is near its epsilon it turns the rounding of four partial sums into 1e-6 of a weight (one of 4,096
    weights did, on a CPU with AMX)."""
    import tf_keras as keras

    from tfclm.training.trainer import CausalLMTrainer

    ids = np.random.default_rng(0).integers(0, 64, (8, 16)).astype(np.int32)
    weights = []
    for accumulation, size in ((1, 8), (4, 2)):
        lm = tiny_lm()
        trainer = CausalLMTrainer(lm, accumulation_steps=accumulation)
        trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=1.0))
        trainer.fit(batches(ids, size), epochs=1, verbose=0)
        assert int(trainer.optimizer.iterations) == 1
        weights.append([v.numpy() for v in lm.trainable_variables])
    untouched = [v.numpy() for v in tiny_lm().trainable_variables]
    for big, accumulated, start in zip(*weights, untouched):
        # Relative to the variable's largest move: without oneDNN (a CPU without AVX-512) one of 32 moves of about
        # 1e-3 differed by 6e-8, a float32 sum's rounding; a sum where the mean belongs is off by 4x.
        scale = float(np.abs(big - start).max())
        np.testing.assert_allclose(accumulated - start, big - start, rtol=1e-5, atol=1e-4 * scale + 1e-12)
    assert any(not np.allclose(b, s) for b, s in zip(weights[0], untouched))  # a step was taken


def test_a_float32_fit_warns_of_no_loss_scaling():
    """The skip-on-nonfinite wrapper (a LossScaleOptimizer whose scale stays 1) must not tell the user they
    forgot to scale the loss: there is no scale to apply."""
    import logging

    import tf_keras as keras

    from tfclm.training.trainer import CausalLMTrainer

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        trainer = CausalLMTrainer(tiny_lm())
        trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.1))
        ids = np.random.default_rng(0).integers(0, 64, (4, 16)).astype(np.int32)
        trainer.fit(batches(ids, 2), epochs=1, verbose=0)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert int(trainer.optimizer.iterations) == 2
    assert not [r.getMessage() for r in records if "LossScaleOptimizer" in r.getMessage()]


def test_bf16_trains_on_cpu_with_falling_loss():
    import tf_keras as keras
    from transformers import AdamWeightDecay

    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision("bf16")
    try:
        lm = tiny_lm()
        assert lm.transformer.h[0].attn.c_attn.compute_dtype == "bfloat16"
        trainer = CausalLMTrainer(lm)
        trainer.compile(optimizer=AdamWeightDecay(learning_rate=3e-3))
        ids = np.tile(np.arange(16, dtype=np.int32), (32, 1))  # one sequence to learn
        losses = trainer.fit(batches(ids, 8), epochs=4, verbose=0).history["loss"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] * 0.8


@pytest.mark.skipif(
    "not __import__('tensorflow').config.list_physical_devices('GPU')",
    reason="fp16 loss scaling needs a GPU; this machine has none",
)
def test_fp16_with_loss_scaling_on_gpu():
    import tf_keras as keras
    from transformers import AdamWeightDecay

    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision("fp16")
    try:
        trainer = CausalLMTrainer(tiny_lm())
        trainer.compile(optimizer=AdamWeightDecay(learning_rate=3e-3))
        assert isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer)
        ids = np.tile(np.arange(16, dtype=np.int32), (32, 1))
        losses = trainer.fit(batches(ids, 8), epochs=3, verbose=0).history["loss"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
def test_nan_stops_training_names_causes_and_keeps_the_checkpoint(tmp_path):
    out = str(tmp_path / "nan")
    result = run_cli(
        [
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *TINY,
            *sets(
                "evaluate.before_training=false",
                "train.warmup_ratio=0",
                "train.clipnorm=null",
                "train.lr_schedule=constant",
                "train.checkpoint_steps=1",
            ),
            "--learning-rate",
            "1e12",
            "--max-steps",
            "30",
            "--output-dir",
            out,
        ]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "the loss became" in line and "train.learning_rate is 1e+12" in line and "train.clipnorm" in line
    assert "last good checkpoint" in line and os.path.exists(os.path.join(out, "checkpoints", "checkpoint"))
    assert not os.path.exists(os.path.join(out, "tf_model.h5"))  # a stopped run is not saved as the model
    # Checkpoints every step: the one skipped update is the step after the last checkpoint, and it is named.
    steps = checkpoint_steps(out)
    assert f"at optimizer step {steps[-1] + 1};" in line and f"(step {steps[-1]})" in line
    for step in steps:
        assert checkpoint_is_finite(out, step), step


def checkpoint_steps(out) -> list[int]:
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(os.path.join(out, "checkpoints"))
    return sorted(int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths)


def checkpoint_is_finite(out, step) -> bool:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(out, "checkpoints", f"ckpt-{step}"))
    names = [n for n, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating and "model/" in n]
    assert names  # the model's weights are in there
    return all(np.isfinite(reader.get_tensor(n)).all() for n in names)


def test_a_nonfinite_step_is_skipped_and_stops_training_at_that_step(tmp_path):
    """A batch that makes the loss NaN, at a chosen step: its update never reaches the weights."""
    import tensorflow as tf
    import tf_keras as keras
    from transformers import AdamWeightDecay

    from tfclm.callbacks import StopOnNonFiniteLoss
    from tfclm.training.checkpoints import CheckpointCallback, Checkpoints
    from tfclm.training.trainer import CausalLMTrainer

    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(0).integers(0, 63, (12 * 4, 16)).astype(np.int32)
    ids[6 * 4 + 1, 5] = 63  # in the 7th batch of 4: optimizer step 7
    for patience, expected_steps in ((None, 12), (1, 7)):
        lm = poisoned_lm(tf.constant(float("nan")))  # NaN logits in any batch holding token 63
        lm(tf.constant(ids[:1]))
        trainer = CausalLMTrainer(lm)
        trainer.compile(optimizer=AdamWeightDecay(learning_rate=1e-2))
        weights = {}

        class Snapshot(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None, weights=weights):
                weights[int(self.model.optimizer.iterations)] = [w.numpy() for w in self.model.lm.weights]

        out = str(tmp_path / f"patience-{patience}")
        guard = StopOnNonFiniteLoss(patience)
        saver = CheckpointCallback(
            Checkpoints(out, lm, trainer.optimizer, keep=20), every_steps=1, steps_per_epoch=None
        )
        history = trainer.fit(batches(ids, 4), epochs=1, verbose=0, callbacks=[Snapshot(), guard, saver]).history
        assert int(trainer.optimizer.iterations) == expected_steps
        assert all(np.array_equal(a, b) for a, b in zip(weights[6], weights[7]))  # step 7 changed nothing
        assert not all(np.array_equal(a, b) for a, b in zip(weights[5], weights[6]))  # other steps do
        assert int(trainer.skipped_steps.numpy()) == 1 and np.isfinite(history["loss"][-1])
        assert guard.stopped_at == (7 if patience else None)
        assert all(checkpoint_is_finite(out, step) for step in checkpoint_steps(out))


def test_an_infinite_loss_with_finite_gradients_is_skipped_too():
    """Logits of -inf at a target give an infinite loss whose gradients (softmax - one-hot) are finite: the
    optimizer's own check sees nothing wrong, and the step must still leave the weights alone."""
    import tensorflow as tf
    import tf_keras as keras
    from transformers import AdamWeightDecay

    from tfclm.training.trainer import CausalLMTrainer

    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(0).integers(0, 63, (4 * 4, 16)).astype(np.int32)
    ids[2 * 4, 3], ids[2 * 4, 9] = 63, 5  # the 3rd batch: token 5 is a target there
    lm = poisoned_lm(tf.where(tf.range(64) == 5, -float("inf"), 0.0))  # token 5 has no chance with token 63
    lm(tf.constant(ids[:1]))
    trainer = CausalLMTrainer(lm)
    trainer.compile(optimizer=AdamWeightDecay(learning_rate=1e-2))
    weights = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights[batch] = [w.numpy() for w in self.model.lm.weights]

    trainer.fit(batches(ids, 4), epochs=1, verbose=0, callbacks=[Snapshot()])
    assert all(np.array_equal(a, b) for a, b in zip(weights[1], weights[2]))  # the 3rd batch changed nothing
    assert not all(np.array_equal(a, b) for a, b in zip(weights[2], weights[3]))
    assert int(trainer.skipped_steps.numpy()) == 1


@pytest.mark.slow
def test_xla_and_progress_logs(tmp_path):
    out = str(tmp_path / "xla")
    result = run_cli(
        [
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *TINY,
            *sets(
                "evaluate.before_training=false",
                "train.jit_compile=true",
                "train.gradient_accumulation_steps=2",
                "logging.every_n_steps=1",
            ),
            "--max-steps",
            "3",
            "--output-dir",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    (training_line,) = [line for line in result.stdout.splitlines() if line.startswith("training: ")]
    assert ", XLA; MFU against peak measured: float32 matmul on this host's CPU, " in training_line  # not "no XLA"
    assert "learning_rate:" in result.stdout and "tokens_per_second:" in result.stdout and "mfu:" in result.stdout
    results = json.load(open(os.path.join(out, "results.json")))
    assert (
        results["jit_compile"] is True and results["train_steps"] == 3 and results["train_tokens"] == 3 * 2 * 16 * 128
    )
    # Every *_steps counts optimizer steps, each of 2 micro-batches here.
    assert results["step_history"]["steps"] == [1, 2, 3] and len(results["step_history"]["loss"]) == 3


@pytest.mark.slow
def test_finished_run_is_not_retrained_and_other_settings_are_refused(trained_dir):
    out, _ = trained_dir
    again = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", out])
    assert again.exit_code == 2 and "already holds a finished run (40 steps" in again.output
    other = run_cli(
        [
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *TINY_BUILTIN,
            "--max-steps",
            "40",
            "--output-dir",
            out,
            *sets("train.learning_rate=0.5"),
        ]
    )
    assert other.exit_code == 2 and "train.learning_rate" in other.output and "--overwrite" in other.output


KINDS = {
    "streaming": [*sets("data.streaming=true"), "--max-steps", "1000"],  # 2 passes end it first
    # In memory, two micro-batches a step, with GPT-2's default dropout (as distilgpt2 and most Hub checkpoints
    # have it): each mask a function of the seed, the step and the micro-batch.
    "accumulation and dropout": [
        *sets("train.gradient_accumulation_steps=2"),
        "--batch-size",
        "2",
        *sets("model.config.resid_pdrop=0.1", "model.config.embd_pdrop=0.1", "model.config.attn_pdrop=0.1"),
    ],
}


def _fit_command(out, kind):
    return fit_command(
        *TINY,
        *sets("evaluate.before_training=false", "train.checkpoint_steps=5", "train.epochs=2", "data.max_documents=10"),
        "--batch-size",
        "4",
        "--output-dir",
        out,
        *KINDS[kind],
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_sigkill_mid_epoch_then_rerun_resumes(tmp_path, kind):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = str(tmp_path / "reference")
    done = subprocess.run(_fit_command(reference, kind), capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = json.load(open(os.path.join(reference, "results.json")))
    steps_per_epoch = expected["train_steps"] // 2

    out = str(tmp_path / "killed")
    process = subprocess.Popen(
        _fit_command(out, kind),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    kill_after_checkpoint(process, out, 10)  # a checkpoint inside the first epoch is on disk, before its end
    assert not os.path.exists(os.path.join(out, "results.json"))

    resumed = subprocess.run(_fit_command(out, kind), capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    line = [x for x in resumed.stdout.splitlines() if x.startswith("resuming from the checkpoint at optimizer step")][0]
    resumed_at = int(line.split("step ")[1].split(" ")[0].replace(",", ""))
    assert 10 <= resumed_at < steps_per_epoch
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["resumed_from_step"] == resumed_at and results["train_steps"] == expected["train_steps"]
    # The data order is fixed by (seed, epoch) and each dropout mask by (seed, step): the very same weights.
    assert results["weights_sha256"] == expected["weights_sha256"]
    assert results["eval_loss"] == expected["eval_loss"]
    # The results cover the whole run, the part before the kill included.
    assert results["history"]["val_loss"] == expected["history"]["val_loss"] and results["epochs"] == 2
    assert results["step_history"]["steps"] == expected["step_history"]["steps"]
    # Each step's loss is that step's own, whether its epoch began in this process or before the kill.
    assert results["step_history"]["loss"] == expected["step_history"]["loss"]
