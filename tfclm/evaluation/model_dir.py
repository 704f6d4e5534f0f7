"""Perplexity of a saved model: the evaluate command."""

import dataclasses
import os

from tfclm import config as config_lib
from tfclm.data import packing, sources
from tfclm.data.pipeline import fast_dataset, stream_dataset
from tfclm.errors import ConfigError
from tfclm.evaluation.perplexity import evaluate_loss
from tfclm.model.loading import load_trained, n_positions


def evaluate_dir(
    model_dir: str,
    config_path: str | None = None,
    text_file: str | None = None,
    batch_size: int | None = None,
    block_size: int | None = None,
) -> dict:
    """Perplexity of a saved model on a text file, or on the validation split its config describes."""

    if config_path is not None and not os.path.isfile(config_path):
        raise ConfigError("--config", f"{config_path!r} does not exist; pass the run's tfclm.yaml or leave it out")
    model, tokenizer = load_trained(model_dir)
    config_path = config_path or os.path.join(model_dir, config_lib.CONFIG_FILENAME)
    if text_file is None and not os.path.exists(config_path):
        raise ConfigError(
            "--config",
            f"{model_dir!r} has no {config_lib.CONFIG_FILENAME}; pass --config with the run's config or --text-file",
        )
    config = config_lib.load_config(config_path) if os.path.exists(config_path) else config_lib.Config()
    limit = n_positions(model)
    if block_size and limit and block_size > limit:
        raise ConfigError(
            "--block-size", f"{block_size} is longer than the model's {limit} positions; pass {limit} or less"
        )
    block = block_size or min(config.data.block_size, limit or config.data.block_size)
    if text_file is not None:
        try:
            with open(text_file, encoding="utf-8") as handle:
                texts, source = [handle.read()], text_file
            if not texts[0].strip():
                raise ConfigError("--text-file", f"{text_file!r} holds no text; pass a file with text to evaluate on")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                "--text-file",
                f"cannot read {text_file!r} as UTF-8 text ({type(exc).__name__}); pass a readable UTF-8 text file",
            ) from None
        blocks = packing.build_blocks(texts, tokenizer, block, 1, "evaluation", keep_remainder=True)
        dataset = fast_dataset(blocks, batch_size or config.evaluate.batch_size, shuffle=False)
    elif config.data.streaming:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, block_size=block))
        dataset = stream_dataset(
            config, tokenizer, "validation", batch_size or config.evaluate.batch_size, shuffle=False
        )
        source = f"the validation stream of {config.data.dataset}"
    else:
        texts = sources.train_and_validation(config.data, config.train.seed)[1]
        source = f"the validation split of {config.data.dataset}"
        blocks = packing.build_blocks(
            texts,
            tokenizer,
            block,
            config.data.num_proc,
            "evaluation",
            keep_remainder=True,
            pack_documents=config.data.pack,
        )
        dataset = fast_dataset(blocks, batch_size or config.evaluate.batch_size, shuffle=False)
    result = evaluate_loss(model, dataset)
    if not result["tokens"]:
        raise ConfigError("--model", f"{source} gave no token to evaluate; pass --text-file with more text")
    result["source"] = source
    return result
