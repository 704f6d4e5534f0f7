"""Checks that need more than a type: ranges and combinations of keys."""

from tfclm.config import bounds
from tfclm.config.schema import LoraConfig
from tfclm.errors import ConfigError
from tfclm.files import check_apart

# Sections whose numbers are checked against their fields' bounds; generate's (GenerationOptions) check themselves.
BOUNDED = ("data", "tokenizer", "train", "lora", "preference", "evaluate", "hub", "logging")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate(config) -> None:
    """Checks that need more than a type: each number against its field's bounds, then combinations of keys."""
    data, model, train, gen = config.data, config.model, config.train, config.generate
    for key, message in [p for name in BOUNDED for p in bounds.problems(getattr(config, name), name)]:
        raise ConfigError(key, message)
    _require(bool(config.output_dir), "output_dir", "must name a directory, such as runs/mine")
    _require(bool(data.dataset), "data.dataset", "must name a Hub dataset, a local file or folder, or builtin:pydoc")
    _require(bool(data.text_column), "data.text_column", "must name the text field, such as text or answers.text")
    _require(
        train.peak_tflops in ("auto", None) or train.peak_tflops > 0,
        "train.peak_tflops",
        f"must be a positive number of TFLOP/s (such as 989.4, an H100's bf16), auto or null; got {train.peak_tflops}",
    )
    if isinstance(data.validation_split, float):
        _require(
            0.0 < data.validation_split < 1.0,
            "data.validation_split",
            f"must be a fraction between 0 and 1 (such as 0.2), a split name or a file, got {data.validation_split}",
        )
    else:
        _require(
            bool(data.validation_split.strip()),
            "data.validation_split",
            "must be a fraction such as 0.2, a split name such as validation, or a file",
        )
    _require(
        not data.streaming or config.train.max_steps is not None,
        "train.max_steps",
        "is required with data.streaming: true (a stream has no known length to plan the schedule by); set it, such "
        "as --max-steps 1000",
    )
    _require(
        not (data.streaming and config.train.pipeline == "recipe"),
        "train.pipeline",
        "recipe packs in memory through transformers' prepare_tf_dataset, and data.streaming: true reads through "
        "tfclm's stream; set train.pipeline: fast, or data.streaming: false",
    )
    _check_format(data, config.train)
    _require(
        (model.name_or_path is None) != (model.config is None),
        "model",
        "set exactly one of model.name_or_path (fine-tune a Hub id or directory) and model.config (train from scratch)",
    )
    if model.config is not None:
        _require(
            "model_type" in model.config, "model.config.model_type", "is missing; name the architecture, such as gpt2"
        )
    _require(
        all(isinstance(p, str) and p for p in gen.prompts), "generate.prompts", "must be a list of non-empty strings"
    )
    _check_report_to(config.logging.report_to)
    hub = config.hub
    _require(
        hub.save_strategy != "steps" or (hub.save_steps or 0) >= 1,
        "hub.save_steps",
        "must be at least 1 with hub.save_strategy: steps",
    )
    _require(
        hub.model_id is None or hub.model_id.count("/") <= 1,
        "hub.model_id",
        f"{hub.model_id!r} is not a repo id; write it as user/name",
    )
    for key, message in gen.problems("generate"):
        raise ConfigError(key, message)
    _check_lora(config.lora, config)
    _check_preference(config)
    check_apart(config.output_dir, _reads(config), "output_dir")


def _reads(config) -> dict:
    """{key: path} of what a run reads from disk: what its output dir must keep apart from."""
    data = config.data
    reads = {"model.name_or_path": config.model.name_or_path, "tokenizer.name_or_path": config.tokenizer.name_or_path}
    if not data.dataset.startswith("builtin:"):
        reads["data.dataset"] = data.dataset
    if isinstance(data.validation_split, str):
        reads["data.validation_split"] = data.validation_split
    if config.preference.reference:
        reads["preference.reference"] = config.preference.reference
    return reads


def _check_preference(config) -> None:
    """The preference: section is for data.format preference, and takes only what its loss can honour."""
    pref, data, lora = config.preference, config.data, config.lora
    if data.format != "preference":
        defaults = vars(type(pref)())
        changed = [k for k, v in vars(pref).items() if v != defaults[k]]
        _require(
            not changed,
            f"preference.{changed[0] if changed else ''}",
            f"is set but data.format is {data.format}; set data.format: preference, or remove it",
        )
        return
    _require(
        pref.label_smoothing == 0 or pref.loss_type == "sigmoid",
        "preference.label_smoothing",
        f"applies to loss_type sigmoid only, and this run's is {pref.loss_type}; set it to 0 or use sigmoid",
    )
    _require(
        config.model.name_or_path is not None or pref.reference is not None,
        "preference.reference",
        "a model built from model.config has no starting model to be the reference; name one here, or align a "
        "pretrained model (model.name_or_path)",
    )
    # TRL's default (disable_dropout): the policy scores pairs as the reference does, without dropout.
    _require(
        lora.dropout == 0,
        "lora.dropout",
        "preference tuning scores both answers without dropout (as TRL does by default); set it to 0",
    )
    _require(
        not (lora.rank and lora.modules_to_save and pref.reference is None and not pref.precompute_reference),
        "lora.modules_to_save",
        "layers trained in full change the adapters-off reference as they train; set "
        "preference.precompute_reference: true (the reference scored before training), or leave them out",
    )


