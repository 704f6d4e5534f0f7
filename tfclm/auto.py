"""What `import tfclm` adds to transformers' TF auto classes, without importing TensorFlow itself.

The Llama-style families that transformers has no TF classes for (`tfclm.model.llama`: llama, mistral, qwen2,
qwen3, gemma, gemma2, gemma3_text, phi3, olmo2, granite; mistral in place of transformers' own TF class)
are registered with `TFAutoModelForCausalLM` and `TFAutoModel` the first time either builds a model, so
`from_pretrained`, `from_config` and `generate` work on their checkpoints.

`TFAutoModelForCausalLM.from_pretrained(ADAPTER_DIR)` in transformers loads
a PEFT adapter dir as its base model alone: transformers finds the base in
adapter_config.json, and only its PyTorch classes then load the adapters.
After `import tfclm` it gives the base with the adapters, as tfclm itself
loads them (and as PyTorch transformers does with PEFT installed), so the
seed recipe's client code reads a LoRA run's output dir as the model it is.

`AutoTokenizer.from_pretrained` in transformers 4.x cannot read a tokenizer
that v5 saved: v5 names its class `TokenizersBackend`, which 4.x does not
have, over the same `tokenizer.json`. After `import tfclm` such a tokenizer
loads as the `PreTrainedTokenizerFast` of that file (special tokens, chat
template and all), in tfclm and in transformers' own API alike. Granite, to
which 4.52 maps no tokenizer (so `pipeline()` loaded none), gets GPT-2's.

transformers builds its TF auto classes when they are first used (the import
of `modeling_tf_auto` brings TensorFlow in), so `install` patches them then:
at once if they are already imported, else by an import hook that runs after
that module loads; `AutoTokenizer` the same way.
"""

import importlib.abc
import os
import sys

TF_AUTO = "transformers.models.auto.modeling_tf_auto"
TOKENIZER_AUTO = "transformers.models.auto.tokenization_auto"
_PATCHED = "_tfclm_reads_adapter_dirs"
V5_TOKENIZER_CLASS = "TokenizersBackend"


def install() -> None:
    """Patch transformers' TF auto classes and AutoTokenizer now or when they load; idempotent."""
    for name in (TF_AUTO, TOKENIZER_AUTO):
        if name in sys.modules:
            PATCHES[name](sys.modules[name])
    if not all(name in sys.modules for name in PATCHES) and not any(
        isinstance(finder, _AfterImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _AfterImport())


def _patch(module) -> None:
    """Wrap the auto classes' constructors: they register tfclm's families on first use (not at import, when
    transformers' TF modules may still be loading each other) and read adapter dirs."""
    for auto in (module.TFAutoModelForCausalLM, module.TFAutoModel):
        if getattr(auto, _PATCHED, False):
            continue
        for name in ("from_pretrained", "from_config"):
            setattr(auto, name, classmethod(_registering(module, getattr(auto, name).__func__)))
        setattr(auto, _PATCHED, True)


def _registering(module, original):
    def construct(cls, source, *args, **kwargs):
        _register(module)
        path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        causal = issubclass(cls, module.TFAutoModelForCausalLM)  # an adapter dir is a causal LM's
        if causal and original.__name__ == "from_pretrained" and path is not None and _adapter_dir(path):
            from tfclm.model.loading import load_trained

            return load_trained(path, key="pretrained_model_name_or_path")[0]
        return original(cls, source, *args, **kwargs)

    construct.__name__, construct.__doc__ = original.__name__, original.__doc__
    return construct


def _register(module) -> None:
    """tfclm's TF classes with the auto classes, once."""
    if getattr(module, _PATCHED, False):
        return
    from tfclm.model.llama.modeling import CLASSES, CONFIGS

    for model_type, (base, causal) in CLASSES.items():
        module.TFAutoModel.register(CONFIGS[model_type], base, exist_ok=True)
        module.TFAutoModelForCausalLM.register(CONFIGS[model_type], causal, exist_ok=True)
    setattr(module, _PATCHED, True)


def _adapter_dir(path: str) -> bool:
    """A PEFT adapter dir (adapter_config.json and no model config of its own): tfclm's LoRA output dirs."""
    return os.path.isfile(os.path.join(path, "adapter_config.json")) and not os.path.isfile(
        os.path.join(path, "config.json")
    )


def _patch_tokenizer(module) -> None:
    """AutoTokenizer reads v5's tokenizers too; Granite has a tokenizer (GPT-2's)."""
    auto = module.AutoTokenizer
    if getattr(auto, _PATCHED, False):
        return
    from transformers import GPT2Tokenizer, GPT2TokenizerFast, GraniteConfig

    # transformers 4.52 maps no tokenizer to Granite, so pipeline() loads none for a Granite dir whose config.json
    # names no tokenizer_class; the dir's tokenizer_config.json still picks the class.
    if GraniteConfig not in module.TOKENIZER_MAPPING:
        auto.register(GraniteConfig, GPT2Tokenizer, GPT2TokenizerFast, exist_ok=True)
    original = auto.from_pretrained.__func__

    def from_pretrained(cls, source, *args, **kwargs):
        try:
            return original(cls, source, *args, **kwargs)
        except ValueError as exc:
            if V5_TOKENIZER_CLASS not in str(exc):
                raise
        return _v5_tokenizer(source, *args, **kwargs)

    from_pretrained.__name__, from_pretrained.__doc__ = original.__name__, original.__doc__
    auto.from_pretrained = classmethod(from_pretrained)
    setattr(auto, _PATCHED, True)


def _v5_tokenizer(source, *args, **kwargs):
    """v5's tokenizer.json as 4.x's fast tokenizer, its byte-level pre-tokenizer's add_prefix_space kept as the
    file has it (4.x's class would set it to False, and split the first word otherwise than v5)."""
    import json

    from transformers import PreTrainedTokenizerFast
    from transformers.utils import cached_file

    path = cached_file(source, "tokenizer.json", **{k: v for k, v in kwargs.items() if k in ("revision", "token")})
    with open(path, encoding="utf-8") as handle:
        pre = json.load(handle).get("pre_tokenizer") or {}
    if "add_prefix_space" in pre and "add_prefix_space" not in kwargs:
        kwargs["add_prefix_space"] = pre["add_prefix_space"]
    return PreTrainedTokenizerFast.from_pretrained(source, *args, **kwargs)


PATCHES = {TF_AUTO: _patch, TOKENIZER_AUTO: _patch_tokenizer}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds transformers' auto modules as the other finders do, and patches each once it has run."""

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        PATCHES[module.__name__](module)
