"""Preference figures: a model's DPO loss and rewards against a reference, over every pair of a dataset.

`pair_means` gives the means over every pair (not over batches): `dpo_loss`,
`chosen_reward`, `rejected_reward`, `reward_accuracy` (the share of pairs
whose chosen answer earns the larger reward), `reward_margin`, the answers'
log-probabilities, the chosen answers' token loss and perplexity, and
`pairs`. `evaluate_pairs_file` scores a saved model on a file of pairs
(`tfclm evaluate --preference-file`).
"""

import math

import numpy as np

from tfclm.backend import tf
from tfclm.config import DataConfig, PreferenceConfig
from tfclm.data import chat, examples, preference, sources
from tfclm.data.pipeline import make_dataset
from tfclm.errors import ConfigError
from tfclm.evaluation.perplexity import perplexity
from tfclm.model.preference_loss import Scorer, pair_figures, reference_scorer

NAMES = {"loss": "dpo_loss", "chosen_rewards": "chosen_reward", "rejected_rewards": "rejected_reward",
         "chosen_logps": "chosen_logps", "rejected_logps": "rejected_logps"}  # fmt: skip


def pair_means(policy, reference, dataset, settings: PreferenceConfig) -> dict:
    """The preference figures of `policy` (a `Scorer`) against `reference` (a scorer, or None where the batches
    carry its scores) over every batch of `dataset`."""
    step = tf.function(lambda batch: pair_figures(policy, reference, batch, settings), reduce_retracing=True)
    found = {name: [] for name in NAMES}
    nll_sum, nll_tokens = 0.0, 0.0
    for batch in dataset:
        figures = step(batch)
        for name in NAMES:
            found[name].append(figures[name].numpy().astype(np.float64))
        nll_sum += float(figures["nll_sum"])
        nll_tokens += float(figures["nll_tokens"])
    values = {name: np.concatenate(parts) for name, parts in found.items()}
    margins = values["chosen_rewards"] - values["rejected_rewards"]
    loss = nll_sum / nll_tokens if nll_tokens else math.nan
    return {
        **{NAMES[name]: float(v.mean()) for name, v in values.items()},
        "reward_accuracy": float((margins > 0).mean()),
        "reward_margin": float(margins.mean()),
        "chosen_loss": loss,
        "chosen_perplexity": perplexity(loss),
        "pairs": int(len(margins)),
    }


def preference_line(figures: dict) -> str:
    """ "dpo loss 0.6931, reward accuracy 50.0%, margin 0.0000 over 12 pairs"."""
    return (
        f"dpo loss {figures['dpo_loss']:.4f}, reward accuracy {figures['reward_accuracy']:.1%}, margin "
        f"{figures['reward_margin']:.4f} over {figures['pairs']:,} pairs"
    )


def check_same_vocabulary(tokenizer, reference_tokenizer, reference_model, key: str) -> None:
    """A reference scores the policy's token ids: it must read them as the same tokens."""
    where = getattr(reference_tokenizer, "name_or_path", "the reference")
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            key,
            f"{where!r} has another tokenizer ({len(reference_tokenizer):,} tokens against the model's "
            f"{len(tokenizer):,}, or the same ids for other tokens); a reference must share the model's tokenizer",
        )
    if reference_model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            key, f"{where!r} has {reference_model.config.vocab_size:,} embeddings, fewer than the {len(tokenizer):,} "
            f"tokens of the model's tokenizer; use a reference with the same vocabulary",
        )  # fmt: skip


def pair_blocks(path: str, tokenizer, block_size: int, settings: PreferenceConfig):
    """The pairs of a file (.json, .jsonl, .csv, .parquet) as chosen and rejected rows."""
    data = DataConfig(dataset=path, format="preference")
    found = [e for _, _, e in examples.preference_pairs(sources.load_records(data), data)]
    if not found:
        raise ConfigError("--preference-file", f"{path!r} holds no pairs")
    if preference.conversational(found):
        if not tokenizer.chat_template:  # tfclm's ChatML would add tokens this model never learned
            raise ConfigError(
                "--preference-file",
                f"{path!r} holds conversations, and the model's tokenizer has no chat template to render them; save "
                f"the template the model was trained with beside it (chat_template), or score text pairs",
            )
        chat.check_template(tokenizer, "--model")
    return preference.encode(found, tokenizer, block_size, settings, key="--block-size")


def evaluate_pairs_file(model_dir: str, reference_dir, pairs_path: str, settings: PreferenceConfig, *,
                        batch_size: int, block_size: int | None) -> dict:  # fmt: skip
    """The preference figures of a saved model on the pairs in `pairs_path`, against `reference_dir` (None: a
    LoRA adapter dir's base with the adapters off)."""
    from tfclm.model import lora
    from tfclm.model.loading import load_trained, n_positions

    model, tokenizer = load_trained(model_dir)
    reference = None
    if reference_dir is not None:
        reference, reference_tokenizer = load_trained(reference_dir, key="--reference")
        check_same_vocabulary(tokenizer, reference_tokenizer, reference, "--reference")
    elif lora.adapters_in(model) is None:
        raise ConfigError(
            "--reference", f"{model_dir!r} is a whole model, with no base to compare it with; name the reference model"
        )
    block = block_size or min(1024, n_positions(model) or 1024)  # TRL's max_length
    blocks = pair_blocks(pairs_path, tokenizer, block, settings)
    dataset = make_dataset("fast", blocks, batch_size, shuffle=False, seed=0)
    return pair_means(Scorer(model), reference_scorer(model, reference), dataset, settings)
