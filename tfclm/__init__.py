"""tfclm: causal language modelling with Keras on transformers' TF models.

Importing tfclm sets TF_USE_LEGACY_KERAS=1 (in tfclm.backend) before
TensorFlow can be imported; TensorFlow itself loads only when a function that
needs it is used, so `python -m tfclm --help` stays fast.

What tfclm says goes to the `tfclm` logger. `fit` and `generate` show it on
stdout when nothing else is set up to (no handler on `tfclm` or the root
logger); `logging.getLogger("tfclm").setLevel(logging.WARNING)` quiets it,
and a handler of your own redirects it.
"""

import logging
import sys

from tfclm import backend  # noqa: F401  - must run before anything imports TensorFlow
from tfclm.auto import install as _install_auto_hooks

_install_auto_hooks()  # TFAutoModelForCausalLM reads adapter dirs (tfclm.auto)

__version__ = "0.1.0"

logger = logging.getLogger("tfclm")


class _StdoutHandler(logging.StreamHandler):
    """Bare lines on whatever sys.stdout is at the time (click's test runner swaps it)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def show_logs(level: int = logging.INFO) -> None:
    """Print tfclm's log lines on stdout at `level` and above, as the CLI does."""
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        logger.addHandler(_StdoutHandler())
    logger.setLevel(level)
    # Shown here, once: not again by a handler on the root logger that some library added along the way.
    logger.propagate = False


def _show_logs_unless_configured() -> None:
    if not logger.handlers and not logging.getLogger().handlers:
        show_logs(logger.level or logging.INFO)


def fit(config, verbose=None, overwrite=False):
    """Run a training job; `config` is a `tfclm.config.Config` or a path to a YAML file. Returns results.json's content.

    The same config on the same output dir resumes from the last checkpoint; `overwrite` starts over.
    """
    from tfclm.config import Config, load_config
    from tfclm.run.fit import fit as run_fit

    _show_logs_unless_configured()
    return run_fit(config if isinstance(config, Config) else load_config(config), verbose=verbose, overwrite=overwrite)


def generate(model_or_dir, prompts, **options):
    """Complete `prompts` (a string or a list) with a saved model; returns the texts.

    The model and tokenizer of a directory are loaded once and kept for later calls.
    """
    from tfclm.generation.generator import generate as run_generate

    _show_logs_unless_configured()
    return run_generate(model_or_dir, prompts, **options)


def chat(model_or_dir, conversation, system: str | None = None, **options) -> str:
    """The assistant's reply to `conversation`: a user's text, or a list of {"role", "content"} turns so far.

    The prompt is rendered with the tokenizer's chat template (the one a
    `data.format: messages` run saved) and the reply ends at its end-of-turn
    token. Example::

        reply = tfclm.chat("runs/chat", "What is a list?", system="Answer briefly.", max_new_tokens=40)
    """
    from tfclm.generation.generator import chat_reply

    _show_logs_unless_configured()
    return chat_reply(model_or_dir, conversation, system=system, **options)


def add_lora(
    model,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules=None,
    modules_to_save=(),
    base_precision: str = "fp32",
    base: str | None = None,
):
    """Put LoRA adapters into a transformers TF causal LM and freeze the rest, for your own `model.fit`.

    `target_modules` defaults to the family's attention and MLP projections;
    `base` (the model's Hub id or directory) goes into adapter_config.json.
    Returns the adapters: `.save_pretrained(DIR)` writes the files
    `peft.PeftModel.from_pretrained(base, DIR)` loads, and
    `tfclm.callbacks.PushToHubCallback` pushes them. Example::

        model = TFAutoModelForCausalLM.from_pretrained("distilbert/distilgpt2")
        adapters = tfclm.add_lora(model, rank=8, base="distilbert/distilgpt2")
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        model.fit(train_set, epochs=1)
        adapters.save_pretrained("my-adapter")
    """
    from tfclm.backend import keras
    from tfclm.config import LoraConfig, validate_lora
    from tfclm.errors import ConfigError
    from tfclm.model.lora import add_adapters

    if rank < 1:
        raise ConfigError("rank", f"must be at least 1 (such as 8), got {rank}")
    if base_precision == "bf16" and keras.mixed_precision.global_policy().name != "mixed_bfloat16":
        raise ConfigError("base_precision", "bf16 needs Keras' mixed_bfloat16 policy, set before the model is built")

    settings = LoraConfig(
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=None if target_modules is None else list(target_modules),
        modules_to_save=list(modules_to_save),
        base_precision=base_precision,
    )
    validate_lora(settings)
    return add_adapters(model, settings, base)


def __getattr__(name):
    if name == "callbacks":
        import importlib

        return importlib.import_module("tfclm.callbacks")
    raise AttributeError(f"module 'tfclm' has no attribute {name!r}")
