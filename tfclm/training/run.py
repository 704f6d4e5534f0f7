"""`fit`: the whole run, in the order the data flows.

config -> documents -> tokenizer -> packed blocks -> tf.data -> model and
optimizer -> Keras fit with callbacks (checkpoints, resume) -> evaluation ->
save -> sample -> results.json.
"""

import dataclasses
import logging
import os
import time

from tfclm import config as config_lib
from tfclm import files
from tfclm.backend import keras
from tfclm.data.pipeline import make_dataset, stream_dataset
from tfclm.data.prepare import prepare
from tfclm.errors import ConfigError, TfclmError
from tfclm.evaluation.perplexity import eval_line, evaluate_loss
from tfclm.evaluation.strided import token_bytes
from tfclm.model import lora
from tfclm.model.loading import check_family, load_model
from tfclm.training.callbacks import PerplexityCallback, StopAfterSteps, StopOnNonFiniteLoss, ThroughputCallback
from tfclm.training.checkpoints import (
    DIRNAME,
    CheckpointCallback,
    Checkpoints,
    check_resumable,
    clear_run,
    newest_readable,
    remove_unfinished_saves,
)
from tfclm.training.curves import FILENAME, plot_training_curves
from tfclm.training.distribute import WorkerDirs, make_strategy, shard_by_data
from tfclm.training.optimizer import make_optimizer
from tfclm.training.output_dir import check_free_space, check_output_dir
from tfclm.training.peak import peak_flops
from tfclm.training.plan import plan_steps
from tfclm.training.report import nan_message, set_decoding_defaults, versions, weights_digest
from tfclm.training.run_callbacks import (
    final_samples,
    hub_callback,
    logging_callbacks,
    report_to_trackers,
    tracker_callbacks,
)
from tfclm.training.run_state import Position, RunState, agree_on_step, logs_so_far, settings_of
from tfclm.training.schedule import extend, initial_segments, rate_at
from tfclm.training.trainer import CausalLMTrainer, resolve_jit_compile, set_precision

logger = logging.getLogger(__name__)

RESULTS_FILENAME = "results.json"


def fit(config: config_lib.Config, verbose: int | None = None, overwrite: bool = False) -> dict:
    """Train and evaluate as `config` says; write the output dir; return the results (also in results.json).

    Rerunning the same config on the same output dir resumes from its latest
    checkpoint; a finished run is not trained again unless `overwrite`.
    """

    config_lib.validate(config)
    family = check_family(config.model, config.train)
    # Multi-worker strategies must exist before any other TensorFlow work.
    strategy, described = make_strategy(config.train.strategy, config.train.tpu)
    if strategy.num_replicas_in_sync > 1 and config.train.gradient_accumulation_steps > 1:
        raise ConfigError(
            "train.gradient_accumulation_steps",
            f"works with one replica, and this run has {strategy.num_replicas_in_sync}; set it to 1 and raise "
            f"train.batch_size or the replicas instead",
        )
    out = config.output_dir
    check_output_dir(out)
    dirs = WorkerDirs(out)
    lock = files.DirLock(out).acquire() if dirs.chief else None  # one run at a time in an output dir
    try:
        if dirs.chief:
            check_resumable(out, dataclasses.asdict(config), overwrite)
            os.makedirs(out, exist_ok=True)
        keras.utils.set_random_seed(config.train.seed)
        callers_policy = keras.mixed_precision.global_policy()
        policy = set_precision(config.train.precision)
        try:
            return _fit(config, verbose, policy, strategy, described, dirs, overwrite, family)
        finally:
            keras.mixed_precision.set_global_policy(callers_policy)  # process-wide: leave the caller's
            dirs.cleanup()
    except BaseException:
        if lock is not None:
            lock.release(undo=True)  # a run that failed or was refused takes its lock file (and new dir) back
            lock = None
        raise
    finally:
        if lock is not None:
            lock.release()


