"""`model.config`: the transformers config of a model trained from scratch, each key and value checked first.

transformers' config classes take any keyword (a misspelt `n_layers` becomes
an unused attribute, and the default layer count trains) and check few
values (a negative layer count builds a model with no layers; heads that do
not divide the width fail deep inside the model's constructor). Here a key
must be one of the class's fields, and sizes, rates, activations and their
combinations must make sense, before anything is written.

>>> scratch_config({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2}).num_hidden_layers
2
>>> scratch_config({"model_type": "gpt2", "n_layers": 2})
Traceback (most recent call last):
...
tfclm.errors.ConfigError: model.config.n_layers: is not a gpt2 config field; did you mean n_layer or num_hidden_layers?
"""

import difflib
import inspect
import math

from tfclm.errors import ConfigError, first_line

# Sizes and counts by transformers' common names (`attribute_map` leads a family's own names to them).
SIZES = {
    "num_hidden_layers", "hidden_size", "num_attention_heads", "max_position_embeddings", "intermediate_size",
    "num_key_value_heads", "ffn_dim", "n_inner", "dff", "head_dim", "rotary_dim", "d_inner", "d_head",
    "word_embed_proj_dim", "input_embedding_size", "output_embedding_size", "embedding_size",
}  # fmt: skip
ACTIVATIONS = ("activation_function", "hidden_act", "afn", "ff_activation")


def scratch_config(fields: dict, **settings):
    """The config `fields` (with `model_type`) describe, `settings` (vocab size, the family's causal settings)
    applied over them; a `ConfigError` naming the `model.config` key at fault."""
    from transformers import CONFIG_MAPPING

    fields = dict(fields)
    model_type = fields.pop("model_type")
    config_class = CONFIG_MAPPING[model_type]
    default = config_class()
    for key, value in fields.items():
        _check_field(config_class, default, key, value)
    try:
        config = config_class(**fields, **settings)
    except Exception as exc:  # the class's own checks: ValueError, AssertionError, TypeError
        raise ConfigError(
            "model.config", f"transformers' {config_class.__name__} refuses it: {first_line(exc)}"
        ) from None
    _check_shapes(config, fields)
    return config


def _known_keys(config_class, default) -> set:
    parameters = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    return parameters | set(vars(default)) | set(config_class.attribute_map)


def _check_field(config_class, default, key: str, value) -> None:
    model_type, where = config_class.model_type, f"model.config.{key}"
    known = _known_keys(config_class, default)
    if key not in known:
        close = difflib.get_close_matches(key, sorted(k for k in known if not k.startswith("_")), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"see {config_class.__name__}'s fields"
        raise ConfigError(where, f"is not a {model_type} config field; {hint}")
    name = config_class.attribute_map.get(key, key)
    common = next((k for k, v in config_class.attribute_map.items() if v == name), name)
    stored = getattr(default, name, None)
    if isinstance(stored, bool) and not isinstance(value, bool):
        raise ConfigError(where, f"must be true or false, got {value!r}")
    if common in SIZES or (isinstance(stored, int) and not isinstance(stored, bool)):
        if value is None and (stored is None or common not in SIZES):  # off, or its default (GPT-2's n_inner)
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"must be a whole number, got {value!r}")
        if common in SIZES and value < 1:
            raise ConfigError(where, f"must be at least 1, got {value}")
    elif isinstance(stored, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(where, f"must be a number, got {value!r}")
    if "drop" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_rate(config_class, key, value)
    if name in ACTIVATIONS:
        from transformers.activations_tf import ACT2FN

        from tfclm.model.llama.layers import ACTIVATIONS as TFCLM_NAMES  # PyTorch's names tfclm's classes map

        if value not in ACT2FN and value not in TFCLM_NAMES:
            raise ConfigError(where, f"{value!r} is not an activation transformers' TF models know; use one of "
                                     f"{', '.join(sorted(ACT2FN))}")  # fmt: skip


def _check_rate(config_class, key: str, value) -> None:
    where = f"model.config.{key}"
    if "layerdrop" in key:
        if value != 0:
            # Its TF classes draw, in Python, which layers to skip: once, when the train step is traced.
            raise ConfigError(where, f"{config_class.model_type}'s TF class would skip the same layers at every "
                                     f"step (it draws them once, as the step is compiled); set it to 0")  # fmt: skip
        return
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(where, f"is a dropout rate, which must be in [0, 1), got {value}")


def _check_shapes(config, fields: dict) -> None:
    """Sizes that must divide each other, named by the keys the user wrote."""

    def key_of(name: str) -> str:
        stored = config.attribute_map.get(name, name)
        return next((k for k in (name, stored) if k in fields), stored)

    width, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(width, int) and isinstance(heads, int) and getattr(config, "head_dim", None) is None:
        if width % heads:
            raise ConfigError(
                f"model.config.{key_of('num_attention_heads')}",
                f"{heads} heads do not divide the width {key_of('hidden_size')} {width}; pick a divisor of {width}",
            )
    kv_heads = getattr(config, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads:
        raise ConfigError(
            f"model.config.{key_of('num_key_value_heads')}",
            f"{kv_heads} key/value heads do not divide the {heads} attention heads; pick a divisor of {heads}",
        )
