"""Bad input: one line naming the key or path and the fix, exit code 2, no traceback, nothing lost."""

import pytest

from helpers import DEFAULT_CONFIG, error_line, run_cli, sets


def test_missing_config_file(tmp_path):
    line = error_line(run_cli(["fit", "--config", str(tmp_path / "nope.yaml")]))
    assert "nope.yaml" in line and "not found" in line


def test_yaml_syntax_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  block_size: 128\n   num_proc: 2\n")
    line = error_line(run_cli(["fit", "--config", str(bad)]))
    assert "not valid YAML at line" in line


def test_unknown_key(tmp_path):
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, "--set", "train.epoch=2"]))
    assert "train.epoch: unknown key" in line and "epochs" in line


def test_wrong_type():
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, "--set", "data.block_size=big"]))
    assert "data.block_size: must be an integer" in line


def test_missing_model_dir(tmp_path):
    for command in (["evaluate"], ["generate", "--prompt", "hi"]):
        line = error_line(run_cli([*command, "--model", str(tmp_path / "gone")]))
        assert "gone" in line and "does not exist" in line


def test_model_dir_without_weights(tmp_path):
    line = error_line(run_cli(["generate", "--model", str(tmp_path), "--prompt", "hi"]))
    assert "holds no model weights" in line


@pytest.mark.slow
def test_bad_model_in_config_leaves_earlier_output_intact(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    line = error_line(
        run_cli(
            [
                "fit",
                "--config",
                DEFAULT_CONFIG,
                "--output-dir",
                str(out),
                *sets("model.config=null", f"model.name_or_path={tmp_path}/no-model"),
            ]
        )
    )
    assert "no-model" in line
    assert (out / "results.json").read_text() == '{"kept": true}'


@pytest.mark.slow
def test_generate_option_errors(trained_dir):
    out, _ = trained_dir
    assert "Invalid value for '--top-p'" in error_line(
        run_cli(["generate", "--model", out, "--prompt", "x", "--top-p", "1.5"])
    )
    assert "prompt" in error_line(run_cli(["generate", "--model", out, "--prompt", ""]))
    assert "max_new_tokens" in error_line(
        run_cli(["generate", "--model", out, "--prompt", "x", "--max-new-tokens", "5000"])
    )
    assert "num_return_sequences" in error_line(
        run_cli(["generate", "--model", out, "--prompt", "x", "--greedy", "--num-return-sequences", "2"])
    )


@pytest.mark.slow
def test_module_entry_point_exit_code(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tfclm", "fit", "--config", str(tmp_path / "x.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "x.yaml" in done.stderr
