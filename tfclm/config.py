"""Typed run configuration: dataclasses filled from YAML, overrides, validation.

A config is read in three layers, later ones winning: the YAML file, then
`--set section.key=value` overrides, then explicit CLI flags. Unknown keys
raise and list the valid ones; values of the wrong type name the key and the
type it wants. The resolved config is written to `OUTPUT_DIR/tfclm.yaml`.
"""
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from tfclm.errors import ConfigError

CONFIG_FILENAME = "tfclm.yaml"
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class DataConfig:
    dataset: str = "builtin:pydoc"  # Hub id, local file or folder, or a built-in corpus
    config_name: Optional[str] = None  # the Hub dataset's configuration name
    split: str = "train"  # a split with an optional slice: "train[:5000]"
    text_column: str = "text"  # dotted path into nested fields: "answers.text"
    text_template: Optional[str] = None  # several fields in one document: "{title}\n{answers.text}"
    join_separator: str = " "  # joins a list of strings into one document
    txt_document: Literal["file", "paragraph", "line"] = "file"  # what one document is in .txt files
    # A seeded fraction of the documents (0.2), a split of the same dataset
    # ("validation", "test[:500]"), or a separate file or folder.
    validation_split: Union[float, str] = 0.2
    max_documents: Optional[int] = None  # keep only the first N documents (quick runs)
    block_size: int = 128  # tokens per training example
    pack: bool = True  # pack documents end to end; false: one document per example, padded or truncated
    streaming: bool = False  # read and pack on the fly, for corpora larger than memory
    num_proc: int = 2  # tokenization processes


@dataclass
class TokenizerConfig:
    name_or_path: Optional[str] = None  # default: the model's tokenizer, or a BPE trained on the corpus
    vocab_size: int = 8192  # size of the BPE trained on the corpus for a scratch model


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None  # Hub id or local directory to fine-tune
    config: Optional[dict] = None  # transformers config fields to train from scratch, with model_type
    trust_remote_code: bool = False


@dataclass
class TrainConfig:
    batch_size: int = 16
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.0  # fraction of the optimizer steps spent warming up
    clipnorm: Optional[float] = None  # global gradient norm clipping
    epochs: int = 3
    max_steps: Optional[int] = None  # stop after this many optimizer steps
    gradient_accumulation_steps: int = 1  # micro-batches of batch_size per optimizer step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16: CPUs with bf16, GPUs, TPUs; fp16: GPUs
    jit_compile: Union[bool, Literal["auto"]] = "auto"  # XLA for the train step: true, false, or auto (on GPU/TPU only)
    checkpoint_steps: Optional[int] = 500  # also checkpoint every N optimizer steps (null: epoch ends only)
    seed: int = 42
    pipeline: Literal["fast", "recipe"] = "fast"
    # tf.distribute: auto picks tpu when train.tpu is set, multiworker when TF_CONFIG
    # names several workers, mirrored with several GPUs, else default. batch_size is per replica.
    strategy: Literal["auto", "default", "mirrored", "multiworker", "tpu"] = "auto"
    tpu: Optional[str] = None  # TPU name or grpc:// address; "local" on a TPU VM


@dataclass
class EvaluateConfig:
    batch_size: int = 16
    before_training: bool = True  # also measure the untrained model's perplexity


@dataclass
class GenerationOptions:
    """Decoding controls, for `tfclm.generate`, the generate command and the config's `generate:` section."""

    max_new_tokens: int = 100
    min_new_tokens: int = 0
    do_sample: bool = True
    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: Optional[int] = None  # default: train.seed in a run, a random one elsewhere

    def validate(self) -> None:
        for key, message in generation_problems(self):
            raise ConfigError(key, message)


@dataclass
class GenerateConfig(GenerationOptions):
    """The samples printed during and after training."""

    prompts: list = field(default_factory=lambda: ["The"])


