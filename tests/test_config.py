import pytest
import yaml

from tfclm.config import Config, from_dict, load_config, parse_override, to_yaml
from tfclm.errors import ConfigError

from helpers import DEFAULT_CONFIG, RECIPE_CONFIG


def test_default_and_recipe_configs_load():
    default = load_config(DEFAULT_CONFIG)
    assert default.data.dataset == "builtin:pydoc"
    assert default.model.config["model_type"] == "gpt2" and default.model.name_or_path is None
    recipe = load_config(RECIPE_CONFIG)
    assert recipe.model.name_or_path == "distilbert/distilgpt2"
    assert (recipe.data.dataset, recipe.data.split, recipe.data.text_column) == (
        "eli5_category",
        "train[:5000]",
        "answers.text",
    )
    assert recipe.data.validation_split == 0.2 and recipe.data.block_size == 128
    assert (recipe.train.batch_size, recipe.train.learning_rate, recipe.train.weight_decay, recipe.train.epochs) == (
        16,
        2e-5,
        0.01,
        3,
    )


def test_overrides_then_flags_win_over_the_file():
    config = load_config(
        DEFAULT_CONFIG,
        ["train.batch_size=4", "data.text_column=answers.text", "model.config.n_layer=2"],
        {"train.batch_size": 8},
    )
    assert config.train.batch_size == 8
    assert config.data.text_column == "answers.text"
    assert config.model.config["n_layer"] == 2 and config.model.config["n_embd"] == 256


def test_override_values_are_yaml():
    assert parse_override("train.max_steps=null") == (["train", "max_steps"], None)
    assert parse_override("generate.prompts=[a, b]") == (["generate", "prompts"], ["a", "b"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.batch_size")


def test_unknown_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batchsize: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert (
        "train.batchsize" in str(info.value) and "batch_size" in str(info.value) and "learning_rate" in str(info.value)
    )
    with pytest.raises(ConfigError, match="unknown key; valid keys are: output_dir, data"):
        load_config(None, ["trian.epochs=1"])


@pytest.mark.parametrize(
    "override, key, wanted",
    [
        ("train.batch_size=eight", "train.batch_size", "an integer"),
        ("train.batch_size=true", "train.batch_size", "an integer"),
        ("train.learning_rate=fast", "train.learning_rate", "a number"),
        ("evaluate.before_training=3", "evaluate.before_training", "a boolean"),
        ("train.pipeline=slow", "train.pipeline", "one of 'fast', 'recipe'"),
        ("data=5", "data", "DataConfig"),
    ],
)
def test_wrong_type_names_key_and_type(override, key, wanted):
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG, [override])
    assert str(info.value).startswith(key + ":") and wanted in str(info.value)


def test_int_is_accepted_as_float_and_null_as_optional():
    config = load_config(DEFAULT_CONFIG, ["train.learning_rate=1", "train.max_steps=null"])
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    # YAML 1.1 reads 2e-5 (no dot) as a string; a float key takes it as the number it means.
    assert load_config(DEFAULT_CONFIG, ["train.learning_rate=2e-5"]).train.learning_rate == 2e-5
    assert config.train.max_steps is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.block_size=1", "data.block_size"),
        ("data.validation_split=1.5", "data.validation_split"),
        ("train.batch_size=0", "train.batch_size"),
        ("generate.top_p=0", "generate.top_p"),
        ("model.name_or_path=gpt2", "model"),
    ],
)
def test_range_and_combination_checks(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG, [override])
    assert str(info.value).startswith(key + ":")


def test_file_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(str(listed))


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("output_dir: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_resolved_config_round_trips():
    config = load_config(DEFAULT_CONFIG, ["train.epochs=5"])
    again = from_dict(yaml.safe_load(to_yaml(config)))
    assert again == config and isinstance(again, Config)


def test_a_leading_tilde_is_the_home_directory(tmp_path, monkeypatch):
    from tfclm.data.sources import load_documents

    from helpers import run_cli

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x.txt").write_text("a first paragraph\n\na second one\n", encoding="utf-8")
    config = load_config(DEFAULT_CONFIG, ["data.dataset=~/x.txt", "data.txt_document=paragraph", "output_dir=~/runs/x"])
    assert config.data.dataset == str(tmp_path / "x.txt") and config.output_dir == str(tmp_path / "runs" / "x")
    assert load_documents(config.data) == ["a first paragraph", "a second one"]
    shown = run_cli(
        ["config", "--config", DEFAULT_CONFIG, "--set", "model.name_or_path=~/m", "--set", "model.config=null"]
    )
    assert f"model.name_or_path                 {tmp_path}/m " in shown.stdout
    missing = run_cli(["evaluate", "--model", "~/no-such-model"])
    assert missing.exit_code == 2 and f"{tmp_path}/no-such-model" in missing.output


@pytest.mark.parametrize("tensorboard, report_to", [(True, ["tensorboard"]), (False, ["none"])])
def test_a_config_of_an_earlier_version_still_loads(tmp_path, tensorboard, report_to):
    from tfclm.config import load_config

    path = tmp_path / "tfclm.yaml"  # as tfclm wrote it before logging.report_to
    path.write_text(
        f"output_dir: {tmp_path}/run\nmodel:\n  name_or_path: {tmp_path}/model\n"
        f"logging:\n  tensorboard: {str(tensorboard).lower()}\n"
    )
    assert load_config(str(path)).logging.report_to == report_to


@pytest.mark.parametrize(
    "report_to, message",
    [
        ("[tensorbored]", "logging.report_to: unknown reporter 'tensorbored'; choose from tensorboard, mlflow, wandb"),
        ("[none, mlflow]", "logging.report_to: none means no reporter at all; write [none] alone"),
    ],
)
def test_report_to_names_only_known_reporters(tmp_path, report_to, message):
    with pytest.raises(ConfigError) as caught:
        load_config(DEFAULT_CONFIG, [f"logging.report_to={report_to}", f"output_dir={tmp_path}/run"])
    assert str(caught.value).startswith(message)
