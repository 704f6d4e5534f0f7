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
from tfclm.data.prepare import prepare
from tfclm.errors import ConfigError, TfclmError
from tfclm.evaluation.strided import token_bytes
from tfclm.files import MODEL_FILES, OutputDir
from tfclm.model import lora
from tfclm.model.loading import check_family, load_model
from tfclm.run import preference
from tfclm.run.batches import RunBatches
from tfclm.run.callbacks import RunCallbacks, final_samples, report_to_trackers, run_callbacks
from tfclm.run.logs import RunLogs
from tfclm.run.report import nan_message, results_of, set_decoding_defaults, weights_digest
from tfclm.training.callbacks import StopAfterSteps
from tfclm.training.checkpoints import (
    DIRNAME,
    Checkpoints,
    check_resumable,
    clear_run,
    newest_readable,
    remove_unfinished_saves,
)
from tfclm.training.curves import plot_training_curves
from tfclm.training.distribute import WorkerDirs, check_accumulation, make_strategy
from tfclm.training.optimizer import make_optimizer
from tfclm.training.output_dir import check_free_space, check_output_dir
from tfclm.training.plan import plan_steps
from tfclm.training.run_state import Position, RunState, agree_on_step
from tfclm.training.schedule import extend, initial_segments, rate_at
from tfclm.training.trainer import resolve_jit_compile, set_precision

logger = logging.getLogger(__name__)


def fit(config: config_lib.Config, verbose: int | None = None, overwrite: bool = False) -> dict:
    """Train and evaluate as `config` says; write the output dir; return the results (also in results.json).

    Rerunning the same config on the same output dir resumes from its latest
    checkpoint; a finished run is not trained again unless `overwrite`.
    """

    config_lib.validate(config)
    family = check_family(config.model, config.train)
    # Multi-worker strategies must exist before any other TensorFlow work.
    strategy, described = make_strategy(config.train.strategy, config.train.tpu)
    check_accumulation(strategy, config.train.gradient_accumulation_steps)
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
            return _fit(_Run(config, family, strategy, described, dirs, policy, overwrite, verbose))
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


@dataclasses.dataclass
class _Run:
    """What every phase of a run reads: the config and the facts settled before the first phase."""

    config: config_lib.Config
    family: object  # the family's row (tfclm.model.families.Family), looked up once
    strategy: object
    described: str  # the strategy, in words
    dirs: WorkerDirs
    policy: str  # Keras' mixed-precision policy
    overwrite: bool
    verbose: int | None

    @property
    def chief(self) -> bool:
        return self.dirs.chief

    @property
    def out(self) -> OutputDir:
        return OutputDir(self.config.output_dir)

    @property
    def batch_size(self) -> int:  # global: Keras splits each batch among the replicas
        return self.config.train.batch_size * self.strategy.num_replicas_in_sync


@dataclasses.dataclass
class _Resume:
    """Where a run starts: the checkpoint's step (-1: none), its run state, and the schedule from there."""

    step: int
    state: RunState | None
    segments: list


def _fit(run: _Run) -> dict:
    config = run.config
    # Data: documents, tokenizer and blocks, in memory; nothing is written yet.
    prepared = prepare(config, os.path.join(run.dirs.work_dir, OutputDir.CACHE), own_pad=run.family.pad_id is not None)
    # Model: loaded or built in the strategy's scope; the batches it trains and evaluates on.
    model = _build_model(run, prepared.tokenizer)
    reference = preference.reference_for(run, model, prepared)  # a preference run's; None elsewhere
    replicas = run.strategy.num_replicas_in_sync
    plan = plan_steps(None if config.data.streaming else len(prepared.train.input_ids), config, replicas)
    micro = plan.accumulation
    batches = RunBatches(
        config, prepared, model, batch_size=run.batch_size, micro=micro, steps_per_epoch=plan.steps_per_epoch
    )
    eval_ds = batches.validation_batches()
    _check_room(run, model)
    # Resume: the newest readable checkpoint every worker agrees on, and the learning-rate schedule from there.
    resume = _find_resume(run, plan)
    # Trainer: the train step and its optimizer, restored to that checkpoint.
    trainer, checkpoints, start = _build_trainer(run, model, plan, resume, reference)
    epoch, done_batches = _position(resume.state, start, plan)
    if start:
        logger.info(
            f"resuming from the checkpoint at optimizer step {start:,} of {plan.total_steps:,} (epoch {epoch + 1})"
        )
    epochs = config.train.epochs if config.data.streaming else plan.epochs_needed()
    done = start >= plan.total_steps or epoch >= epochs
    # Go ahead: a finished run is refused; then the first writes (config, cache).
    _go_ahead(run, prepared, start=start, done=done)
    byte_table = token_bytes(prepared.tokenizer) if run.chief else None  # bits per byte, before and after
    before = _evaluate_before(run, trainer, eval_ds, resume.state, byte_table=byte_table, start=start)
    # Callbacks: what measures, records, reports and saves the run, carried over a resume.
    position = Position(epoch, done_batches, batches.epoch_length)
    logs = RunLogs(config, resume.state, plan.total_steps, resume.segments, position=position, before=before)
    callbacks = run_callbacks(
        config, logs, checkpoints, prepared.tokenizer, chief=run.chief, strategy=run.strategy, batch_size=run.batch_size
    )
    # Train: one Keras fit a pass over the data (see RunBatches.passes).
    passes = [] if done else batches.passes(epoch, done_batches, epochs)
    seconds = _train(run, trainer, passes, callbacks, plan=plan, eval_ds=eval_ds, start=start)
    steps = _finish(run, trainer, callbacks, logs, checkpoints, start=start)
    if not run.chief:
        # A worker's results are the chief's; this line lets a launcher check the replicas agree.
        digest = weights_digest(model)
        logger.info(f"worker done: {steps:,} optimizer steps; weights sha256 {digest}")
        return {"train_steps": steps, "weights_sha256": digest}
    # Evaluate, save, sample, write the results and report them.
    after = preference.evaluate(run, trainer, eval_ds, byte_table)
    logger.info(f"after training: {preference.line(after)}")
    # Saved before sampling: whatever happens next, the trained model is on disk.
    files.save_pretrained_atomic(lora.saved_objects(model) + [prepared.tokenizer], run.out.path, replaces=MODEL_FILES)
    samples = final_samples(model, prepared.tokenizer, config)
    _plot(run, logs, plan)
    results = results_of(
        run, model, prepared, logs, callbacks, after=after, seconds=seconds, start=start, steps=steps, samples=samples
    )
    return _report(run, results, callbacks, before=before, after=after, seconds=seconds)


