"""`fit`: the whole run, in the order the data flows.

config -> documents -> tokenizer -> packed blocks -> tf.data -> model and
optimizer -> Keras fit with callbacks (checkpoints, resume) -> evaluation ->
save -> sample -> results.json.
"""

import dataclasses
import hashlib
import logging
import os
import platform
import time

import datasets
import transformers

from tfclm import config as config_lib
from tfclm import files
from tfclm.backend import keras, tf
from tfclm.data.pipeline import make_dataset, stream_dataset
from tfclm.data.prepare import prepare
from tfclm.errors import ConfigError, TfclmError
from tfclm.evaluation.perplexity import evaluate_loss
from tfclm.generation.generator import generate_samples
from tfclm.hub.callback import PushToHubCallback
from tfclm.hub.uploads import DEFAULT_IGNORE
from tfclm.model.loading import load_model
from tfclm.training.callbacks import (
    PerplexityCallback,
    SampleTextCallback,
    StepHistory,
    StopAfterSteps,
    StopOnNonFiniteLoss,
    ThroughputCallback,
)
from tfclm.training.checkpoints import CheckpointCallback, Checkpoints, check_resumable
from tfclm.training.curves import FILENAME, plot_training_curves
from tfclm.training.distribute import WorkerDirs, make_strategy, shard_by_data
from tfclm.training.optimizer import make_optimizer
from tfclm.training.plan import plan_steps
from tfclm.training.trainer import CausalLMTrainer, resolve_jit_compile, set_precision

logger = logging.getLogger(__name__)

RESULTS_FILENAME = "results.json"


def _versions() -> dict:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
    }


def _nan_message(step: int, streak: int, config: config_lib.Config, saved: list[int]) -> str:
    causes = [f"a learning rate too high (train.learning_rate is {config.train.learning_rate:g})"]
    if config.train.clipnorm is None:
        causes.append("no gradient clipping (set train.clipnorm: 1.0)")
    if config.train.precision == "fp16":
        causes.append("fp16 overflow (try precision bf16 or fp32)")
    kept = (
        f"the last good checkpoint (step {saved[-1]}) is kept in {config.output_dir}/checkpoints; "
        "rerun to resume from it"
        if saved
        else "no checkpoint was saved before it"
    )
    return (
        f"train: the loss became non-finite (nan or inf, in the loss or its gradients) at optimizer step {step}; "
        f"its update was skipped ({streak} in a row), and training stopped; "
        f"likely causes: {'; '.join(causes)}; {kept}"
    )


def fit(config: config_lib.Config, verbose: int | None = None, overwrite: bool = False) -> dict:
    """Train and evaluate as `config` says; write the output dir; return the results (also in results.json).

    Rerunning the same config on the same output dir resumes from its latest
    checkpoint; a finished run is not trained again unless `overwrite`.
    """

    config_lib.validate(config)
    # Multi-worker strategies must exist before any other TensorFlow work.
    strategy, described = make_strategy(config.train.strategy, config.train.tpu)
    if strategy.num_replicas_in_sync > 1 and config.train.gradient_accumulation_steps > 1:
        raise ConfigError(
            "train.gradient_accumulation_steps",
            f"works with one replica, and this run has {strategy.num_replicas_in_sync}; set it to 1 and raise "
            f"train.batch_size or the replicas instead",
        )
    out = config.output_dir
    dirs = WorkerDirs(out)
    if dirs.chief:
        check_resumable(out, dataclasses.asdict(config), overwrite)
        os.makedirs(out, exist_ok=True)
        files.atomic_write_text(os.path.join(out, config_lib.CONFIG_FILENAME), config_lib.to_yaml(config))
    keras.utils.set_random_seed(config.train.seed)
    callers_policy = keras.mixed_precision.global_policy()
    policy = set_precision(config.train.precision)
    try:
        return _fit(config, verbose, policy, strategy, described, dirs)
    finally:
        keras.mixed_precision.set_global_policy(callers_policy)  # the policy is process-wide: leave the caller's
        dirs.cleanup()


def _sample_options(config: config_lib.Config) -> tuple[list, dict]:
    """(prompts, decoding options) of the `generate:` section; the seed defaults to train.seed."""
    options = dataclasses.asdict(config.generate)
    prompts = options.pop("prompts")
    options["seed"] = options["seed"] if options["seed"] is not None else config.train.seed
    return prompts, options


