"""Checks that need more than a type: ranges and combinations of keys."""

import math

from tfclm.errors import ConfigError
from tfclm.files import check_apart

SEED_RANGE = (0, 2**32 - 1)  # what Keras and numpy take as a seed
GENERATION_SEEDS = (0, 2**31 - 1)  # the sampler's seed is an int32


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def generation_problems(options) -> list[tuple[str, str]]:
    """(key, message) for each decoding option out of range; `options` has GenerateConfig's fields."""
    o = options
    checks = [
        (o.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1, got {o.max_new_tokens}"),
        (o.min_new_tokens >= 0, "min_new_tokens", f"must be 0 or more, got {o.min_new_tokens}"),
        (
            o.min_new_tokens <= o.max_new_tokens,
            "min_new_tokens",
            f"({o.min_new_tokens}) must not exceed max_new_tokens ({o.max_new_tokens})",
        ),
        (o.top_k >= 0, "top_k", f"must be 0 (off) or more, got {o.top_k}"),
        (0.0 < o.top_p <= 1.0, "top_p", f"must be in (0, 1], got {o.top_p}"),
        (o.temperature > 0, "temperature", f"must be positive, got {o.temperature}"),
        (o.num_beams >= 1, "num_beams", f"must be at least 1, got {o.num_beams}"),
        (
            o.seed is None or GENERATION_SEEDS[0] <= o.seed <= GENERATION_SEEDS[1],
            "seed",
            f"must be a whole number from 0 to 2**31 - 1 ({GENERATION_SEEDS[1]:,}), or null, got {o.seed}",
        ),
        (o.repetition_penalty > 0, "repetition_penalty", f"must be positive (1.0: off), got {o.repetition_penalty}"),
        (o.num_return_sequences >= 1, "num_return_sequences", f"must be at least 1, got {o.num_return_sequences}"),
        (
            o.do_sample or o.num_return_sequences <= o.num_beams,
            "num_return_sequences",
            "greedy decoding gives one sequence per prompt (num_beams at most); sample (--do-sample) or ask for fewer",
        ),
    ]
    return [(key, message) for ok, key, message in checks if not ok]


def validate(config) -> None:
    """Checks that need more than a type: ranges and combinations of keys."""
    data, model, train, gen = config.data, config.model, config.train, config.generate
    _require(bool(config.output_dir), "output_dir", "must name a directory, such as runs/mine")
    _require(bool(data.dataset), "data.dataset", "must name a Hub dataset, a local file or folder, or builtin:pydoc")
    _require(bool(data.text_column), "data.text_column", "must name the text field, such as text or answers.text")
    _require(data.block_size >= 2, "data.block_size", f"must be at least 2, got {data.block_size}")
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
    _require(data.num_proc >= 1, "data.num_proc", f"must be at least 1, got {data.num_proc}")
    _require(
        not (data.streaming and config.train.pipeline == "recipe"),
        "train.pipeline",
        "recipe packs in memory through transformers' prepare_tf_dataset, and data.streaming: true reads through "
        "tfclm's stream; set train.pipeline: fast, or data.streaming: false",
    )
    _check_format(data, config.train)
    _require(
        data.max_documents is None or data.max_documents >= 2,
        "data.max_documents",
        "must be at least 2 (one to train on, one to evaluate) or null",
    )
    _require(
        config.tokenizer.vocab_size >= 260,
        "tokenizer.vocab_size",
        "must be at least 260 (the 256 bytes and the special tokens)",
    )
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
        SEED_RANGE[0] <= train.seed <= SEED_RANGE[1],
        "train.seed",
        f"must be a whole number from 0 to 2**32 - 1 ({SEED_RANGE[1]:,}), got {train.seed}",
    )
    _require(train.batch_size >= 1, "train.batch_size", f"must be at least 1, got {train.batch_size}")
    _require(train.learning_rate > 0, "train.learning_rate", f"must be positive, got {train.learning_rate}")
    _require(train.weight_decay >= 0, "train.weight_decay", f"must be 0 or more, got {train.weight_decay}")
    _require(0.0 <= train.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {train.warmup_ratio}")
    _require(train.clipnorm is None or train.clipnorm > 0, "train.clipnorm", "must be positive or null")
    _require(train.epochs >= 1, "train.epochs", f"must be at least 1, got {train.epochs}")
    _require(
        train.max_steps is None or train.max_steps >= 1,
        "train.max_steps",
        f"must be at least 1 or null, got {train.max_steps}",
    )
    _require(
        train.max_nonfinite_steps is None or train.max_nonfinite_steps >= 1,
        "train.max_nonfinite_steps",
        "must be at least 1, or null to never stop on skipped steps",
    )
    _require(
        train.loss_chunk_tokens >= 0,
        "train.loss_chunk_tokens",
        f"must be 0 (off) or a number of tokens such as 1024, got {train.loss_chunk_tokens}",
    )
    _require(
        train.gradient_accumulation_steps >= 1,
        "train.gradient_accumulation_steps",
        f"must be at least 1, got {train.gradient_accumulation_steps}",
    )
    _require(
        train.checkpoint_steps is None or train.checkpoint_steps >= 1,
        "train.checkpoint_steps",
        "must be at least 1, or null for epoch ends only",
    )
    _require(
        config.evaluate.batch_size >= 1, "evaluate.batch_size", f"must be at least 1, got {config.evaluate.batch_size}"
    )
    _require(
        all(isinstance(p, str) and p for p in gen.prompts), "generate.prompts", "must be a list of non-empty strings"
    )
    _require(
        config.logging.every_n_steps >= 1,
        "logging.every_n_steps",
        f"must be at least 1, got {config.logging.every_n_steps}",
    )
    _require(
        config.logging.sample_every_n_epochs is None or config.logging.sample_every_n_epochs >= 1,
        "logging.sample_every_n_epochs",
        "must be at least 1, or null",
    )
    ev = config.evaluate
    _require(ev.stride is None or ev.stride >= 1, "evaluate.stride", f"must be at least 1, or null, got {ev.stride}")
    _require(
        ev.max_length is None or ev.max_length >= 2,
        "evaluate.max_length",
        f"must be at least 2, or null, got {ev.max_length}",
    )
    _check_report_to(config.logging.report_to)
    hub = config.hub
    _require(
        hub.save_strategy != "steps" or (hub.save_steps or 0) >= 1,
        "hub.save_steps",
        "must be at least 1 with hub.save_strategy: steps",
    )
    _require(hub.max_retries >= 0, "hub.max_retries", f"must be 0 or more, got {hub.max_retries}")
    _require(
        hub.model_id is None or hub.model_id.count("/") <= 1,
        "hub.model_id",
        f"{hub.model_id!r} is not a repo id; write it as user/name",
    )
    for key, message in generation_problems(gen):
        raise ConfigError(f"generate.{key}", message)
    _check_lora(config.lora, config)
    check_apart(config.output_dir, _reads(config), "output_dir")


def _reads(config) -> dict:
    """{key: path} of what a run reads from disk: what its output dir must keep apart from."""
    data = config.data
    reads = {"model.name_or_path": config.model.name_or_path, "tokenizer.name_or_path": config.tokenizer.name_or_path}
    if not data.dataset.startswith("builtin:"):
        reads["data.dataset"] = data.dataset
    if isinstance(data.validation_split, str):
        reads["data.validation_split"] = data.validation_split
    return reads


def _check_format(data, train) -> None:
    needs = {"completion": "prompt_completion", "assistant": "messages"}.get(train.loss_on)
    _require(
        needs in (None, data.format),
        "train.loss_on",
        f"{train.loss_on} needs data.format: {needs} ({data.format} has no {train.loss_on}); use all or auto",
    )
    if data.format != "prompt_completion":
        for key in ("prompt_column", "prompt_template"):
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
    _require(lora.rank >= 0, "lora.rank", f"must be 0 (off) or a rank such as 8, got {lora.rank}")
    if lora.rank == 0:
        from tfclm.config.schema import LoraConfig

        changed = [key for key, value in vars(lora).items() if key != "rank" and value != getattr(LoraConfig(), key)]
        _require(
            not changed,
            f"lora.{changed[0] if changed else ''}",
            "is set but lora.rank is 0, which turns LoRA off; set lora.rank (such as 8) or remove it",
        )
        return
    _require(
        math.isfinite(lora.alpha) and lora.alpha > 0, "lora.alpha", f"must be positive (such as 16), got {lora.alpha}"
    )
    _require(0.0 <= lora.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {lora.dropout}")
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
