"""The callbacks a run adds for its `logging:` and `hub:` sections, beside the ones every run has."""

import dataclasses
import logging
import os

from tfclm import config as config_lib
from tfclm.backend import keras
from tfclm.errors import first_line
from tfclm.files import OutputDir
from tfclm.generation.generator import Generator, generate_samples
from tfclm.hub.callback import PushToHubCallback
from tfclm.hub.modelcard import model_card
from tfclm.hub.uploads import DEFAULT_IGNORE, check_repo_id
from tfclm.run.report import versions
from tfclm.tracking.mlflow_tracker import MLflowCallback
from tfclm.tracking.wandb_tracker import WandbCallback
from tfclm.training.callbacks import PerplexityCallback, SampleTextCallback, StopOnNonFiniteLoss, ThroughputCallback
from tfclm.training.checkpoints import CheckpointCallback
from tfclm.training.peak import peak_flops

logger = logging.getLogger(__name__)


def sample_options(config: config_lib.Config) -> tuple[list, dict]:
    """(prompts, decoding options) of the `generate:` section; the seed defaults to train.seed."""
    options = dataclasses.asdict(config.generate)
    prompts = options.pop("prompts")
    # The sampler takes an int32 seed; a train.seed past it wraps into that range.
    options["seed"] = options["seed"] if options["seed"] is not None else config.train.seed % 2**31
    return prompts, options


def final_samples(model, tokenizer, config: config_lib.Config) -> list:
    """The samples of `generate.prompts` at the run's end, logged; none, and one warning, where sampling fails:
    a report never costs the saved model or its results."""
    prompts, options = sample_options(config)
    try:
        # One call: compiling it with XLA would cost more than it saves.
        if config.data.format == "messages":  # a chat model answers the prompts as a user's messages
            samples = Generator(model, tokenizer, xla=False).chat(prompts, **options)
        else:
            samples = generate_samples(model, tokenizer, prompts, xla=False, **options)
    except Exception as exc:
        logger.warning(f"sample: failed ({first_line(exc, 200)}); the model is saved, and the results follow")
        return []
    for sample in samples:
        logger.info(
            f"sample ({sample.new_tokens} new tokens{', ended at EOS' if sample.stopped_at_eos else ''}): "
            f"{sample.text!r}"
        )
    return samples


def logging_callbacks(config: config_lib.Config, tokenizer) -> list:
    """TensorBoard scalars and samples during training, as the `logging:` section asks."""
    # TensorBoard counts Keras batches: under accumulation, micro-batches per optimizer step of them.
    micro = config.train.gradient_accumulation_steps

    log = config.logging
    log_dir = OutputDir(config.output_dir) / OutputDir.LOGS if "tensorboard" in log.report_to else None
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


def tracker_callbacks(config: config_lib.Config, run_ids: dict) -> list:
    """The MLflow and W&B callbacks `logging.report_to` asks for, continuing the runs of `run_ids` (a resume's).

    They hold their points until a checkpoint is on disk (`flush`), so a resumed run sends each step once.
    """
    log, out = config.logging, config.output_dir
    name = log.run_name or os.path.basename(os.path.abspath(out))
    params = config_lib.flatten(dataclasses.asdict(config))
    every = log.every_n_steps
    trackers = []
    if "mlflow" in log.report_to:
        tags = {f"versions.{k}": v for k, v in versions().items()}
        trackers.append(
            MLflowCallback(
                log.project, name, local_dir=out, config=params, tags=tags, every_n_steps=every, hold=True,
                run_id=run_ids.get("mlflow"),
            )
        )  # fmt: skip
    if "wandb" in log.report_to:
        trackers.append(
            WandbCallback(log.project, name, out, params, every_n_steps=every, hold=True, run_id=run_ids.get("wandb"))
        )
    return trackers


def report_to_trackers(trackers: list, results: dict, config: config_lib.Config) -> None:
    """The run's end for each tracker: the results, curves and config (and the model, with logging.log_model).

    A tracker that failed is named in results.json (`tracking_failures`) and in one line; the run itself is
    complete on disk, and fit exits 0: a tracker is a report of the run, not part of it.
    """
    out = config.output_dir
    shown = [OutputDir(out) / name for name in (OutputDir.CURVES, OutputDir.RESULTS, OutputDir.CONFIG)]
    name = config.hub.model_id or os.path.basename(os.path.abspath(out))
    card = model_card(name, dataclasses.asdict(config), results)
    for tracker in trackers:
        tracker.finish(results, shown, {OutputDir.CARD: card}, out if config.logging.log_model else None)
    failures = [t.failure for t in trackers if t.failure]
    if failures:
        results["tracking_failures"] = failures
        OutputDir(out).write_results(results)
        logger.warning(f"tracking: not everything was reported ({'; '.join(failures)}); the run is complete in {out}")


@dataclasses.dataclass
class RunCallbacks:
    """The callbacks of a run, by name where the run asks them afterwards, and all of them in Keras' order."""

    throughput: ThroughputCallback
    guard: StopOnNonFiniteLoss
    saver: CheckpointCallback
    trackers: list
    pusher: PushToHubCallback | None
    peak: float | None
    peak_source: str
    all: list


def run_callbacks(config: config_lib.Config, logs, checkpoints, tokenizer, *, chief: bool, strategy,
                  batch_size: int) -> RunCallbacks:  # fmt: skip
    """Every callback of a run; `logs` (a RunLogs) records into its StepHistory, History and Position."""
    train = config.train
    trackers = tracker_callbacks(config, logs.tracker_ids) if chief else []
    logs.trackers = trackers
    peak, peak_source = peak_flops(train.peak_tflops, train.precision, strategy)
    throughput = ThroughputCallback(batch_size * config.data.block_size, peak, sequence_length=config.data.block_size)
    # fp16's loss scaling skips steps by design while it finds its scale: leave stopping to it there.
    guard = StopOnNonFiniteLoss(None if train.precision == "fp16" else train.max_nonfinite_steps)
    saver = CheckpointCallback(
        checkpoints, train.checkpoint_steps, None, state=logs.run_state, before_save=[t.flush for t in trackers]
    )
    # Order matters: what adds to the logs comes before what records or sends them, and all before the saver.
    # A preference loss is no token loss: exp of it is no perplexity.
    perplexity = [PerplexityCallback()] if config.data.format != "preference" else []
    keras_order = [throughput, *perplexity, logs.steps, guard, logs.position, logs.epochs, *trackers, saver]
    if chief:
        keras_order += logging_callbacks(config, tokenizer)
    pusher = hub_callback(config, tokenizer) if chief else None
    if pusher is not None:
        keras_order.append(pusher)
    return RunCallbacks(throughput, guard, saver, trackers, pusher, peak, peak_source, keras_order)
