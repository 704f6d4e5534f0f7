"""Loading a causal LM: from a Hub id or local directory (`from_pretrained`), or
built from a config to train from scratch (`from_config`), and a trained
output dir back with its tokenizer (`load_trained`).
"""

import contextlib
import os

from transformers import AutoConfig, TFAutoModelForCausalLM

from tfclm.backend import tf
from tfclm.config import LoraConfig, ModelConfig
from tfclm.data.tokenizer import pretrained_tokenizer
from tfclm.errors import ConfigError, first_line
from tfclm.files import looks_local
from tfclm.model import families, lora
from tfclm.model.adapter_files import load_adapters, read_adapter_config
from tfclm.model.scratch_config import scratch_config

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


def pretrained_config(name_or_path: str, trust_remote_code: bool = False, key: str = "model.name_or_path"):
    if looks_local(name_or_path):
        check_model_dir(name_or_path, key)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, ValueError, HTTP errors: all mean "could not load this model"
        if "custom code" in str(exc) and not trust_remote_code:
            raise ConfigError(
                "model.trust_remote_code",
                f"{name_or_path!r} comes with its own model code; set model.trust_remote_code: true if you trust it",
            ) from None
        raise ConfigError(
            key, f"could not load {name_or_path!r}: {first_line(exc)}; check the id or directory"
        ) from None


def from_pretrained(name_or_path: str, config, trust_remote_code: bool = False, key: str = "model.name_or_path"):
    try:
        return TFAutoModelForCausalLM.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ConfigError(
            key, f"could not load {name_or_path!r}: {first_line(exc)}; check the id or directory"
        ) from None


def n_positions(model) -> int | None:
    """How many positions the model can take, by its family's rule; None: no limit."""
    return families.family(model.config).positions_limit(model.config)


def check_family(model_config: ModelConfig, train) -> families.Family:
    """Before any data is read: the configured model's family, known to train as `train` (a TrainConfig) asks."""
    if model_config.name_or_path:
        config = pretrained_config(model_config.name_or_path, model_config.trust_remote_code)
        model_type, key = config.model_type, "model.name_or_path"
    else:
        config, model_type, key = None, model_config.config["model_type"], "model.config.model_type"
    found = families.check(
        model_type,
        key,
        train.precision,
        model_config.trust_remote_code,
        chunked_loss=train.loss_chunk_tokens > 0,
        recompute=train.recompute == "blocks",
    )
    if not model_config.name_or_path:
        config, key = scratch_config(model_config.config, **found.causal_settings), "model.config"
    if found.tfclm_classes:
        from tfclm.model.llama.layers import switches

        try:
            switches(config)  # what tfclm's own classes do not implement, before any weight loads
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    return found


def _match_tokenizer(config, tokenizer, scratch: bool) -> None:
    """A scratch model takes the tokenizer's special ids; a pretrained one keeps its own and fills what it lacks.

    The model's pad id is not cosmetic: the RoBERTa-likes skip it when they
    number positions, and OPT's TF embeddings are drawn with it.
    """
    pad_id = families.family(config).pad_id
    if pad_id is not None and tokenizer.pad_token_id != pad_id:
        raise ConfigError(
            "tokenizer.name_or_path",
            f"{config.model_type}'s TF class takes id {pad_id} as padding and skips it when it numbers positions, but "
            f"this tokenizer pads with id {tokenizer.pad_token_id} ({tokenizer.pad_token!r}); use the model's own "
            f"tokenizer, or let tfclm train one",
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name)
        if value is not None and (scratch or getattr(config, name, None) is None):
            setattr(config, name, value)


def _draw_scratch_embeddings(model, std: float) -> None:
    embeddings = model.get_input_embeddings().weights[0]
    embeddings.assign(tf.random.normal(embeddings.shape, stddev=std, dtype=embeddings.dtype))


@contextlib.contextmanager
def built_in_bfloat16():
    """Variables created in bfloat16 (Keras' pure bfloat16 policy): a frozen base that never exists in float32."""
    from tfclm.backend import keras

    callers = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(callers)


