"""`fit`: the whole run, in the order the data flows.

config -> documents -> tokenizer -> packed blocks -> tf.data -> model and
optimizer -> Keras fit with callbacks -> evaluation -> sample -> output dir.
"""
import dataclasses
import math
import os
import platform
import time

from tfclm import config as config_lib
from tfclm import io, packing, sources
from tfclm.backend import load
from tfclm.errors import ConfigError
from tfclm.tokenizer import load_tokenizer

tf, keras = load()

RESULTS_FILENAME = "results.json"


def _versions() -> dict:
    import datasets
    import transformers

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "tf_keras": keras.__version__, "transformers": transformers.__version__, "datasets": datasets.__version__}


def _steps(n_blocks: int, config: config_lib.Config) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_epoch = n_blocks // config.train.batch_size
    if per_epoch == 0:
        raise ConfigError(
            "train.batch_size",
            f"the training text makes {n_blocks} blocks of {config.data.block_size} tokens, fewer than one batch of {config.train.batch_size}; "
            "lower train.batch_size or data.block_size, or add text",
        )
    total = per_epoch * config.train.epochs
    if config.train.max_steps is not None:
        total = min(total, config.train.max_steps)
    return per_epoch, total


def fit(config: config_lib.Config, verbose: int | None = None) -> dict:
    """Train and evaluate as `config` says; write the output dir; return the results (also in results.json)."""
    from tfclm.callbacks import PerplexityCallback, StopAfterSteps, ThroughputCallback
    from tfclm.evaluate import evaluate_loss
    from tfclm.generation import generate_samples
    from tfclm.modeling import load_model, make_optimizer
    from tfclm.pipeline import make_dataset

    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    io.atomic_write_text(os.path.join(out, config_lib.CONFIG_FILENAME), config_lib.to_yaml(config))
    keras.utils.set_random_seed(config.train.seed)

    data = config.data
    documents = sources.load_documents(data)
    train_texts, eval_texts = sources.split_documents(documents, data.validation_split, config.train.seed)
    print(f"data: {len(documents):,} distinct documents from {data.dataset}; seeded split: {len(train_texts):,} train, {len(eval_texts):,} validation")
    tokenizer = load_tokenizer(config, train_texts)
    train_blocks = packing.build_blocks(train_texts, tokenizer, data.block_size, data.num_proc, "training")
    eval_blocks = packing.build_blocks(eval_texts, tokenizer, data.block_size, data.num_proc, "validation", keep_remainder=True)
    print(train_blocks.summary("train"))
    print(eval_blocks.summary("validation"))
    steps_per_epoch, total_steps = _steps(len(train_blocks.input_ids), config)
    epochs = math.ceil(total_steps / steps_per_epoch)

    model = load_model(config.model, tokenizer, data.block_size)
    train_ds = make_dataset(config.train.pipeline, train_blocks, config.train.batch_size, True, config.train.seed, model, tokenizer)
    eval_ds = make_dataset(config.train.pipeline, eval_blocks, config.evaluate.batch_size, False, config.train.seed, model, tokenizer)
    params = int(sum(v.shape.num_elements() for v in model.trainable_variables))
    print(f"model: {type(model).__name__}, {params:,} parameters")

    before = evaluate_loss(model, eval_ds) if config.evaluate.before_training else None
    if before:
        print(f"before training: eval loss {before['loss']:.4f}, perplexity {before['perplexity']:,.2f}")

    model.compile(optimizer=make_optimizer(config.train, model, total_steps))
    throughput = ThroughputCallback(tokens_per_step=config.train.batch_size * data.block_size)
    callbacks = [throughput, PerplexityCallback(), StopAfterSteps(total_steps)]
    tokens_per_step = config.train.batch_size * data.block_size
    print(f"training: {total_steps:,} steps over {epochs} epoch(s), {config.train.batch_size} x {data.block_size} = {tokens_per_step:,} tokens a step")
    started = time.perf_counter()
    # A run shorter than one epoch gets a progress bar of its own length; longer
    # runs stop mid-epoch through StopAfterSteps.
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=min(steps_per_epoch, total_steps), callbacks=callbacks, verbose=verbose if verbose is not None else (1 if os.isatty(1) else 2))
    train_seconds = time.perf_counter() - started

    after = evaluate_loss(model, eval_ds)
    print(f"after training: eval loss {after['loss']:.4f}, perplexity {after['perplexity']:,.2f}")

    gen = config.generate
    samples = generate_samples(
        model,
        tokenizer,
        gen.prompts,
        xla=False,  # one call: compiling would cost more than it saves
        max_new_tokens=gen.max_new_tokens,
        do_sample=gen.do_sample,
        top_k=gen.top_k,
        top_p=gen.top_p,
        temperature=gen.temperature,
        num_return_sequences=gen.num_return_sequences,
        seed=gen.seed if gen.seed is not None else config.train.seed,
    )
    for sample in samples:
        print(f"sample ({sample.new_tokens} new tokens): {sample.text!r}")

    io.save_pretrained_atomic([model, tokenizer], out)
    results = {
        "train_loss": float(history.history["loss"][-1]),
        "eval_loss": after["loss"],
        "perplexity": after["perplexity"],
        "eval_loss_before": before["loss"] if before else None,
        "perplexity_before": before["perplexity"] if before else None,
        "eval_tokens": after["tokens"],
        "train_tokens": throughput.tokens,
        "train_steps": throughput.steps,
        "epochs": len(history.history["loss"]),
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(throughput.tokens_per_second, 1),
        "parameters": params,
        "data": {
            "documents": len(documents),
            "train_documents": len(train_texts),
            "validation_documents": len(eval_texts),
            "train_blocks": int(len(train_blocks.input_ids)),
            "validation_blocks": int(len(eval_blocks.input_ids)),
            "train_tokens_dropped": train_blocks.dropped,
            "validation_tokens_dropped": eval_blocks.dropped,
        },
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "samples": [dataclasses.asdict(s) for s in samples],
        "versions": _versions(),
    }
    io.atomic_write_json(os.path.join(out, RESULTS_FILENAME), results)
    print(
        f"done: {throughput.steps:,} steps, {throughput.tokens:,} tokens in {train_seconds:,.1f} s "
        f"({throughput.tokens_per_second:,.0f} tokens/s); perplexity {before['perplexity'] if before else float('nan'):,.2f} -> {after['perplexity']:,.2f}; saved to {out}"
    )
    return results
