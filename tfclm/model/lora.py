"""LoRA (Hu et al., 2021) on a transformers TF causal LM, saved as PEFT saves it.

`add_adapters` puts a `LoraAdapter` beside each targeted dense layer (Keras
Dense, or GPT-2's Conv1D), which then returns x W + b + dropout(x) A B *
alpha / rank: A drawn as PEFT draws it, B zeros, so training starts from the
base model's own outputs. Every other weight is frozen: it leaves the model's
trainable variables, so it gets no gradient and no optimizer slots.
`modules_to_save` names layers trained in full.

Layers are named by their PyTorch module paths (`transformer.h.0.attn.c_attn`),
which transformers derives from the TF variable names, so a target pattern
means the same layers here as in PEFT, and `save_pretrained` writes
adapter_config.json and adapter_model.safetensors that
`peft.PeftModel.from_pretrained(base, OUTPUT_DIR)` loads in PyTorch.
`tfclm.model.loading` reads them back onto a TF base; `merge` folds them into the
base weights.
"""

import contextlib
import hashlib
import json
import logging
import math
import os

import numpy as np

from tfclm import files
from tfclm.backend import keras, tf
from tfclm.config import LoraConfig
from tfclm.errors import ConfigError
from tfclm.model.families import family
from tfclm.model.pytorch_names import pytorch_name, pytorch_tensor

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's names: its wrapper's `base_model`, whose `model` is the transformers model
DENSE_CLASSES = ("Dense", "TFConv1D")
ATTRIBUTE = "lora_adapter"  # the adapter's attribute on its dense layer (so checkpoints track it there)


class LoraAdapter(keras.layers.Layer):
    """The low-rank update of one dense layer: dropout(x) A B * alpha / rank."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scale = alpha / rank
        bound = 1 / math.sqrt(in_features)  # PEFT's kaiming_uniform_(a=sqrt(5)) on its (rank, in) A
        self.lora_a = self.add_weight(
            "lora_A", shape=(in_features, rank), initializer=keras.initializers.RandomUniform(-bound, bound)
        )
        self.lora_b = self.add_weight("lora_B", shape=(rank, out_features), initializer="zeros")
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def call(self, inputs, training=None):
        if self.drop is not None:
            inputs = self.drop(inputs, training=training)
        flat = tf.reshape(inputs, [-1, self.in_features])
        update = tf.matmul(tf.matmul(flat, self.lora_a), self.lora_b) * self.scale
        return tf.reshape(update, tf.concat([tf.shape(inputs)[:-1], [self.out_features]], 0))


def _kernel(layer):
    return layer.kernel if hasattr(layer, "kernel") else layer.weight


def _matches(path: str, pattern: str) -> bool:
    """PEFT's rule: a pattern names the module of that path, or every module whose path ends with `.pattern`."""
    return path == pattern or path.endswith("." + pattern)


def _short(path: str) -> str:
    """`attn.c_attn` for `transformer.h.0.attn.c_attn`: the path inside its block, a pattern that names it."""
    parts = path.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return ".".join(parts[index + 1 :]) if index is not None and index + 1 < len(parts) else path


def dense_layers(lm) -> dict:
    """{module path: layer} for every dense layer LoRA can adapt, in the model's order."""
    found = {}
    for layer in lm._flatten_layers(include_self=False):
        if type(layer).__name__ in DENSE_CLASSES and layer.built:
            found.setdefault(pytorch_name(_kernel(layer)).rsplit(".", 1)[0], layer)
    return found


def adapters_of(lm) -> dict:
    """{module path: (dense layer, adapter)} of the adapters in `lm`."""
    return {
        path: (layer, getattr(layer, ATTRIBUTE))
        for path, layer in dense_layers(lm).items()
        if getattr(layer, ATTRIBUTE, None) is not None
    }


def _names_list(paths) -> str:
    return ", ".join(dict.fromkeys(_short(path) for path in paths))


def targets(lm, lora: LoraConfig) -> tuple[list[str], dict]:
    """(the patterns, {module path: layer} they pick); a pattern that picks nothing is an error naming the layers."""
    dense = dense_layers(lm)
    patterns = lora.target_modules or list(family(lm.config).lora_targets)
    if not patterns:
        raise ConfigError(
            "lora.target_modules",
            f"{lm.config.model_type} has no default LoRA targets; name some of its dense layers: {_names_list(dense)}",
        )
    for pattern in patterns:
        if not any(_matches(path, pattern) for path in dense):
            raise ConfigError(
                "lora.target_modules",
                f"{pattern!r} matches no dense layer of this {lm.config.model_type} model; its dense layers are: "
                f"{_names_list(dense)}",
            )
    return patterns, {path: layer for path, layer in dense.items() if any(_matches(path, p) for p in patterns)}


def _saved_module(path: str, patterns) -> bool:
    """PEFT's rule for modules_to_save, looser than for targets: a module whose path ends with the pattern (so
    `norm` is every `*norm` layer), and all inside it."""
    parts = path.split(".")
    return any(".".join(parts[:end]).endswith(p) for p in patterns for end in range(1, len(parts) + 1))