def _check_format(data, train) -> None:
    _require(
        data.format != "preference" or train.loss_on == "auto",
        "train.loss_on",
        "preference tuning scores the answers' tokens, chosen and rejected; set it to auto",
    )
    needs = {"completion": "prompt_completion", "assistant": "messages"}.get(train.loss_on)
    _require(
        needs in (None, data.format),
        "train.loss_on",
        f"{train.loss_on} needs data.format: {needs} ({data.format} has no {train.loss_on}); use all or auto",
    )
    if data.format != "prompt_completion":
        # a preference record's prompt is a field too (default "prompt"); only the template is prompt_completion's
        for key in ("prompt_template",) if data.format == "preference" else ("prompt_column", "prompt_template"):
            _require(
                getattr(data, key) is None,
                f"data.{key}",
                f"is set but data.format is {data.format}; set data.format: prompt_completion, or remove it",
            )
    if data.format == "text":
        return
    if data.format == "prompt_completion":
        _require(
            (data.prompt_column is None) != (data.prompt_template is None),
            "data.prompt_column",
            "set exactly one of data.prompt_column (a field) and data.prompt_template (such as 'Question: {title}\\n')",
        )
        _require(
            data.completion_pick in ("all", "first") or data.completion_pick.startswith("max:"),
            "data.completion_pick",
            f"must be all, first or max:FIELD (such as max:answers.score), got {data.completion_pick!r}",
        )
    _require(not data.streaming, "data.streaming", "works with data.format text only; set it to false")
    _require(train.pipeline == "fast", "train.pipeline", f"recipe packs documents; {data.format} examples need fast")


def validate_lora(lora) -> None:
    """The lora section's own values, with or without a run around them."""
    for key, message in bounds.problems(lora, "lora"):
        raise ConfigError(key, message)
    if lora.rank == 0:
        changed = [key for key, value in vars(lora).items() if key != "rank" and value != getattr(LoraConfig(), key)]
        _require(
            not changed,
            f"lora.{changed[0] if changed else ''}",
            "is set but lora.rank is 0, which turns LoRA off; set lora.rank (such as 8) or remove it",
        )
        return
    for key in ("target_modules", "modules_to_save"):
        names = getattr(lora, key)
        _require(
            names is None or (isinstance(names, list) and all(isinstance(n, str) and n for n in names)),
            f"lora.{key}",
            "must be a list of layer names, such as [c_attn, c_proj]",
        )
    _require(lora.target_modules != [], "lora.target_modules", "is empty; name layers, or null for the family's")


def _check_lora(lora, config) -> None:
    validate_lora(lora)
    if lora.rank == 0:
        return
    _require(
        config.model.name_or_path is not None,
        "lora.rank",
        "LoRA adapts a pretrained model, and model.config builds a random one; set model.name_or_path, or lora.rank 0",
    )
    _require(
        lora.base_precision == "fp32" or not lora.modules_to_save,
        "lora.modules_to_save",
        "trains layers in full, in float32, and lora.base_precision bf16 loads the base in bfloat16; leave one out",
    )
    _require(
        lora.base_precision == "fp32" or config.train.precision == "bf16",
        "lora.base_precision",
        f"bf16 needs train.precision bf16 (the frozen weights are read in bfloat16), got {config.train.precision}",
    )


REPORTERS = ("tensorboard", "mlflow", "wandb")


def _check_report_to(report_to: list) -> None:
    """Known reporters only, and each one's package installed: found here, not at the first metric."""
    import importlib.util

    unknown = [r for r in report_to if r not in (*REPORTERS, "none")]
    _require(
        not unknown,
        "logging.report_to",
        f"unknown reporter {unknown[0] if unknown else ''!r}; choose from {', '.join(REPORTERS)}, or [none]",
    )
    _require(
        "none" not in report_to or report_to == ["none"],
        "logging.report_to",
        "none means no reporter at all; write [none] alone, or list the reporters",
    )
    for name in ("mlflow", "wandb"):
        _require(
            name not in report_to or importlib.util.find_spec(name) is not None,
            "logging.report_to",
            f"{name} is not installed; pip install 'tfclm[{name}]', or leave {name} out",
        )
