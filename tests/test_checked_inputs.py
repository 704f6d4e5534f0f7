"""Inputs checked before they are used: `model.config`, seeds and config files, each one line, exit code 2, no
traceback, and the output dir (an earlier run's, with a file of the user's) byte-identical."""

import pytest

from helpers import DEFAULT_CONFIG, TINY, error_line, run_cli, sets, tree


@pytest.fixture()
def earlier(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    (out / "my-notes.txt").write_text("the user's own file\n")
    return out


def fit_error(out, *settings, config=DEFAULT_CONFIG) -> str:
    before = tree(out.parent)
    line = error_line(run_cli(["fit", "--config", str(config), *TINY, *sets(*settings), "--output-dir", str(out)]))
    assert tree(out.parent) == before
    return line


@pytest.mark.parametrize(
    "setting, said",
    [
        ("model.config.n_layers=3", "model.config.n_layers: is not a gpt2 config field; did you mean n_layer or "),
        ("model.config.n_layer=two", "model.config.n_layer: must be a whole number, got 'two'"),
        ("model.config.n_layer=-1", "model.config.n_layer: must be at least 1, got -1"),
        ("model.config.n_embd=0", "model.config.n_embd: must be at least 1, got 0"),
        ("model.config.n_positions=0", "model.config.n_positions: must be at least 1, got 0"),
        ("model.config.n_head=3", "model.config.n_head: 3 heads do not divide the width n_embd 64; pick a divisor"),
        ("model.config.activation_function=gelu_fancy", "'gelu_fancy' is not an activation transformers' TF models"),
        ("model.config.resid_pdrop=1.5", "model.config.resid_pdrop: is a dropout rate, which must be in [0, 1)"),
        ("model.config.scale_attn_weights=maybe", "model.config.scale_attn_weights: must be true or false"),
        ("train.seed=-1", "train.seed: must be a whole number from 0 to 2**32 - 1 (4,294,967,295), got -1"),
        ("train.seed=4294967296", "train.seed: must be a whole number from 0 to 2**32 - 1"),
        ("generate.seed=2147483648", "generate.seed: must be a whole number from 0 to 2**31 - 1 (2,147,483,647)"),
        ("lora.alpha=.inf", "lora.alpha: must be positive (such as 16), got inf"),
        ("train.pipeline=recipe", "train.pipeline: recipe packs in memory through transformers' prepare_tf_dataset"),
    ],
)
def test_a_bad_value_is_one_line_before_any_write(earlier, setting, said):
    more = ["model.config=null", "model.name_or_path=gpt2", "lora.rank=4"] if setting.startswith("lora.") else []
    if setting.startswith("train.pipeline"):
        more = ["data.streaming=true", "train.max_steps=4"]  # the recipe's pipeline reads no stream
    assert said in fit_error(earlier, *more, setting)


@pytest.mark.parametrize(
    "settings, said",
    [
        (["model.config={model_type: xglm, num_layers: 1, d_model: 32, attention_heads: 2, layerdrop: 0.1}"],
         "model.config.layerdrop: xglm's TF class would skip the same layers at every step"),
        (["model.config={model_type: mistral, num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 4, "
          "num_key_value_heads: 3}"], "model.config.num_key_value_heads: 3 key/value heads do not divide the 4"),
    ],
)  # fmt: skip
def test_other_families_configs_are_checked_by_their_own_fields(earlier, settings, said):
    assert said in fit_error(earlier, *settings)


@pytest.mark.parametrize(
    "content, said",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "is not UTF-8 text (byte 0)"),
        ("data:\n  dataset: caf\u00e9.txt\n".encode("latin-1"), "is not UTF-8 text (byte 20)"),
    ],
)
def test_a_config_file_that_is_not_utf8_text(earlier, tmp_path, content, said):
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    line = fit_error(earlier, config=config)
    assert line.startswith(f"Error: --config: {str(config)!r} ") and said in line and "iconv -t utf-8" in line


def test_a_generation_seed_out_of_int32_is_refused_by_the_cli(tmp_path):
    line = error_line(run_cli(["generate", "--model", str(tmp_path), "--prompt", "hi", "--seed", "2147483648"]))
    assert "Invalid value for '--seed'" in line