def _set_decoding_defaults(model, config: config_lib.Config, tokenizer) -> None:
    """The generate: section becomes the saved generation_config.json: `pipeline(...)(prompt)` and a bare
    `model.generate(...)` then decode as tfclm does, not with transformers' default max_length of 20."""
    gen, generation_config = config.generate, model.generation_config
    generation_config.max_new_tokens = gen.max_new_tokens
    generation_config.do_sample = gen.do_sample
    if gen.do_sample:
        generation_config.top_k, generation_config.top_p, generation_config.temperature = (
            gen.top_k,
            gen.top_p,
            gen.temperature,
        )
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )


def _logging_callbacks(config: config_lib.Config, tokenizer) -> list:
    """TensorBoard scalars and samples during training, as the `logging:` section asks."""
    # TensorBoard counts Keras batches: under accumulation, micro-batches per optimizer step of them.
    micro = config.train.gradient_accumulation_steps

    log = config.logging
    log_dir = os.path.join(config.output_dir, "logs") if log.tensorboard else None
    callbacks = []
    if log.sample_every_n_epochs:
        prompts, options = _sample_options(config)
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


def _hub_callback(config: config_lib.Config, tokenizer):
    """The push-to-Hub callback the `hub:` section asks for; its final push waits for the results."""
    hub = config.hub
    if not hub.push:
        return None

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


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]


