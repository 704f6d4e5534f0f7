"""Reading a config: YAML file, then `--set section.key=value` overrides, then explicit CLI flags.

Later layers win. Unknown keys raise and list the valid ones; values of the
wrong type name the key and the type it wants. The resolved config is
written to `OUTPUT_DIR/tfclm.yaml`.
"""

import dataclasses
import os
import re
import types
import typing
from typing import Any, Literal, Optional

import yaml

from tfclm.config.checks import validate
from tfclm.config.schema import Config
from tfclm.errors import ConfigError

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


_TYPE_NAMES = {
    bool: "a boolean (true/false)",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping",
    list: "a list",
}


def type_name(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


_NOT = object()  # a value that is not of the type asked


def _number(value, hint):
    if isinstance(value, bool):
        return _NOT
    if hint is int:
        return value if isinstance(value, int) else _NOT
    if isinstance(value, (int, float)):
        return float(value)
    # PyYAML follows YAML 1.1, which reads 2e-5 (no dot) as a string.
    return float(value) if isinstance(value, str) and _FLOAT.match(value.strip()) else _NOT


def _as(value: Any, hint, key: str) -> Any:
    """`value` as `hint` says, or _NOT."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        return _NOT
    if origin is Literal:
        return value if value in typing.get_args(hint) else _NOT
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key) if isinstance(value, dict) else _NOT
    if hint in (int, float):
        return _number(value, hint)
    return value if isinstance(value, hint) else _NOT  # bool, list, str


def _coerce(value: Any, hint, key: str) -> Any:
    coerced = _as(value, hint, key)
    if coerced is _NOT:
        raise ConfigError(
            key,
            f"must be {type_name(hint)}, got {value!r} ({type(value).__name__}); fix it in the YAML file or with "
            f"--set {key}=...",
        )
    return coerced


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
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(
            "--config", f"config file {path!r} not found; pass an existing YAML file, such as configs/default.yaml"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "--config",
            f"{path!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8 (iconv -t utf-8), or pass a YAML file",
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            "--config", f"{path!r} is a directory; pass a YAML file, such as configs/default.yaml"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError("--config", f"{path!r} is not valid YAML{where}: {problem}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            "--config",
            f"{path!r} must hold a mapping of sections (data:, model:, train: ...), not {type(raw).__name__}",
        )
    return _upgrade(raw)


def _upgrade(raw: dict) -> dict:
    """Keys that earlier tfclm versions wrote into tfclm.yaml, in today's terms: their runs still load."""
    logging_section = raw.get("logging")
    if isinstance(logging_section, dict) and "tensorboard" in logging_section:
        tensorboard = logging_section.pop("tensorboard")  # replaced by logging.report_to
        logging_section.setdefault("report_to", ["tensorboard"] if tensorboard else ["none"])
    return raw


# Keys that may name a path on this machine: a leading ~ means the home directory, as in a shell.
PATH_KEYS = ("output_dir", "data.dataset", "data.validation_split", "tokenizer.name_or_path", "model.name_or_path")


def expand_paths(config: Config) -> Config:
    for dotted in PATH_KEYS:
        *parents, name = dotted.split(".")
        node = config
        for parent in parents:
            node = getattr(node, parent)
        value = getattr(node, name)
        if isinstance(value, str) and value.startswith("~"):
            setattr(node, name, os.path.expanduser(value))
    return config


def load_config(
    path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = (), flags: Optional[dict] = None
) -> Config:
    """Build a validated Config from a YAML file, `--set` overrides and explicit flags.

    `flags` maps dotted keys to values that the user gave explicitly on the
    command line; they win over the file and the overrides.
    """
    raw = read_yaml(path) if path else {}
    for text in overrides:
        _apply(raw, *parse_override(text))
    for key, value in (flags or {}).items():
        _apply(raw, key.split("."), value)
    config = expand_paths(_build(Config, raw))
    validate(config)
    return config


def from_dict(raw: dict) -> Config:
    config = expand_paths(_build(Config, raw))
    validate(config)
    return config


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"batch_size": 16}} -> {"train.batch_size": 16}: a config as the keys `--set` takes."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):  # an empty one adds no key
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
