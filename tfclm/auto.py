"""What `import tfclm` adds to transformers' TF auto classes, without importing TensorFlow itself.

`TFAutoModelForCausalLM.from_pretrained(ADAPTER_DIR)` in transformers loads
a PEFT adapter dir as its base model alone: transformers finds the base in
adapter_config.json, and only its PyTorch classes then load the adapters.
After `import tfclm` it gives the base with the adapters, as tfclm itself
loads them (and as PyTorch transformers does with PEFT installed), so the
seed recipe's client code reads a LoRA run's output dir as the model it is.

transformers builds its TF auto classes when they are first used (the import
of `modeling_tf_auto` brings TensorFlow in), so `install` patches them then:
at once if they are already imported, else by an import hook that runs after
that module loads.
"""

import importlib.abc
import importlib.util
import os
import sys

TF_AUTO = "transformers.models.auto.modeling_tf_auto"
_PATCHED = "_tfclm_reads_adapter_dirs"


def install() -> None:
    """Patch transformers' TF causal-LM auto class now or when it loads; idempotent."""
    if TF_AUTO in sys.modules:
        _patch(sys.modules[TF_AUTO])
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def _patch(module) -> None:
    auto = module.TFAutoModelForCausalLM
    if getattr(auto, _PATCHED, False):
        return
    original = auto.from_pretrained.__func__

    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        path = pretrained_model_name_or_path
        if isinstance(path, (str, os.PathLike)) and _adapter_dir(os.fspath(path)):
            from tfclm.model.loading import load_trained

            return load_trained(os.fspath(path), key="pretrained_model_name_or_path")[0]
        return original(cls, path, *model_args, **kwargs)

    from_pretrained.__doc__ = original.__doc__
    auto.from_pretrained = classmethod(from_pretrained)
    setattr(auto, _PATCHED, True)


def _adapter_dir(path: str) -> bool:
    """A PEFT adapter dir (adapter_config.json and no model config of its own): tfclm's LoRA output dirs."""
    return os.path.isfile(os.path.join(path, "adapter_config.json")) and not os.path.isfile(
        os.path.join(path, "config.json")
    )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds `modeling_tf_auto` as the other finders do, and patches it once it has run."""

    def find_spec(self, name, path=None, target=None):
        if name != TF_AUTO:
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
        _patch(module)
