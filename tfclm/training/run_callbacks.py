"""The callbacks a run adds for its `logging:` and `hub:` sections, beside the ones every run has."""

import dataclasses
import os

from tfclm import config as config_lib
from tfclm.backend import keras
from tfclm.hub.callback import PushToHubCallback
from tfclm.hub.uploads import DEFAULT_IGNORE, check_repo_id
from tfclm.training.callbacks import SampleTextCallback


def sample_options(config: config_lib.Config) -> tuple[list, dict]:
    """(prompts, decoding options) of the `generate:` section; the seed defaults to train.seed."""
    options = dataclasses.asdict(config.generate)
    prompts = options.pop("prompts")
    options["seed"] = options["seed"] if options["seed"] is not None else config.train.seed
    return prompts, options


def logging_callbacks(config: config_lib.Config, tokenizer) -> list:
    """TensorBoard scalars and samples during training, as the `logging:` section asks."""
    # TensorBoard counts Keras batches: under accumulation, micro-batches per optimizer step of them.
    micro = config.train.gradient_accumulation_steps

    log = config.logging
    log_dir = os.path.join(config.output_dir, "logs") if log.tensorboard else None
    callbacks = []
    if log.sample_every_n_epochs:
        prompts, options = sample_options(config)
        callbacks.append(
            SampleTextCallback(tokenizer, prompts, every_n_epochs=log.sample_every_n_epochs, log_dir=log_dir, **options)
        )
    if log_dir:
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=log_dir, update_freq=log.every_n_steps * micro, write_graph=False, profile_batch=0
            )
        )
    return callbacks


def hub_callback(config: config_lib.Config, tokenizer):
    """The push-to-Hub callback the `hub:` section asks for; its final push waits for the results."""
    hub = config.hub
    if not hub.push:
        return None
    if hub.model_id:
        check_repo_id(hub.model_id, "hub.model_id")  # before training, not at the first push

    ignore = tuple(p for p in DEFAULT_IGNORE if not (hub.checkpoint and p.startswith("checkpoints")))
    return PushToHubCallback(
        config.output_dir,
        save_strategy=hub.save_strategy,
        save_steps=hub.save_steps,
        tokenizer=tokenizer,
        hub_model_id=hub.model_id,
        private=hub.private,
        max_retries=hub.max_retries,
        push_at_train_end=False,
        ignore_patterns=ignore,
    )