def _fit(config: config_lib.Config, verbose: int | None, policy: str, strategy, described: str, dirs) -> dict:

    out, data, train = config.output_dir, config.data, config.train
    chief = dirs.chief
    replicas = strategy.num_replicas_in_sync
    batch_size = train.batch_size * replicas  # Keras splits each global batch among the replicas
    prepared = prepare(config, os.path.join(dirs.work_dir, "cache"))
    tokenizer = prepared.tokenizer
    with strategy.scope():
        model = load_model(config.model, tokenizer, data.block_size)
    _set_decoding_defaults(model, config, tokenizer)
    plan = plan_steps(None if data.streaming else len(prepared.train.input_ids), config, replicas)
    eval_ds = shard_by_data(
        stream_dataset(config, tokenizer, "validation", config.evaluate.batch_size, shuffle=False)
        if data.streaming
        else make_dataset(
            train.pipeline, prepared.validation, config.evaluate.batch_size, False, train.seed, model, tokenizer
        )
    )
    params = int(sum(v.shape.num_elements() for v in model.trainable_variables))
    logger.info(
        f"model: {type(model).__name__}, {params:,} parameters, {policy} precision; strategy {described}, global "
        f"batch {train.batch_size} x {replicas} = {batch_size}"
    )

    jit = resolve_jit_compile(train.jit_compile)
    with strategy.scope():
        trainer = CausalLMTrainer(model, accumulation_steps=plan.accumulation)
        trainer.compile(optimizer=make_optimizer(train, model, plan.total_steps), jit_compile=jit)
    # Every worker resumes from the chief's checkpoints; the others save theirs to a temporary directory.
    checkpoints = Checkpoints(dirs.work_dir, model, trainer.optimizer, restore_dir=out)
    start = checkpoints.restore()
    if start:
        logger.info(
            f"resuming from the checkpoint at optimizer step {start:,} of {plan.total_steps:,} ({checkpoints.latest})"
        )
    if chief and start >= plan.total_steps and os.path.exists(os.path.join(out, RESULTS_FILENAME)):
        raise ConfigError(
            "output_dir",
            f"{out!r} already holds a finished run ({start:,} steps, results.json); use a new --output-dir, or "
            f"--overwrite to train again",
        )

    before = evaluate_loss(model, eval_ds) if chief and config.evaluate.before_training and not start else None
    if before:
        logger.info(f"before training: eval loss {before['loss']:.4f}, perplexity {before['perplexity']:,.2f}")

    micro = plan.accumulation
    if data.streaming:
        train_ds = stream_dataset(config, tokenizer, "train", batch_size, shuffle=True).skip(start * micro)
        micro_per_epoch, initial_epoch, epochs = None, 0, train.epochs
    else:
        train_ds = make_dataset(
            train.pipeline,
            prepared.train,
            batch_size,
            True,
            train.seed,
            model,
            tokenizer,
            plan.epochs_needed(),
            start * micro,
        )
        # A run shorter than one epoch gets a progress bar of its own length.
        micro_per_epoch = min(plan.steps_per_epoch, plan.total_steps) * micro
        initial_epoch, epochs = start // plan.steps_per_epoch, plan.epochs_needed()
    train_ds = shard_by_data(train_ds)
    tokens_per_micro = batch_size * data.block_size
    throughput = ThroughputCallback(tokens_per_step=tokens_per_micro)
    # fp16's loss scaling skips steps by design while it finds its scale: leave stopping to it there.
    guard = StopOnNonFiniteLoss(None if train.precision == "fp16" else train.max_nonfinite_steps)
    saver = CheckpointCallback(checkpoints, train.checkpoint_steps, plan.steps_per_epoch)
    steps = StepHistory(config.logging.every_n_steps)
    # Order matters: what adds to the logs comes before what writes them out.
    callbacks = [
        throughput,
        PerplexityCallback(),
        steps,
        guard,
        saver,
        StopAfterSteps(plan.total_steps - start),
    ]
    if chief:
        callbacks += _logging_callbacks(config, tokenizer)
    pusher = _hub_callback(config, tokenizer) if chief else None
    if pusher is not None:
        callbacks.append(pusher)
    logger.info(
        f"training: {plan.total_steps - start:,} optimizer steps of {batch_size} x {micro} x {data.block_size} = "
        f"{tokens_per_micro * micro:,} tokens, {'XLA' if jit else 'no XLA'}"
    )
    started = time.perf_counter()
    history = None
    if start < plan.total_steps:
        history = trainer.fit(
            train_ds,
            validation_data=eval_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=micro_per_epoch,
            callbacks=callbacks,
            verbose=verbose if verbose is not None else (1 if os.isatty(1) else 2),
        )
    train_seconds = time.perf_counter() - started
    optimizer_steps = int(trainer.optimizer.iterations.numpy())
    if guard.stopped_at is not None:
        raise TfclmError(
            _nan_message(guard.stopped_at, guard.patience, config, [start, *saver.saved] if start else saver.saved)
        )
    if not saver.saved or saver.saved[-1] != optimizer_steps:
        checkpoints.save(optimizer_steps)  # the finish line, so a rerun knows this run is done

    if not chief:
        # A worker's results are the chief's; this line lets a launcher check the replicas agree.
        digest = _weights_digest(model)
        logger.info(f"worker done: {optimizer_steps:,} optimizer steps; weights sha256 {digest}")
        return {"train_steps": optimizer_steps, "weights_sha256": digest}
    after = evaluate_loss(model, eval_ds)
    logger.info(f"after training: eval loss {after['loss']:.4f}, perplexity {after['perplexity']:,.2f}")
    # Saved before sampling: whatever happens next, the trained model is on disk.
    files.save_pretrained_atomic([model, tokenizer], out)

    prompts, options = _sample_options(config)
    # One call: compiling it with XLA would cost more than it saves.
    samples = generate_samples(model, tokenizer, prompts, xla=False, **options)
    for sample in samples:
        logger.info(
            f"sample ({sample.new_tokens} new tokens{', ended at EOS' if sample.stopped_at_eos else ''}): "
            f"{sample.text!r}"
        )

    logged = history.history if history else {}
    if config.logging.curves and logged.get("loss"):
        plot_training_curves(
            os.path.join(out, FILENAME),
            logged,
            steps.steps,
            steps.history.get("loss"),
            plan.steps_per_epoch,
        )
    results = {
        "train_loss": float(logged["loss"][-1]) if logged.get("loss") else None,
        "eval_loss": after["loss"],
        "perplexity": after["perplexity"],
        "eval_loss_before": before["loss"] if before else None,
        "perplexity_before": before["perplexity"] if before else None,
        "eval_tokens": after["tokens"],
        "train_tokens": throughput.tokens,
        "train_steps": optimizer_steps,
        "resumed_from_step": start,
        "epochs": len(logged.get("loss", [])),
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(throughput.tokens_per_second, 1),
        "parameters": params,
        "precision": policy,
        "strategy": described,
        "global_batch_size": batch_size,
        "weights_sha256": _weights_digest(model),
        "jit_compile": jit,
        "data": prepared.facts,
        "history": {key: [float(v) for v in values] for key, values in logged.items()},
        "step_history": {"steps": steps.steps, **steps.history},
        "samples": [dataclasses.asdict(s) for s in samples],
        "versions": _versions(),
    }
    files.atomic_write_json(os.path.join(out, RESULTS_FILENAME), results)
    if pusher is not None:
        pusher.push_final(config=dataclasses.asdict(config), results=results, save=False)
    logger.info(
        f"done: {optimizer_steps:,} optimizer steps ({throughput.steps:,} batches this run), {throughput.tokens:,} "
        f"tokens in {train_seconds:,.1f} s "
        f"({throughput.tokens_per_second:,.0f} tokens/s); perplexity "
        f"{before['perplexity'] if before else float('nan'):,.2f} -> {after['perplexity']:,.2f}; saved to {out}"
    )
    return results
