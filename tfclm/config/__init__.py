"""The run configuration: typed dataclasses filled from YAML, overrides and flags, then checked.

Holds `schema` (sections and keys, with help text), `loading` (YAML, `--set`,
flags), `checks` (ranges and combinations) and `reference` (the key table).
Imports nothing from the other stages.
"""

from tfclm.config.checks import validate, validate_lora
from tfclm.config.loading import flatten, from_dict, load_config, parse_override, read_yaml, to_yaml
from tfclm.config.schema import (
    CONFIG_FILENAME,
    Config,
    DataConfig,
    EvaluateConfig,
    GenerateConfig,
    GenerationOptions,
    HubConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    PreferenceConfig,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "CONFIG_FILENAME",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "GenerationOptions",
    "HubConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "PreferenceConfig",
    "TokenizerConfig",
    "TrainConfig",
    "flatten",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "to_yaml",
    "validate",
    "validate_lora",
]