def load_model(
    model_config: ModelConfig,
    tokenizer,
    block_size: int,
    precision: str = "fp32",
    lora_config: LoraConfig | None = None,
):
    """The model to train: with `lora_config` (rank > 0) the pretrained base, frozen, with adapters (loaded in
    bfloat16 for `base_precision: bf16`)."""
    lora_config = lora_config or LoraConfig()
    frozen_bf16 = lora_config.rank > 0 and lora_config.base_precision == "bf16"
    if model_config.name_or_path:
        config = pretrained_config(model_config.name_or_path, model_config.trust_remote_code)
        family = families.check(config.model_type, "model.name_or_path", precision, model_config.trust_remote_code)
        for name, value in family.causal_settings.items():
            setattr(config, name, value)
        _match_tokenizer(config, tokenizer, scratch=False)
        with built_in_bfloat16() if frozen_bf16 else contextlib.nullcontext():
            model = from_pretrained(model_config.name_or_path, config, model_config.trust_remote_code)
            model.build_in_name_scope()
    else:
        family = families.check(model_config.config["model_type"], "model.config.model_type", precision)
        settings = {"vocab_size": len(tokenizer), **family.causal_settings}
        config = scratch_config({**model_config.config, **settings})
        _match_tokenizer(config, tokenizer, scratch=True)
        model = TFAutoModelForCausalLM.from_config(config)
        model.build_in_name_scope()
        if family.scratch_embeddings_std:
            _draw_scratch_embeddings(model, getattr(config, family.scratch_embeddings_std))
    grown = len(tokenizer) - model.config.vocab_size
    if grown > 0:
        model.resize_token_embeddings(len(tokenizer))
    limit = n_positions(model)
    if limit is not None and block_size > limit:
        raise ConfigError(
            "data.block_size",
            f"{block_size} is longer than the model's {limit} positions; set data.block_size to {limit} or less",
        )
    if lora_config.rank:
        lora.add_adapters(model, lora_config, lora.base_name(model_config.name_or_path))
        if grown > 0 and not model.get_input_embeddings().trainable_weights:
            raise ConfigError(
                "lora.modules_to_save",
                f"the tokenizer has {grown} tokens more than the model's embeddings (a chat template's, say), and "
                f"LoRA freezes the embeddings, so they would never learn; add the input embedding (GPT-2: wte) here",
            )
    return model


def load_trained(model_dir: str, key: str = "--model"):
    """(model, tokenizer) from a tfclm output dir, any save_pretrained folder, or a LoRA adapter dir (tfclm's or
    PEFT's) on its base."""
    if os.path.isdir(model_dir) and lora.is_adapter_dir(model_dir):
        return _load_adapter_dir(model_dir, key)
    check_model_dir(model_dir, key)
    config = pretrained_config(model_dir, key=key)
    families.lookup(config.model_type, key)
    model, tokenizer = from_pretrained(model_dir, config, key=key), pretrained_tokenizer(model_dir, False, key)
    if len(tokenizer) > model.config.vocab_size:
        # Ids past the embedding table are an error without XLA and silent garbage under it.
        raise ConfigError(
            key,
            f"the tokenizer in {model_dir!r} has {len(tokenizer)} tokens, more than the model's "
            f"{model.config.vocab_size} embeddings; save the tokenizer the model was trained with beside it",
        )
    return model, tokenizer


def _load_adapter_dir(adapter_dir: str, key: str):
    """The base model that adapter_config.json names, with the adapters in `adapter_dir` added."""
    from transformers import GenerationConfig

    settings, base = read_adapter_config(adapter_dir, key)
    where = f"base_model_name_or_path in {os.path.join(adapter_dir, lora.CONFIG_FILE)}"
    if looks_local(base) and not os.path.isdir(base):
        raise ConfigError(
            key, f"the adapter's base model {base!r} ({where}) does not exist; put it back, or point {where} at it"
        )
    config = pretrained_config(base, key=key)
    for name, value in families.lookup(config.model_type, key).causal_settings.items():
        setattr(config, name, value)
    own_tokenizer = any(
        os.path.exists(os.path.join(adapter_dir, n)) for n in ("tokenizer.json", "tokenizer_config.json")
    )
    tokenizer = pretrained_tokenizer(adapter_dir if own_tokenizer else base, False, key)
    model = from_pretrained(base, config, key=key)
    model.build_in_name_scope()
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))  # the adapter saved the resized embeddings (modules_to_save)
    try:
        lora.add_adapters(model, settings, base)
    except ConfigError as exc:
        raise ConfigError(
            key,
            f"the adapter in {adapter_dir!r} does not fit its base {base!r} ({exc}); is {where} the model "
            f"it was trained on?",
        ) from None
    load_adapters(model, adapter_dir, key)
    if os.path.exists(os.path.join(adapter_dir, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    return model, tokenizer
