"""The run state in use: extending a finished run, calling tfclm.fit twice, and what a run leaves on disk."""

import json
import os

import pytest

from helpers import DEFAULT_CONFIG, TINY, run_cli, sets

QUIET = sets("evaluate.before_training=false", "logging.sample_every_n_epochs=null", "logging.every_n_steps=1")


def fit_steps(out, max_steps):
    result = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *TINY, *QUIET, "--max-steps", str(max_steps), "--output-dir", out]
    )
    assert result.exit_code == 0, result.output
    return json.load(open(os.path.join(out, "results.json"))), result.output


@pytest.mark.slow
def test_extending_a_finished_run_continues_the_learning_rate(tmp_path):
    out = str(tmp_path / "run")
    first, _ = fit_steps(out, 12)
    extended, output = fit_steps(out, 20)
    assert extended["resumed_from_step"] == 12 and extended["train_steps"] == 20
    assert "schedule: extended from 12 to 20 optimizer steps" in output
    steps, rates = extended["step_history"]["steps"], extended["step_history"]["learning_rate"]
    assert steps == list(range(1, 21))  # the whole run, the first 12 steps carried over from the first fit
    assert rates[:12] == first["step_history"]["learning_rate"]
    # The rate logged after step s is the one step s + 1 uses: from the rate at step 12, linearly to 0 at 20.
    at_join = rates[11]
    jumps = [abs(b - a) for a, b in zip(rates, rates[1:])]
    decay_slope = at_join / (20 - 12)
    assert max(jumps[11:]) <= decay_slope * (1 + 1e-5) and rates[-1] == 0.0
    warmup_slope = 1e-3 / 2  # warm-up: 10% of 12 steps, to the peak of 1e-3
    assert max(jumps) <= warmup_slope * (1 + 1e-5)
    with open(os.path.join(out, "checkpoints", "ckpt-20.json")) as handle:
        state = json.load(handle)
    assert state["step"] == 20 and state["total_steps"] == 20 and state["schedule"][-1]["start"] == 12


@pytest.mark.slow
def test_fit_twice_in_one_process_leaves_the_callers_settings(tmp_path):
    import matplotlib
    import tf_keras as keras

    import tfclm
    from tfclm.config import load_config

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for name in ("first", "second"):
            overrides = [*TINY[1::2], *QUIET[1::2], "train.max_steps=2", f"output_dir={tmp_path / name}"]
            results = tfclm.fit(load_config(DEFAULT_CONFIG, overrides), verbose=0)
            assert results["train_steps"] == 2 and results["precision"] == "float32"
            assert os.path.exists(tmp_path / name / "training_curves.png")
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            assert matplotlib.get_backend() == "svg"
    finally:
        keras.mixed_precision.set_global_policy("float32")
        matplotlib.use(backend)
