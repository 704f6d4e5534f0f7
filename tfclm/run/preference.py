"""A preference run's own phases: its reference (a frozen model, the adapters-off base, or its scores computed
once and cached), its trainer, and its evaluation as pairs."""

import functools
import hashlib
import logging
import os

import numpy as np

from tfclm.backend import tf
from tfclm.data.pipeline import make_dataset
from tfclm.evaluation.perplexity import eval_line, evaluate_loss
from tfclm.evaluation.preference import check_same_vocabulary, pair_means, preference_line
from tfclm.files import OutputDir, atomic_write_arrays
from tfclm.model.loading import load_model, load_trained
from tfclm.model.preference_loss import REFERENCE_KEYS, both_sides, reference_scorer
from tfclm.training.preference import PreferenceTrainer
from tfclm.training.trainer import CausalLMTrainer

logger = logging.getLogger(__name__)
SIDES = ("train", "validation")


def _reference_model(run, tokenizer):
    """The reference as its own model, or None for the policy's base with the adapters off."""
    config = run.config
    settings = config.preference
    with run.strategy.scope():
        if settings.reference is not None:
            model, reference_tokenizer = load_trained(settings.reference, key="preference.reference")
            check_same_vocabulary(tokenizer, reference_tokenizer, model, "preference.reference")
            return model
        if config.lora.rank:
            return None
        return load_model(config.model, tokenizer, config.data.block_size, config.train.precision)


def _cache_path(run, prepared) -> str:
    """Where the reference's scores of these pairs are kept: keyed by the pairs' tokens and the reference."""
    digest = hashlib.sha256(str(run.config.preference.reference or run.config.model.name_or_path).encode())
    for side in (prepared.train, prepared.validation):
        for blocks in (side, side.rejected):
            digest.update(blocks.input_ids.tobytes())
            digest.update(blocks.labels.tobytes())
    return os.path.join(run.dirs.work_dir, OutputDir.CACHE, f"reference-{digest.hexdigest()[:16]}.npz")


def _score(scorer, blocks, batch_size: int) -> dict:
    """The reference's log-probability sums of every chosen and rejected row, in row order."""
    step = tf.function(lambda rows: scorer(rows)[0], reduce_retracing=True)
    sums = [step(both_sides(batch)).numpy() for batch in make_dataset("fast", blocks, batch_size, False, 0)]
    pairs = [s.reshape(2, -1) for s in sums]
    return {key: np.concatenate([p[k] for p in pairs]).astype(np.float32) for k, key in enumerate(REFERENCE_KEYS)}


def reference_for(run, model, prepared):
    """The reference's scorer for the train step; None with `precompute_reference`, where every pair's rows carry
    the reference's scores (`Blocks.extras`), read from the output dir's cache or computed now and cached once the
    run goes ahead."""
    settings = run.config.preference
    if run.config.data.format != "preference":
        return None
    if not settings.precompute_reference:
        return reference_scorer(model, _reference_model(run, prepared.tokenizer), run.config.train.loss_chunk_tokens)
    path = _cache_path(run, prepared)
    if os.path.exists(path):
        with np.load(path) as cached:
            scores = {side: {key: cached[f"{side}/{key}"] for key in REFERENCE_KEYS} for side in SIDES}
        logger.info(f"reference: its scores of every pair read from {path}")
    else:
        reference = _reference_model(run, prepared.tokenizer)
        scorer = reference_scorer(model, reference, run.config.train.loss_chunk_tokens)
        batch = run.config.evaluate.batch_size
        scores = {side: _score(scorer, getattr(prepared, side), batch) for side in SIDES}
        del scorer, reference  # training holds one model
        logger.info("reference: every pair scored once; training holds the policy alone")

        arrays = {f"{side}/{key}": v for side, found in scores.items() for key, v in found.items()}
        prepared.cache_writes.append(lambda: atomic_write_arrays(path, arrays))
    for side in SIDES:
        getattr(prepared, side).extras = scores[side]
    return None


def trainer_class(config, reference):
    """The run's trainer class; a preference run's with its loss settings and reference given."""
    if config.data.format != "preference":
        return CausalLMTrainer
    return functools.partial(PreferenceTrainer, settings=config.preference, reference=reference)


def evaluate(run, trainer, eval_ds, byte_table) -> dict:
    """The run's evaluation: perplexity, and for pairs the preference figures and the chosen answers' loss."""
    config = run.config
    if config.data.format != "preference":
        return evaluate_loss(trainer.lm, eval_ds, byte_table, config.train.loss_chunk_tokens)
    figures = pair_means(trainer.policy, trainer.reference, eval_ds, config.preference)
    return {"loss": figures["chosen_loss"], "perplexity": figures["chosen_perplexity"], "preference": figures}


def line(figures: dict) -> str:
    if "preference" in figures:
        return f"{preference_line(figures['preference'])}; the chosen answers' perplexity {figures['perplexity']:,.2f}"
    return eval_line(figures)
