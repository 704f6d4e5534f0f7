"""tfclm: causal language modelling with Keras on transformers' TF models.

Importing tfclm sets TF_USE_LEGACY_KERAS=1 (in tfclm.backend) before
TensorFlow can be imported; TensorFlow itself loads only when a function that
needs it is used, so `python -m tfclm --help` stays fast.
"""
from tfclm import backend  # noqa: F401  - must run before anything imports TensorFlow

__version__ = "0.1.0"


def fit(config, verbose=None, overwrite=False):
    """Run a training job; `config` is a `tfclm.config.Config` or a path to a YAML file. Returns results.json's content.

    The same config on the same output dir resumes from the last checkpoint; `overwrite` starts over.
    """
    from tfclm.config import Config, load_config
    from tfclm.fit import fit as _fit

    return _fit(config if isinstance(config, Config) else load_config(config), verbose=verbose, overwrite=overwrite)


def generate(model_or_dir, prompts, **options):
    """Complete `prompts` (a string or a list) with a saved model; returns the texts.

    The model and tokenizer of a directory are loaded once and kept for later calls.
    """
    from tfclm.generation import generate as _generate

    return _generate(model_or_dir, prompts, **options)


def __getattr__(name):
    if name == "callbacks":
        import importlib

        return importlib.import_module("tfclm.callbacks")
    raise AttributeError(f"module 'tfclm' has no attribute {name!r}")
