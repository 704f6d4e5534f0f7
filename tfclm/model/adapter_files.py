"""A PEFT LoRA adapter dir's files: adapter_config.json read and checked, adapter_model.safetensors put into a TF
model adapted with the same settings (`tfclm.model.loading` loads the base they name)."""

import json
import os

from tfclm.config import LoraConfig
from tfclm.config.checks import validate_lora
from tfclm.errors import ConfigError, first_line
from tfclm.model import lora
from tfclm.model.pytorch_names import from_pytorch, pytorch_name


def read_adapter_config(directory: str, key: str) -> tuple[LoraConfig, str]:
    """(the LoRA settings, the base model) of a PEFT LoRA adapter directory, each value checked."""
    path = os.path.join(directory, lora.CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        settings, base = _adapter_settings(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(key, f"{path!r} is not a LoRA adapter config tfclm can read: {first_line(exc)}") from None
    try:
        validate_lora(settings)
    except ConfigError as exc:
        raise ConfigError(key, f"{path!r} holds a LoRA setting tfclm cannot use: {exc}") from None
    return settings, base


def _adapter_settings(raw) -> tuple[LoraConfig, str]:
    """PEFT's names in adapter_config.json to tfclm's; ValueError or TypeError naming the field at fault."""
    if not isinstance(raw, dict):
        raise ValueError(f"it holds a JSON {type(raw).__name__}, not an object of PEFT's fields")
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"peft_type is {raw.get('peft_type')!r}, and tfclm reads LORA adapters")
    targets = raw.get("target_modules")
    if not isinstance(targets, list):
        raise ValueError("target_modules is not a list of layer names")
    number = (int, float)
    for name, kinds in (("r", int), ("lora_alpha", number), ("lora_dropout", (*number, type(None)))):
        if name != "lora_dropout" and name not in raw:
            raise KeyError(name)
        if isinstance(raw.get(name), bool) or not isinstance(raw.get(name), kinds):
            raise TypeError(f"{name} is {raw.get(name)!r}, not a number")
    if raw["r"] < 1:
        raise ValueError(f"r is {raw['r']}, and an adapter's rank is at least 1")
    for name in ("fan_in_fan_out", "use_dora", "use_rslora"):
        if not isinstance(raw.get(name, False), bool):
            raise TypeError(f"{name} is {raw.get(name)!r}, not true or false")
    for name, meaning in (("use_dora", "DoRA"), ("use_rslora", "rank-stabilised scaling")):
        if raw.get(name):
            raise ValueError(f"{name} is true, and tfclm's adapters have no {meaning}; train it without")
    base = raw.get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ValueError("it names no base_model_name_or_path")
    settings = LoraConfig(
        rank=raw["r"],
        alpha=float(raw["lora_alpha"]),
        dropout=float(raw.get("lora_dropout") or 0.0),
        target_modules=targets,
        modules_to_save=raw.get("modules_to_save") or [],
    )
    return settings, base


def load_adapters(lm, directory: str, key: str) -> None:
    """Put the adapter weights saved in `directory` into `lm`, adapted with the same settings."""
    from safetensors.numpy import load_file

    path = os.path.join(directory, lora.WEIGHTS_FILE)
    try:
        saved = load_file(path)
    except Exception as exc:  # a missing, truncated or foreign file
        raise ConfigError(key, f"could not read {path!r}: {first_line(exc)}") from None
    expected = lora.adapter_state(lm)
    problems = [f"no {name}" for name in expected if name not in saved]
    problems += [f"an unexpected {name}" for name in saved if name not in expected]
    problems += [
        f"{name} of shape {saved[name].shape}, where the base takes {value.shape}"
        for name, value in expected.items()
        if name in saved and saved[name].shape != value.shape
    ]
    if problems:
        raise ConfigError(
            key,
            f"the adapter in {directory!r} does not fit its base ({len(problems)} problems; the first: "
            f"{problems[0]}); is base_model_name_or_path in {lora.CONFIG_FILE} the model it was trained on?",
        )
    adapter_ids = set()
    for path_, (_, adapter) in lora.adapters_of(lm).items():
        adapter.lora_a.assign(saved[f"{lora.PREFIX}{path_}.lora_A.weight"].T)
        adapter.lora_b.assign(saved[f"{lora.PREFIX}{path_}.lora_B.weight"].T)
        adapter_ids.update(id(v) for v in adapter.weights)
    for variable in lm.trainable_variables:
        if id(variable) not in adapter_ids:
            variable.assign(from_pytorch(variable, saved[lora.PREFIX + pytorch_name(variable)]))
