"""Perplexity of a saved model: the evaluate command."""

import dataclasses
import os

import numpy as np

from tfclm import config as config_lib
from tfclm.data import chat, examples, packing, sources
from tfclm.data.pipeline import fast_dataset, stream_dataset
from tfclm.errors import ConfigError
from tfclm.evaluation.perplexity import evaluate_loss
from tfclm.evaluation.strided import strided_loss, token_bytes
from tfclm.files import read_text_file
from tfclm.model.loading import load_trained, n_positions


def evaluate_dir(
    model_dir: str,
    config_path: str | None = None,
    text_file: str | None = None,
    batch_size: int | None = None,
    block_size: int | None = None,
    stride: int | None = None,
    max_length: int | None = None,
    per_document: bool | None = None,
) -> dict:
    """Perplexity and bits per byte of a saved model on a text file, or on the validation split its config
    describes: over blocks, or (with a stride) through sliding windows."""

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
    ev = config.evaluate
    given = {"--block-size": block_size, "--stride": stride, "--max-length": max_length, "--per-document": per_document}
    stride = stride or ev.stride
    mode = "examples" if text_file is None and config.data.format != "text" else "windows" if stride else "blocks"
    typed = {flag for flag, value in given.items() if value is not None}
    check_mode(mode, typed | ({"--stride"} if mode == "examples" and stride else set()), given["--stride"] is None)
    window = max_length or ev.max_length or limit or 1024
    per_document = ev.per_document if per_document is None else per_document
    batch = batch_size or ev.batch_size
    if stride is not None:
        _check_window(stride, window, limit, "--max-length" if max_length else "evaluate.max_length")
    byte_table = token_bytes(tokenizer)
    if text_file is None and config.data.format != "text":
        return _examples_loss(model, tokenizer, config, block, batch, byte_table)
    if text_file is not None:
        texts, source = [read_text_file(text_file)], text_file
    elif config.data.streaming:
        texts = None
    else:
        texts = sources.train_and_validation(config.data, config.train.seed)[1]
        source = f"the validation split of {config.data.dataset}"
    if stride is not None:
        if texts is None:  # a stream has no end to slide up to without reading it whole
            raise ConfigError(
                "--stride", "works on a text file or an in-memory validation split, not a stream; pass --text-file"
            )
        streams = token_streams(texts, tokenizer, per_document)
        result = strided_loss(model, streams, window, stride, batch, byte_table)
        result["method"] = f"windows of {window} tokens every {stride}{', per document' if per_document else ''}"
    else:
        pack = config.data.pack or text_file is not None  # one file is one long document: always packed
        result = _block_loss(model, tokenizer, config, texts, block, batch, byte_table, pack)
        result["method"] = f"blocks of {block} tokens"
        if texts is None:
            source = f"the validation stream of {config.data.dataset}"
    if not result["tokens"]:
        raise ConfigError("--model", f"{source} gave no token to evaluate; pass --text-file with more text")
    result["source"] = source
    return result


# Which of evaluate's options take effect in each way of scoring; any other one is refused, never ignored.
APPLIES = {
    "blocks": {"--block-size"},
    "windows": {"--stride", "--max-length", "--per-document"},
    "examples": {"--block-size"},
}


def check_mode(mode: str, given: set, stride_from_config: bool = False) -> None:
    """Refuse an option that would have no effect in `mode` (blocks, windows, examples), naming the one that
    would."""
    extra = sorted(given - APPLIES[mode])
    if not extra:
        return
    flag = extra[0]
    if mode == "windows":
        why = "the run's evaluate.stride scores sliding windows" if stride_from_config else "--stride scores windows"
        raise ConfigError(flag, f"sets blocks, and {why}, whose length is --max-length; pass --max-length instead")
    if mode == "blocks":
        raise ConfigError(flag, "works with sliding windows, and this evaluation scores blocks; add --stride N")
    raise ConfigError(flag, "works with sliding windows over text, and this run is scored by example; leave it out")


def _check_window(stride: int, window: int, limit: int | None, key: str) -> None:
    if limit and window > limit:
        raise ConfigError(key, f"{window} is longer than the model's {limit} positions; pass {limit} or less")
    if stride > window:
        raise ConfigError("--stride", f"{stride} is longer than the window of {window} tokens; pass {window} or less")


def token_streams(texts: list[str], tokenizer, per_document: bool) -> list[np.ndarray]:
    """What the windows slide over: an end-of-text token, then each document followed by end-of-text (as training
    lays them out), as one stream or one per document."""
    eos = tokenizer.eos_token_id
    documents = packing.encode_documents(tokenizer, texts)
    if per_document:
        return [np.asarray([eos, *doc], np.int32) for doc in documents]
    return [np.asarray([eos, *(token for doc in documents for token in doc)], np.int32)]


def _block_loss(model, tokenizer, config, texts, block: int, batch: int, byte_table, pack: bool) -> dict:
    if texts is None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, block_size=block))
        dataset = stream_dataset(config, tokenizer, "validation", batch, shuffle=False)
    else:
        blocks = packing.build_blocks(
            texts, tokenizer, block, config.data.num_proc, "evaluation", keep_remainder=True, pack_documents=pack
        )
        dataset = fast_dataset(blocks, batch, shuffle=False)
    return evaluate_loss(model, dataset, byte_table)


def _examples_loss(model, tokenizer, config, block: int, batch: int, byte_table) -> dict:
    """A prompt/completion or messages run's validation examples, scored as the run scored them."""
    data = config.data
    if data.format == "messages":
        chat.check_template(tokenizer, "--model")
    found = examples.train_and_validation(data, config.train.seed)[1]
    scored = examples.loss_on(data, config.train.loss_on)
    blocks = examples.encode_examples(found, tokenizer, data, scored, block)
    result = evaluate_loss(model, fast_dataset(blocks, batch, shuffle=False), byte_table)
    kind = "conversations" if data.format == "messages" else "prompt/completion examples"
    result["method"] = f"{len(blocks.input_ids):,} {kind}, the loss on {examples.SCORED[scored]}"
    result["source"] = f"the validation examples of {data.dataset}"
    return result