def add_adapters(lm, lora: LoraConfig, base: str | None = None) -> "Adapters":
    """Adapt `lm` in place as `lora` says and freeze the rest; `base` is the model's Hub id or directory, which
    adapter_config.json records.

    Call it where the model's variables are created (inside a tf.distribute
    strategy's scope), before the optimizer is built.
    """
    patterns, chosen = targets(lm, lora)
    weight_paths = {}
    for layer in lm._flatten_layers(include_self=True):
        for variable in layer._trainable_weights:
            weight_paths.setdefault(id(variable), pytorch_name(variable).rsplit(".", 1)[0])
    for pattern in lora.modules_to_save:
        if not any(_saved_module(path, [pattern]) for path in weight_paths.values()):
            raise ConfigError(
                "lora.modules_to_save",
                f"{pattern!r} matches no layer with weights; name one such as "
                f"{_names_list(p for p in weight_paths.values() if 'norm' in p or 'ln' in p) or 'ln_f'}",
            )
    for layer in lm._flatten_layers(include_self=True):  # freeze first: the adapters' own weights stay trainable
        kept = [_saved_module(weight_paths[id(v)], lora.modules_to_save) for v in layer._trainable_weights]
        layer._non_trainable_weights.extend(v for v, keep in zip(layer._trainable_weights, kept) if not keep)
        layer._trainable_weights[:] = [v for v, keep in zip(layer._trainable_weights, kept) if keep]
    if lora.base_precision == "bf16":
        _keep_in_bfloat16(lm)
    for path, layer in chosen.items():
        fan_in, fan_out = _kernel(layer).shape
        adapter = LoraAdapter(
            int(fan_in), int(fan_out), lora.rank, lora.alpha, lora.dropout, name=path.replace(".", "_") + "_lora"
        )
        setattr(layer, ATTRIBUTE, adapter)
        layer.call = _with_adapter(layer.call, adapter)
    lm._tfclm_lora = Adapters(lm, lora, patterns, base)
    return lm._tfclm_lora


def adapters_in(lm) -> "Adapters | None":
    """The `Adapters` that `add_adapters` put into `lm`, or None."""
    return getattr(lm, "_tfclm_lora", None)


def parameter_counts(lm) -> tuple[int, int]:
    """(all weights, trainable weights) of `lm`, in numbers."""
    return tuple(int(sum(v.shape.num_elements() for v in vs)) for vs in (lm.weights, lm.trainable_variables))


def describe_parameters(lm) -> str:
    """`81,912,576 parameters`, and with adapters `, 589,824 trainable (0.72%: LoRA rank 8)`."""
    params, trainable = parameter_counts(lm)
    adapters = adapters_in(lm)
    if adapters is None:
        return f"{params:,} parameters"
    return f"{params:,} parameters, {trainable:,} trainable ({trainable / params:.2%}: LoRA rank {adapters.lora.rank})"


def checkpointed(lm) -> dict:
    """What a checkpoint of `lm` holds: a LoRA model's trainable variables only (its frozen base is its own files,
    megabytes against gigabytes), else the whole model."""
    if adapters_in(lm) is None:
        return {"model": lm}
    return {"trained": list(lm.trainable_variables)}


def saved_objects(lm) -> list:
    """What saving `lm` means: the adapter files and the decoding settings of a LoRA model, else the model."""
    adapters = adapters_in(lm)
    if adapters is None:
        return [lm]
    return [adapters] + ([lm.generation_config] if lm.generation_config is not None else [])


def _keep_in_bfloat16(lm) -> None:
    """Frozen matrices and embeddings as bfloat16 variables: half their memory, and nothing lost under mixed
    bfloat16, whose layers read them in bfloat16 anyway. Norms and biases (small; Conv1D's are (1, n)) stay
    float32."""
    for layer in lm._flatten_layers(include_self=True):
        for variable in list(layer._non_trainable_weights):
            names = [name for name, value in vars(layer).items() if value is variable]
            if len(variable.shape) < 2 or min(variable.shape) == 1 or variable.dtype != tf.float32 or not names:
                continue
            name = variable.name.rsplit(":", 1)[0]
            replacement = tf.Variable(tf.cast(variable.read_value(), tf.bfloat16), trainable=False, name=name)
            for attribute in names:
                setattr(layer, attribute, replacement)
            others = [w for w in layer._non_trainable_weights if w is not variable and w is not replacement]
            layer._non_trainable_weights[:] = [*others, replacement]


_OFF = []  # non-empty inside `adapters_off`: read as a step is traced, so a trace holds both passes


@contextlib.contextmanager
def adapters_off():
    """Layers called inside run without their adapters: the base model, for a preference run's reference."""
    _OFF.append(True)
    try:
        yield
    finally:
        _OFF.pop()