def _fit(config: config_lib.Config, verbose, policy, strategy, described: str, dirs, overwrite: bool, family) -> dict:
    out, data, train = config.output_dir, config.data, config.train
    chief = dirs.chief
    replicas = strategy.num_replicas_in_sync
    batch_size = train.batch_size * replicas  # Keras splits each global batch among the replicas
    # A family that takes a fixed id as padding gets a trained tokenizer with its pad token there.
    prepared = prepare(config, os.path.join(dirs.work_dir, "cache"), own_pad=family.pad_id is not None)
    tokenizer = prepared.tokenizer
    with strategy.scope():
        model = load_model(config.model, tokenizer, data.block_size, config.train.precision, config.lora)
    adapters = lora.adapters_in(model)
    set_decoding_defaults(model, config, tokenizer)
    plan = plan_steps(None if data.streaming else len(prepared.train.input_ids), config, replicas)
    eval_ds = shard_by_data(
        stream_dataset(config, tokenizer, "validation", config.evaluate.batch_size, shuffle=False)
        if data.streaming
        else make_dataset(
            train.pipeline, prepared.validation, config.evaluate.batch_size, False, train.seed, model, tokenizer
        )
    )
    params, trainable = lora.parameter_counts(model)
    if chief:
        check_free_space(out, trainable if adapters else params)  # a LoRA run checkpoints what it trains
    logger.info(
        f"model: {type(model).__name__}, {lora.describe_parameters(model)}, {policy} precision; strategy "
        f"{described}, global batch {train.batch_size} x {replicas} = {batch_size}"
    )

    jit = resolve_jit_compile(train.jit_compile)
    # Every worker resumes from the chief's checkpoints; the others save theirs to a temporary directory.
    # All start from the step the chief found, and none reads before it has (see agree_on_step).
    if chief and overwrite:
        clear_run(out)  # only now: the data, tokenizer and model have all loaded
    found = newest_readable(os.path.join(out, DIRNAME)) if chief else None
    start_step = agree_on_step(strategy, -1 if found is None else found)
    state = RunState.read(os.path.join(out, DIRNAME), start_step) if start_step >= 0 else None
    settings = settings_of(dataclasses.asdict(config))
    segments = initial_segments(train.learning_rate, train.lr_schedule, train.warmup_ratio, plan.total_steps)
    if state is not None and state.total_steps != plan.total_steps:
        segments = extend(state.schedule, state.step, plan.total_steps)  # continue the rate, never jump
        logger.info(
            f"schedule: extended from {state.total_steps:,} to {plan.total_steps:,} optimizer steps; the learning "
            f"rate goes on from {rate_at(segments, state.step):.3g} at step {state.step:,}"
        )
    elif state is not None:
        segments = state.schedule
    with strategy.scope():
        settings_of_step = (plan.accumulation, train.loss_chunk_tokens, train.recompute == "blocks", train.fused_ops)
        trainer = CausalLMTrainer(model, *settings_of_step, seed=train.seed)
        trainer.compile(optimizer=make_optimizer(train, model, segments=segments), jit_compile=jit)
    checkpoints = Checkpoints(dirs.work_dir, model, trainer.optimizer, restore_dir=out)
    start = checkpoints.restore(start_step) if start_step >= 0 else 0
    if state is not None:
        epoch, batches = state.epoch, state.batches_in_epoch
    elif start and plan.steps_per_epoch:  # a checkpoint from before run states: its position follows from the step
        epoch, batches = start // plan.steps_per_epoch, start % plan.steps_per_epoch * plan.accumulation
    else:
        epoch, batches = 0, 0
    if start:
        logger.info(
            f"resuming from the checkpoint at optimizer step {start:,} of {plan.total_steps:,} (epoch {epoch + 1})"
        )
    epochs = train.epochs if data.streaming else plan.epochs_needed()
    done = start >= plan.total_steps or epoch >= epochs
    if chief and done and os.path.exists(os.path.join(out, RESULTS_FILENAME)):
        raise ConfigError(
            "output_dir",
            f"{out!r} already holds a finished run ({start:,} steps, results.json); use a new --output-dir, or "
            f"--overwrite to train again",
        )

    if chief:  # once this run is known to go ahead: the resolved config, and no leftovers of a killed run
        files.atomic_write_text(os.path.join(out, config_lib.CONFIG_FILENAME), config_lib.to_yaml(config))
        files.remove_temporaries(out)
        remove_unfinished_saves(os.path.join(out, DIRNAME))
    prepared.write_cache()
    byte_table = token_bytes(tokenizer) if chief else None  # bits per byte, before and after
    if state is not None:
        before = state.before
    elif chief and config.evaluate.before_training and not start:
        before = evaluate_loss(model, eval_ds, byte_table, train.loss_chunk_tokens)
        logger.info(f"before training: {eval_line(before)}")
    else:
        before = None

    micro = plan.accumulation
    pass_lengths = {}  # a stream's batches per pass, once read
    per_epoch = None if data.streaming else plan.steps_per_epoch * micro

    def epoch_batches(first: int, count: int, skip: int):
        if data.streaming:
            ds = stream_dataset(config, tokenizer, "train", batch_size, True, first, skip, pass_lengths, micro)
        else:
            ds = make_dataset(
                train.pipeline,
                prepared.train,
                batch_size,
                True,
                train.seed,
                model,
                tokenizer,
                count,
                skip,
                first,
                micro,
            )
        return shard_by_data(ds)

    # A resume inside an epoch trains the rest of it as an epoch of its own, so every epoch Keras runs is one
    # pass over the data: epoch ends (validation, samples, checkpoints) fall where an uninterrupted run has them.
    fits = []
    if batches and not done:
        fits.append(
            (epoch, epoch + 1, None if per_epoch is None else per_epoch - batches, epoch_batches(epoch, 1, batches))
        )
    if epoch + (1 if batches else 0) < epochs and not done:
        first = epoch + (1 if batches else 0)
        fits.append((first, epochs, per_epoch, epoch_batches(first, epochs - first, 0)))
    position = Position(epoch, batches, lambda e: per_epoch if per_epoch is not None else pass_lengths.get(e))

    # The run's logs so far, carried over a resume: results and curves cover the whole run, not its last part.
    epochs_logged, steps = logs_so_far(state, config.logging.every_n_steps)

    def epoch_logs() -> dict:
        return {key: [float(v) for v in values] for key, values in epochs_logged.history.items()}

    trackers = tracker_callbacks(config, state.trackers if state else {}) if chief else []

    def run_state(step: int) -> RunState:
        step_history = {"steps": list(steps.steps), **steps.history}
        run_ids = {t.name: t.run_id for t in trackers if t.run_id}
        return RunState(
            step, position.epoch, position.batches, plan.total_steps, segments, settings, epoch_logs(), step_history,
            before, run_ids,
        )  # fmt: skip

    tokens_per_micro = batch_size * data.block_size
    peak, peak_source = peak_flops(train.peak_tflops, train.precision, strategy)
    throughput = ThroughputCallback(tokens_per_micro, peak, sequence_length=data.block_size)
    # fp16's loss scaling skips steps by design while it finds its scale: leave stopping to it there.
    guard = StopOnNonFiniteLoss(None if train.precision == "fp16" else train.max_nonfinite_steps)
    saver = CheckpointCallback(
        checkpoints, train.checkpoint_steps, None, state=run_state, before_save=[t.flush for t in trackers]
    )
    # Order matters: what adds to the logs comes before what records or sends them, and all before the saver.
    callbacks = [throughput, PerplexityCallback(), steps, guard, position, epochs_logged, *trackers, saver]
    if chief:
        callbacks += logging_callbacks(config, tokenizer)
    pusher = hub_callback(config, tokenizer) if chief else None
    if pusher is not None:
        callbacks.append(pusher)
    logger.info(
        f"training: {plan.total_steps - start:,} optimizer steps of {batch_size} x {micro} x {data.block_size} = "
        f"{tokens_per_micro * micro:,} tokens, {'XLA' if jit else 'no XLA'}; MFU against peak {peak_source}"
    )
    started = time.perf_counter()
    for initial_epoch, last_epoch, steps_per_epoch, train_ds in fits:
        remaining = plan.total_steps - int(trainer.optimizer.iterations.numpy())
        if remaining <= 0 or guard.stopped_at is not None:
            break
        if steps_per_epoch is not None:  # a run that ends inside this epoch gets a progress bar of its own length
            steps_per_epoch = min(steps_per_epoch, remaining * micro)
        trainer.fit(
            train_ds,
            validation_data=eval_ds,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=[*callbacks, StopAfterSteps(remaining)],
            verbose=verbose if verbose is not None else (1 if os.isatty(1) else 2),
        )
    train_seconds = time.perf_counter() - started
    logged = epoch_logs()
    optimizer_steps = int(trainer.optimizer.iterations.numpy())
    if guard.stopped_at is not None:
        raise TfclmError(
            nan_message(guard.stopped_at, guard.patience, config, [start, *saver.saved] if start else saver.saved)
        )
    # The finish line, so that a rerun knows this run is done, or an extension where to go on from.
    for tracker in trackers:
        tracker.flush(optimizer_steps)
    if saver.saved and saver.saved[-1] == optimizer_steps:
        run_state(optimizer_steps).write(checkpoints.directory)
    elif optimizer_steps:
        checkpoints.save(optimizer_steps, run_state(optimizer_steps))

    if not chief:
        # A worker's results are the chief's; this line lets a launcher check the replicas agree.
        digest = weights_digest(model)
        logger.info(f"worker done: {optimizer_steps:,} optimizer steps; weights sha256 {digest}")
        return {"train_steps": optimizer_steps, "weights_sha256": digest}
    after = evaluate_loss(model, eval_ds, byte_table, train.loss_chunk_tokens)
    logger.info(f"after training: {eval_line(after)}")
    # Saved before sampling: whatever happens next, the trained model is on disk.
    files.save_pretrained_atomic(lora.saved_objects(model) + [tokenizer], out, replaces=files.MODEL_FILES)

    samples = final_samples(model, tokenizer, config)

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
        "bits_per_byte": after["bits_per_byte"],
        "eval_loss_before": before["loss"] if before else None,
        "perplexity_before": before["perplexity"] if before else None,
        "eval_tokens": after["tokens"],
        "train_tokens": throughput.tokens,
        "train_steps": optimizer_steps,
        "resumed_from_step": start,
        "epochs": len(logged.get("loss", [])),
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(throughput.tokens_per_second, 1),
        "mfu": throughput.mfu,
        "peak_flops": peak,
        "peak_source": peak_source,
        "parameters": params,
        "trainable_parameters": trainable,
        "precision": policy,
        "strategy": described,
        "global_batch_size": batch_size,
        "weights_sha256": weights_digest(model),
        **({"adapter_sha256": adapters.digest()} if adapters else {}),
        "jit_compile": jit,
        "data": prepared.facts,
        "history": logged,
        "step_history": {"steps": steps.steps, **steps.history},
        "samples": [dataclasses.asdict(s) for s in samples],
        "versions": versions(),
    }
    files.atomic_write_json(os.path.join(out, RESULTS_FILENAME), results)
    report_to_trackers(trackers, results, config)
    if pusher is not None:
        pusher.push_final(config=dataclasses.asdict(config), results=results, save=False)
        if pusher.failures:  # the run is complete on disk; the Hub copy is not
            results["hub_failures"] = list(pusher.failures)
            files.atomic_write_json(os.path.join(out, RESULTS_FILENAME), results)
    mfu = "" if throughput.mfu is None else f", MFU {throughput.mfu:.1%}"
    first = f"{before['perplexity']:,.2f}" if before else "not measured"  # evaluate.before_training: false
    logger.info(
        f"done: {optimizer_steps:,} optimizer steps ({throughput.steps:,} batches this run), {throughput.tokens:,} "
        f"tokens in {train_seconds:,.1f} s ({throughput.tokens_per_second:,.0f} tokens/s{mfu}); perplexity "
        f"{first} -> {after['perplexity']:,.2f}; saved to {out}"
    )
    return results