def _build_model(run: _Run, tokenizer):
    """The model in the strategy's scope, with the run's decoding defaults; the one line that describes it."""
    config = run.config
    with run.strategy.scope():
        model = load_model(config.model, tokenizer, config.data.block_size, config.train.precision, config.lora)
    set_decoding_defaults(model, config, tokenizer)
    return model


def _check_room(run: _Run, model) -> None:
    """Enough disk for the run's checkpoints and model (before the first write); the line that says what runs."""
    train, replicas = run.config.train, run.strategy.num_replicas_in_sync
    params, trainable = lora.parameter_counts(model)
    if run.chief:
        check_free_space(run.out.path, trainable if lora.adapters_in(model) else params)  # LoRA saves what trains
    logger.info(
        f"model: {type(model).__name__}, {lora.describe_parameters(model)}, {run.policy} precision; strategy "
        f"{run.described}, global batch {train.batch_size} x {replicas} = {run.batch_size}"
    )


def _find_resume(run: _Run, plan) -> _Resume:
    """The step to start from, agreed by every worker, and the schedule's segments from there.

    Every worker resumes from the chief's checkpoints and none reads before the chief has (agree_on_step);
    --overwrite clears the old run only now, once the data, tokenizer and model have all loaded.
    """
    out, train = run.out, run.config.train
    if run.chief and run.overwrite:
        clear_run(out.path)
    found = newest_readable(out / DIRNAME) if run.chief else None
    step = agree_on_step(run.strategy, -1 if found is None else found)
    state = RunState.read(out / DIRNAME, step) if step >= 0 else None
    segments = initial_segments(train.learning_rate, train.lr_schedule, train.warmup_ratio, plan.total_steps)
    if state is not None and state.total_steps != plan.total_steps:
        segments = extend(state.schedule, state.step, plan.total_steps)  # continue the rate, never jump
        logger.info(
            f"schedule: extended from {state.total_steps:,} to {plan.total_steps:,} optimizer steps; the learning "
            f"rate goes on from {rate_at(segments, state.step):.3g} at step {state.step:,}"
        )
    elif state is not None:
        segments = state.schedule
    return _Resume(step, state, segments)


def _build_trainer(run: _Run, model, plan, resume: _Resume, reference):
    """(trainer, checkpoints, the optimizer step restored): the train step compiled in the strategy's scope; a
    preference run's scores answers against `reference` (see `tfclm.run.preference`)."""
    train = run.config.train
    with run.strategy.scope():
        trainer = preference.trainer_class(run.config, reference)(
            model, accumulation_steps=plan.accumulation, loss_chunk_tokens=train.loss_chunk_tokens,
            recompute=train.recompute == "blocks", fused_ops=train.fused_ops, seed=train.seed,
        )  # fmt: skip
        optimizer = make_optimizer(train, model, segments=resume.segments)
        trainer.compile(optimizer=optimizer, jit_compile=resolve_jit_compile(train.jit_compile))
    checkpoints = Checkpoints(run.dirs.work_dir, model, trainer.optimizer, restore_dir=run.out.path)
    start = checkpoints.restore(resume.step) if resume.step >= 0 else 0
    return trainer, checkpoints, start


def _position(state: RunState | None, start: int, plan) -> tuple[int, int]:
    """(epoch in progress, its micro-batches trained on) at the start."""
    if state is not None:
        return state.epoch, state.batches_in_epoch
    if start and plan.steps_per_epoch:  # a checkpoint from before run states: its position follows from the step
        return start // plan.steps_per_epoch, start % plan.steps_per_epoch * plan.accumulation
    return 0, 0