def _with_adapter(call, adapter):
    def call_with_adapter(inputs, *args, **kwargs):
        outputs = call(inputs, *args, **kwargs)
        if _OFF:
            return outputs
        return outputs + tf.cast(adapter(inputs), outputs.dtype)  # training: the enclosing call's

    return call_with_adapter


def merge(lm) -> None:
    """Fold each adapter into its layer's weights (W + A B * alpha / rank) and take the adapters away."""
    for layer, adapter in adapters_of(lm).values():
        kernel = _kernel(layer)
        delta = tf.matmul(tf.convert_to_tensor(adapter.lora_a), tf.convert_to_tensor(adapter.lora_b)) * adapter.scale
        kernel.assign_add(tf.cast(delta, kernel.dtype))
        del layer.call  # the class's own call again
        delattr(layer, ATTRIBUTE)
    lm._tfclm_lora = None


def adapter_state(lm) -> dict:
    """PEFT's adapter_model.safetensors content: each adapter's A and B as PyTorch's (rank, in) and (out, rank),
    and the weights trained in full (modules_to_save) under their PyTorch names."""
    state, adapter_ids = {}, set()
    for path, (_, adapter) in adapters_of(lm).items():
        state[f"{PREFIX}{path}.lora_A.weight"] = np.ascontiguousarray(adapter.lora_a.numpy().T, dtype=np.float32)
        state[f"{PREFIX}{path}.lora_B.weight"] = np.ascontiguousarray(adapter.lora_b.numpy().T, dtype=np.float32)
        adapter_ids.update(id(v) for v in adapter.weights)
    for variable in lm.trainable_variables:
        if id(variable) not in adapter_ids:
            name, value = pytorch_tensor(variable)
            state[PREFIX + name] = value
    return state


def adapter_config(lm, lora: LoraConfig, patterns: list[str], base: str) -> dict:
    """adapter_config.json as PEFT writes it, with the keys that matter to this adapter."""
    conv1d = any(type(layer).__name__ == "TFConv1D" for layer, _ in adapters_of(lm).values())
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(patterns),
        "modules_to_save": list(lora.modules_to_save) or None,
        "fan_in_fan_out": conv1d,  # GPT-2's Conv1D keeps its weight as (in, out); PEFT merges by this flag
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }


ADAPTER_README = (
    files.ADAPTER_README_MARK
    + """
# LoRA adapters for {base}

This folder holds LoRA adapters in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`) for the base
model `{base}`, trained with tfclm. The base's own weights are not here.

- With tfclm installed, `import tfclm` first: then transformers' `TFAutoModelForCausalLM.from_pretrained(FOLDER)`
  and `pipeline("text-generation", model=FOLDER)` load the base with these adapters, as
  `python -m tfclm generate --model FOLDER` does.
- Without tfclm, transformers' TF classes load this folder as the base alone and drop the adapters without a word.
  Write the merged model first: `python -m tfclm export --model FOLDER --merge-lora --to tf --output MERGED`.
- In PyTorch with PEFT: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), FOLDER)`, where
  `BASE` is the base in PyTorch's format (for a TF base: `python -m tfclm export --model {base} --to pytorch
  --output BASE`).
"""
)


class Adapters:
    """What `save_pretrained` of a LoRA run writes: the adapter files PEFT reads (with the tokenizer and the
    generation config beside them, see `tfclm.run.fit`)."""

    def __init__(self, lm, lora: LoraConfig, patterns: list[str], base: str | None):
        self.lm, self.lora, self.patterns, self.base = lm, lora, patterns, base

    def save_pretrained(self, directory: str) -> None:
        from safetensors.numpy import save

        if not getattr(self, "_told", False):  # once per run: the pitfall is silent otherwise
            self._told = True
            logger.warning(
                f"lora: {files.landing_dir(directory)} holds adapters; transformers' TF classes and pipeline() read "
                f"such a dir as its base model alone unless tfclm is imported first. Without tfclm, write the merged "
                f"model: python -m tfclm export --model {files.landing_dir(directory)} --merge-lora --to tf --output "
                f"MERGED_DIR"
            )

        config = adapter_config(self.lm, self.lora, self.patterns, self.base)
        files.atomic_write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2) + "\n")
        files.atomic_write_text(os.path.join(directory, "README.md"), ADAPTER_README.format(base=self.base))
        state = adapter_state(self.lm)
        files.atomic_write_bytes(os.path.join(directory, WEIGHTS_FILE), save(state, metadata={"format": "pt"}))

    def digest(self) -> str:
        """sha256 of the adapter's tensors (names and values), for telling runs apart."""
        digest = hashlib.sha256()
        for name, value in sorted(adapter_state(self.lm).items()):
            digest.update(name.encode() + value.tobytes())
        return digest.hexdigest()[:16]


def base_name(name_or_path: str) -> str:
    """What adapter_config.json records as the base: a local directory absolutely, a Hub id as it is."""
    return os.path.abspath(os.path.expanduser(name_or_path)) if files.looks_local(name_or_path) else name_or_path


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))