@dataclass
class HubConfig:
    push: bool = False  # push to the Hub during and after training
    model_id: Optional[str] = None  # "user/name"; default: the output dir's name under your user
    private: bool = False
    save_strategy: Literal["epoch", "steps", "no"] = "epoch"  # when to push during training
    save_steps: Optional[int] = None  # with save_strategy: steps
    checkpoint: bool = False  # also push the resumable checkpoints
    max_retries: int = 3  # per push, with exponential backoff; a push that still fails is reported


@dataclass
class LoggingConfig:
    tensorboard: bool = True  # scalars and samples in OUTPUT_DIR/logs
    every_n_steps: int = 10  # step-level scalars and curve points
    sample_every_n_epochs: Optional[int] = 1  # sample generate.prompts during training; null: only at the end
    curves: bool = True  # OUTPUT_DIR/training_curves.png


@dataclass
class Config:
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list"}


def _type_name(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, key)
                except ConfigError:
                    pass
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, value, key)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads 2e-5 (no dot) as a string.
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)
    elif hint is list:
        if isinstance(value, list):
            return value
    elif isinstance(value, hint):
        return value
    raise ConfigError(key, f"must be {_type_name(hint)}, got {value!r} ({type(value).__name__}); fix it in the YAML file or with --set {key}=...")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(where, f"unknown key; valid keys{' in ' + prefix if prefix else ''} are: {', '.join(names)}")
    values = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.batch_size=8` -> (["train", "batch_size"], 8); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"{text!r} is not of the form section.key=value, such as train.batch_size=8")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError("--config", f"config file {path!r} not found; pass an existing YAML file, such as configs/default.yaml") from None
    except IsADirectoryError:
        raise ConfigError("--config", f"{path!r} is a directory; pass a YAML file, such as configs/default.yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError("--config", f"{path!r} is not valid YAML{where}: {problem}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{path!r} must hold a mapping of sections (data:, model:, train: ...), not {type(raw).__name__}")
    return raw


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = (), flags: Optional[dict] = None) -> Config:
    """Build a validated Config from a YAML file, `--set` overrides and explicit flags.

    `flags` maps dotted keys to values that the user gave explicitly on the
    command line; they win over the file and the overrides.
    """
    raw = read_yaml(path) if path else {}
    for text in overrides:
        _apply(raw, *parse_override(text))
    for key, value in (flags or {}).items():
        _apply(raw, key.split("."), value)
    config = _build(Config, raw)
    validate(config)
    return config


def from_dict(raw: dict) -> Config:
    config = _build(Config, raw)
    validate(config)
    return config


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def generation_problems(options) -> list[tuple[str, str]]:
    """(key, message) for each decoding option out of range; `options` has GenerateConfig's fields."""
    o = options
    checks = [
        (o.max_new_tokens >= 0, "max_new_tokens", f"must be 0 or more, got {o.max_new_tokens}"),
        (o.min_new_tokens >= 0, "min_new_tokens", f"must be 0 or more, got {o.min_new_tokens}"),
        (o.min_new_tokens <= o.max_new_tokens, "min_new_tokens", f"({o.min_new_tokens}) must not exceed max_new_tokens ({o.max_new_tokens})"),
        (o.top_k >= 0, "top_k", f"must be 0 (off) or more, got {o.top_k}"),
        (0.0 < o.top_p <= 1.0, "top_p", f"must be in (0, 1], got {o.top_p}"),
        (o.temperature > 0, "temperature", f"must be positive, got {o.temperature}"),
        (o.num_beams >= 1, "num_beams", f"must be at least 1, got {o.num_beams}"),
        (o.repetition_penalty > 0, "repetition_penalty", f"must be positive (1.0: off), got {o.repetition_penalty}"),
        (o.num_return_sequences >= 1, "num_return_sequences", f"must be at least 1, got {o.num_return_sequences}"),
        (
            o.do_sample or o.num_return_sequences <= o.num_beams,
            "num_return_sequences",
            "greedy decoding gives one sequence per prompt (num_beams at most); sample (--do-sample) or ask for fewer",
        ),
    ]
    return [(key, message) for ok, key, message in checks if not ok]


def validate(config: Config) -> None:
    """Checks that need more than a type: ranges and combinations of keys."""
    data, model, train, gen = config.data, config.model, config.train, config.generate
    _require(bool(config.output_dir), "output_dir", "must name a directory, such as runs/mine")
    _require(bool(data.dataset), "data.dataset", "must name a Hub dataset, a local file or folder, or builtin:pydoc")
    _require(bool(data.text_column), "data.text_column", "must name the text field, such as text or answers.text")
    _require(data.block_size >= 2, "data.block_size", f"must be at least 2, got {data.block_size}")
    if isinstance(data.validation_split, float):
        _require(0.0 < data.validation_split < 1.0, "data.validation_split", f"must be a fraction between 0 and 1 (such as 0.2), a split name or a file, got {data.validation_split}")
    else:
        _require(bool(data.validation_split.strip()), "data.validation_split", "must be a fraction such as 0.2, a split name such as validation, or a file")
    _require(
        not data.streaming or config.train.max_steps is not None,
        "train.max_steps",
        "is required with data.streaming: true (a stream has no known length to plan the schedule by); set it, such as --max-steps 1000",
    )
    _require(data.num_proc >= 1, "data.num_proc", f"must be at least 1, got {data.num_proc}")
    _require(data.max_documents is None or data.max_documents >= 2, "data.max_documents", "must be at least 2 (one to train on, one to evaluate) or null")
    _require(config.tokenizer.vocab_size >= 260, "tokenizer.vocab_size", "must be at least 260 (the 256 bytes and the special tokens)")
    _require(
        (model.name_or_path is None) != (model.config is None),
        "model",
        "set exactly one of model.name_or_path (fine-tune a Hub id or directory) and model.config (train from scratch)",
    )
    if model.config is not None:
        _require("model_type" in model.config, "model.config.model_type", "is missing; name the architecture, such as gpt2")
    _require(train.batch_size >= 1, "train.batch_size", f"must be at least 1, got {train.batch_size}")
    _require(train.learning_rate > 0, "train.learning_rate", f"must be positive, got {train.learning_rate}")
    _require(train.weight_decay >= 0, "train.weight_decay", f"must be 0 or more, got {train.weight_decay}")
    _require(0.0 <= train.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {train.warmup_ratio}")
    _require(train.clipnorm is None or train.clipnorm > 0, "train.clipnorm", "must be positive or null")
    _require(train.epochs >= 1, "train.epochs", f"must be at least 1, got {train.epochs}")
    _require(train.max_steps is None or train.max_steps >= 1, "train.max_steps", f"must be at least 1 or null, got {train.max_steps}")
    _require(train.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps", f"must be at least 1, got {train.gradient_accumulation_steps}")
    _require(train.checkpoint_steps is None or train.checkpoint_steps >= 1, "train.checkpoint_steps", "must be at least 1, or null for epoch ends only")
    _require(config.evaluate.batch_size >= 1, "evaluate.batch_size", f"must be at least 1, got {config.evaluate.batch_size}")
    _require(all(isinstance(p, str) and p for p in gen.prompts), "generate.prompts", "must be a list of non-empty strings")
    _require(config.logging.every_n_steps >= 1, "logging.every_n_steps", f"must be at least 1, got {config.logging.every_n_steps}")
    _require(config.logging.sample_every_n_epochs is None or config.logging.sample_every_n_epochs >= 1, "logging.sample_every_n_epochs", "must be at least 1, or null")
    hub = config.hub
    _require(hub.save_strategy != "steps" or (hub.save_steps or 0) >= 1, "hub.save_steps", "must be at least 1 with hub.save_strategy: steps")
    _require(hub.max_retries >= 0, "hub.max_retries", f"must be 0 or more, got {hub.max_retries}")
    _require(hub.model_id is None or hub.model_id.count("/") <= 1, "hub.model_id", f"{hub.model_id!r} is not a repo id; write it as user/name")
    for key, message in generation_problems(gen):
        raise ConfigError(f"generate.{key}", message)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)
