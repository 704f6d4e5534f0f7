"""The model and its optimizer.

A model comes from a Hub id or local directory (`from_pretrained`) or from a
config (`from_config`, trained from scratch). The optimizer is transformers'
`AdamWeightDecay` with weight decay on weight matrices and embeddings only:
the stock exclusion list ("LayerNorm", "layer_norm", "bias") misses GPT-2's
`ln_1`, `ln_2` and `ln_f`, so the exclusions are read off the model's own
layers instead of guessed from names.
"""
import os

from transformers import AdamWeightDecay, AutoConfig, TFAutoModelForCausalLM, WarmUp

from tfclm.backend import load
from tfclm.config import ModelConfig, TrainConfig
from tfclm.errors import ConfigError

tf, keras = load()

WEIGHT_FILES = ("tf_model.h5", "tf_model.h5.index.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_model_dir(path: str, key: str) -> None:
    """A local model directory must exist and hold weights; say which, and how to fix it."""
    if not os.path.isdir(path):
        raise ConfigError(key, f"model directory {path!r} does not exist; pass the output_dir of a tfclm fit or a save_pretrained folder")
    if not any(os.path.exists(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise ConfigError(key, f"{path!r} holds no model weights ({', '.join(WEIGHT_FILES[:3])}); pass a folder written by tfclm fit or save_pretrained")


def _looks_local(name: str) -> bool:
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def from_pretrained(name_or_path: str, trust_remote_code: bool = False, key: str = "model.name_or_path"):
    if _looks_local(name_or_path):
        check_model_dir(name_or_path, key)
    try:
        return TFAutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, ValueError, HTTP errors: all mean "could not load this model"
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ConfigError(key, f"could not load {name_or_path!r}: {type(exc).__name__}: {text}; check the id or directory") from None


def n_positions(model) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def load_model(model_config: ModelConfig, tokenizer, block_size: int):
    if model_config.name_or_path:
        model = from_pretrained(model_config.name_or_path, model_config.trust_remote_code)
    else:
        fields = dict(model_config.config)
        model_type = fields.pop("model_type")
        fields.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
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
        raise ConfigError("data.block_size", f"{block_size} is longer than the model's {limit} positions; set data.block_size to {limit} or less")
    return model


def no_decay_variables(model) -> list:
    """Biases and every normalization layer's variables: weight decay would only shrink them toward 0."""
    norm_ids = set()
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Layer) and "norm" in type(layer).__name__.lower():
            norm_ids.update(id(v) for v in layer.weights)
    return [v for v in model.trainable_variables if id(v) in norm_ids or v.name.split("/")[-1].startswith("bias")]


def learning_rate_schedule(train: TrainConfig, total_steps: int):
    warmup = int(round(train.warmup_ratio * total_steps))
    decay_steps = max(1, total_steps - warmup)
    if train.lr_schedule == "linear":
        schedule = keras.optimizers.schedules.PolynomialDecay(train.learning_rate, decay_steps, end_learning_rate=0.0)
    elif train.lr_schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps)
    else:
        schedule = train.learning_rate
    if warmup > 0:
        if not callable(schedule):
            constant = train.learning_rate
            schedule = lambda step: constant  # noqa: E731 - WarmUp wants a callable
        schedule = WarmUp(initial_learning_rate=train.learning_rate, decay_schedule_fn=schedule, warmup_steps=warmup)
    return schedule


def make_optimizer(train: TrainConfig, model, total_steps: int) -> AdamWeightDecay:
    # AdamWeightDecay matches these as substrings of variable names; full names
    # (".../h_._1/ln_1/gamma:0") match only themselves.
    excluded = [v.name for v in no_decay_variables(model)]
    return AdamWeightDecay(
        learning_rate=learning_rate_schedule(train, total_steps),
        weight_decay_rate=train.weight_decay,
        exclude_from_weight_decay=excluded,
        global_clipnorm=train.clipnorm,
    )


def load_trained(model_dir: str, key: str = "--model"):
    """(model, tokenizer) from a tfclm output dir or any save_pretrained folder."""
    from tfclm.tokenizer import pretrained_tokenizer

    check_model_dir(model_dir, key)
    return from_pretrained(model_dir, key=key), pretrained_tokenizer(model_dir, False, key)
