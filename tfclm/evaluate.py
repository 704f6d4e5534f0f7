"""Token-weighted evaluation loss and perplexity.

Keras' `evaluate` averages per-batch mean losses, so a short final batch
weighs as much as a full one; and the recipe's `drop_remainder` leaves
tokens out. Here every label that is not -100 counts once: the loss is the
sum of token losses over the count of tokens, computed in float32.
"""
import math

from tfclm.backend import load

tf, keras = load()


def perplexity(loss: float) -> float:
    """exp(loss), or inf where exp would overflow a float."""
    return math.exp(loss) if loss < 709.0 else math.inf


def _sum_and_count(model):
    spec = tf.TensorSpec([None, None], tf.int32)

    # One trace for every batch shape: the last batch is usually shorter.
    @tf.function(input_signature=[{"input_ids": spec, "attention_mask": spec, "labels": spec}])
    def step(batch):
        logits = tf.cast(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=False).logits, tf.float32)
        labels = batch["labels"][:, 1:]
        mask = tf.cast(labels != -100, tf.float32)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits[:, :-1])
        return tf.reduce_sum(losses * mask), tf.reduce_sum(mask)

    return step


def evaluate_loss(model, dataset) -> dict:
    """{"loss", "perplexity", "tokens"} of `model` over every batch of `dataset`."""
    step = _sum_and_count(model)
    total, count = 0.0, 0.0
    for batch in dataset:
        batch_sum, batch_count = step(batch)
        total += float(batch_sum)
        count += float(batch_count)
    if count == 0:
        return {"loss": math.nan, "perplexity": math.nan, "tokens": 0}
    loss = total / count
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": int(count)}


def evaluate_dir(model_dir: str, config_path: str | None = None, text_file: str | None = None, batch_size: int | None = None, block_size: int | None = None) -> dict:
    """Perplexity of a saved model on a text file, or on the validation split its config describes."""
    import os

    from tfclm import config as config_lib
    from tfclm import packing, sources
    from tfclm.errors import ConfigError
    from tfclm.modeling import load_trained, n_positions
    from tfclm.pipeline import fast_dataset

    model, tokenizer = load_trained(model_dir)
    config_path = config_path or os.path.join(model_dir, config_lib.CONFIG_FILENAME)
    if text_file is None and not os.path.exists(config_path):
        raise ConfigError("--config", f"{model_dir!r} has no {config_lib.CONFIG_FILENAME}; pass --config with the run's config or --text-file")
    config = config_lib.load_config(config_path) if os.path.exists(config_path) else config_lib.Config()
    block = block_size or min(config.data.block_size, n_positions(model) or config.data.block_size)
    if text_file is not None:
        try:
            with open(text_file, encoding="utf-8") as handle:
                texts, source = [handle.read()], text_file
        except OSError as exc:
            raise ConfigError("--text-file", f"cannot read {text_file!r}: {exc.strerror}; pass a readable UTF-8 text file") from None
    else:
        documents = sources.load_documents(config.data)
        texts = sources.split_documents(documents, config.data.validation_split, config.train.seed)[1]
        source = f"the validation split of {config.data.dataset}"
    blocks = packing.build_blocks(texts, tokenizer, block, config.data.num_proc, "evaluation", keep_remainder=True)
    result = evaluate_loss(model, fast_dataset(blocks, batch_size or config.evaluate.batch_size, shuffle=False))
    result["source"] = source
    return result