def _go_ahead(run: _Run, prepared, *, start: int, done: bool) -> None:
    """Refuse a finished run; then, the run known to go ahead, its first writes."""
    out = run.out
    if run.chief and done and os.path.exists(out / OutputDir.RESULTS):
        raise ConfigError(
            "output_dir",
            f"{out.path!r} already holds a finished run ({start:,} steps, results.json); use a new --output-dir, "
            f"or --overwrite to train again",
        )
    if run.chief:  # the resolved config, and no leftovers of a killed run
        out.write_config(config_lib.to_yaml(run.config))
        files.remove_temporaries(out.path)
        remove_unfinished_saves(out / DIRNAME)
    prepared.write_cache()


def _evaluate_before(run: _Run, trainer, eval_ds, state, *, byte_table, start: int):
    """The evaluation before training: a resumed run's from its run state, else measured (if asked)."""
    if state is not None:
        return state.before
    if run.chief and run.config.evaluate.before_training and not start:
        before = preference.evaluate(run, trainer, eval_ds, byte_table)
        logger.info(f"before training: {preference.line(before)}")
        return before
    return None


def _train(run: _Run, trainer, passes: list, callbacks: RunCallbacks, *, plan, eval_ds, start: int) -> float:
    """Keras' fit over each pass until the plan's last optimizer step (or a stop); the seconds it took."""
    data, micro = run.config.data, plan.accumulation
    xla = "XLA" if resolve_jit_compile(run.config.train.jit_compile) else "no XLA"
    logger.info(
        f"training: {plan.total_steps - start:,} optimizer steps of {run.batch_size} x {micro} x {data.block_size} = "
        f"{run.batch_size * data.block_size * micro:,} tokens, {xla}; MFU against peak {callbacks.peak_source}"
    )
    started = time.perf_counter()
    for initial_epoch, last_epoch, steps_per_epoch, train_ds in passes:
        remaining = plan.total_steps - int(trainer.optimizer.iterations.numpy())
        if remaining <= 0 or callbacks.guard.stopped_at is not None:
            break
        if steps_per_epoch is not None:  # a run that ends inside this epoch gets a progress bar of its own length
            steps_per_epoch = min(steps_per_epoch, remaining * micro)
        trainer.fit(
            train_ds,
            validation_data=eval_ds,
            epochs=last_epoch,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=[*callbacks.all, StopAfterSteps(remaining)],
            verbose=run.verbose if run.verbose is not None else (1 if os.isatty(1) else 2),
        )
    return time.perf_counter() - started


def _finish(run: _Run, trainer, callbacks: RunCallbacks, logs: RunLogs, checkpoints, *, start: int) -> int:
    """Stop with the non-finite message, or write the finish line (so a rerun knows this run is done, or an
    extension where to go on from); the optimizer steps taken."""
    guard, saver = callbacks.guard, callbacks.saver
    if guard.stopped_at is not None:
        saved = [start, *saver.saved] if start else saver.saved
        raise TfclmError(nan_message(guard.stopped_at, guard.patience, run.config, saved))
    steps = int(trainer.optimizer.iterations.numpy())
    for tracker in callbacks.trackers:
        tracker.flush(steps)
    if saver.saved and saver.saved[-1] == steps:
        logs.run_state(steps).write(checkpoints.directory)
    elif steps:
        checkpoints.save(steps, logs.run_state(steps))
    return steps


def _plot(run: _Run, logs: RunLogs, plan) -> None:
    logged = logs.epoch_logs()
    if run.config.logging.curves and logged.get("loss"):
        steps, losses = logs.steps.steps, logs.steps.history.get("loss")
        plot_training_curves(run.out / OutputDir.CURVES, logged, steps, losses, plan.steps_per_epoch)


def _report(run: _Run, results: dict, callbacks: RunCallbacks, *, before, after, seconds: float) -> dict:
    """results.json, the trackers' and the Hub's copies of the run, and the summary line."""
    config, out = run.config, run.out
    out.write_results(results)
    report_to_trackers(callbacks.trackers, results, config)
    pusher = callbacks.pusher
    if pusher is not None:
        pusher.push_final(config=dataclasses.asdict(config), results=results, save=False)
        if pusher.failures:  # the run is complete on disk; the Hub copy is not
            results["hub_failures"] = list(pusher.failures)
            out.write_results(results)
    throughput = callbacks.throughput
    mfu = "" if throughput.mfu is None else f", MFU {throughput.mfu:.1%}"
    first = f"{before['perplexity']:,.2f}" if before else "not measured"  # evaluate.before_training: false
    logger.info(
        f"done: {results['train_steps']:,} optimizer steps ({throughput.steps:,} batches this run), "
        f"{throughput.tokens:,} tokens in {seconds:,.1f} s ({throughput.tokens_per_second:,.0f} tokens/s{mfu}); "
        f"perplexity {first} -> {after['perplexity']:,.2f}; saved to {out.path}"
    )
    return results
