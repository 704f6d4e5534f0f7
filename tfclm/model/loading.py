"""Loading a causal LM: from a Hub id or local directory (`from_pretrained`), or
built from a config to train from scratch (`from_config`), and a trained
output dir back with its tokenizer (`load_trained`).
"""

import os

from transformers import AutoConfig, TFAutoModelForCausalLM

from tfclm.config import ModelConfig
from tfclm.data.tokenizer import pretrained_tokenizer
from tfclm.errors import ConfigError, first_line
from tfclm.files import looks_local

WEIGHT_FILES = (
    "tf_model.h5",
    "tf_model.h5.index.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)


def check_model_dir(path: str, key: str) -> None:
    """A local model directory must exist and hold weights; say which, and how to fix it."""
    if not os.path.isdir(path):
        raise ConfigError(
            key,
            f"model directory {path!r} does not exist; pass the output_dir of a tfclm fit or a save_pretrained folder",
        )
    if not any(os.path.exists(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise ConfigError(
            key,
            f"{path!r} holds no model weights ({', '.join(WEIGHT_FILES[:3])}); pass a folder written by tfclm fit or "
            f"save_pretrained",
        )


def from_pretrained(name_or_path: str, trust_remote_code: bool = False, key: str = "model.name_or_path"):
    if looks_local(name_or_path):
        check_model_dir(name_or_path, key)
    try:
        return TFAutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, ValueError, HTTP errors: all mean "could not load this model"
        raise ConfigError(
            key, f"could not load {name_or_path!r}: {first_line(exc)}; check the id or directory"
        ) from None


def n_positions(model) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def load_model(model_config: ModelConfig, tokenizer, block_size: int):
    if model_config.name_or_path:
        model = from_pretrained(model_config.name_or_path, model_config.trust_remote_code)
    else:
        fields = dict(model_config.config)
        model_type = fields.pop("model_type")
        fields.update(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        try:
            config = AutoConfig.for_model(model_type, **fields)
        except ValueError as exc:
            raise ConfigError("model.config.model_type", f"{exc}") from None
        model = TFAutoModelForCausalLM.from_config(config)
    model.build_in_name_scope()
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    limit = n_positions(model)
    if limit is not None and block_size > limit:
        raise ConfigError(
            "data.block_size",
            f"{block_size} is longer than the model's {limit} positions; set data.block_size to {limit} or less",
        )
    return model


def load_trained(model_dir: str, key: str = "--model"):
    """(model, tokenizer) from a tfclm output dir or any save_pretrained folder."""
    check_model_dir(model_dir, key)
    model, tokenizer = from_pretrained(model_dir, key=key), pretrained_tokenizer(model_dir, False, key)
    if len(tokenizer) > model.config.vocab_size:
        # Ids past the embedding table are an error without XLA and silent garbage under it.
        raise ConfigError(
            key,
            f"the tokenizer in {model_dir!r} has {len(tokenizer)} tokens, more than the model's "
            f"{model.config.vocab_size} embeddings; save the tokenizer the model was trained with beside it",
        )
    return model, tokenizer
