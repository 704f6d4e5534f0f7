"""Preference tuning: DPO and TRL's ipo and hinge losses on the tfclm train step.

A batch holds each pair's chosen rows (`input_ids`, `attention_mask`,
`labels`) and its rejected rows (`rejected_` before the same names), the
labels -100 but on the answers. The policy scores both in one pass; the
reference scores them too (a frozen model, or the policy with its LoRA
adapters off), or the batch carries the reference's scores, computed once
before training (`ref_chosen_logps`, `ref_rejected_logps`). Both score
without dropout, as TRL does by default.

With `logits = (policy chosen - rejected) - (reference chosen - rejected)`
(log-probabilities summed over the answer's tokens; for ipo, averaged):

    sigmoid: -log sigmoid(beta logits) (1 - label_smoothing) - log sigmoid(-beta logits) label_smoothing
    ipo:     (logits - 1 / (2 beta))^2
    hinge:   max(0, 1 - beta logits)

and `rpo_alpha` adds that times the chosen answers' mean token loss. The
rewards are beta (policy - reference), for each answer: TRL's formulas and
metric names, so the same model and pairs give the same figures in both.
"""

from tfclm.backend import tf
from tfclm.data.pipeline import REJECTED
from tfclm.model import lora
from tfclm.model.chunked_loss import closed_form_head
from tfclm.model.sequence_logps import chunked_sequence_logps, logps_from_logits

REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
SCORING_CHUNK = 512  # tokens a chunk of the LM head where train.loss_chunk_tokens is 0
# TRL's names, in the progress bar, TensorBoard, the trackers and results.json
WATCHED = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")  # fmt: skip


def both_sides(batch) -> dict:
    """The chosen rows then the rejected rows, as one batch of twice the pairs."""
    return {k: tf.concat([batch[k], batch[REJECTED + k]], 0) for k in ("input_ids", "attention_mask", "labels")}


class Scorer:
    """Log-probability sums of a model's answers: `scorer(rows, training)` -> (sums, tokens) per row, through
    the chunked head where the family has one."""

    def __init__(self, lm, chunk_tokens: int = 0):
        # Always in chunks where the family allows: one chunk of every token would hold the batch's logits, their
        # softmax and their gradient in float32 at once (distilgpt2, 8 pairs x 128: 1.2 GB more than SFT's peak).
        self.lm, self.chunk_tokens = lm, chunk_tokens or SCORING_CHUNK
        self.body, self.head = closed_form_head(lm, required=bool(chunk_tokens))

    def __call__(self, rows, training: bool = False):
        if self.head is None:
            out = self.lm(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], training=training)
            return logps_from_logits(rows["labels"], out.logits)
        hidden = self.body(rows["input_ids"], rows["attention_mask"], training)
        head_trains = self.head.weight.name in {v.name for v in self.lm.trainable_variables}
        return chunked_sequence_logps(hidden, rows["labels"], self.head, self.chunk_tokens, head_trains)


class AdaptersOff(Scorer):
    """The policy's own scorer with its LoRA adapters switched off: the base as reference, no second copy."""

    def __call__(self, rows, training: bool = False):
        with lora.adapters_off():
            return super().__call__(rows, training)


def preference_losses(chosen, rejected, ref_chosen, ref_rejected, settings):
    """(per-pair losses, chosen rewards, rejected rewards), from the four log-probabilities per pair."""
    beta, smoothing = settings.beta, settings.label_smoothing
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    if settings.loss_type == "sigmoid":
        losses = -tf.math.log_sigmoid(beta * logits) * (1 - smoothing) - tf.math.log_sigmoid(-beta * logits) * smoothing
    elif settings.loss_type == "hinge":
        losses = tf.nn.relu(1 - beta * logits)
    else:  # ipo
        losses = (logits - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * tf.stop_gradient(chosen - ref_chosen)
    rejected_rewards = beta * tf.stop_gradient(rejected - ref_rejected)
    return losses, chosen_rewards, rejected_rewards


def pair_figures(policy, reference, batch, settings) -> dict:
    """Per-pair tensors of one batch: loss, rewards, log-probabilities, and the chosen answers' token loss
    (`nll_sum`, `nll_tokens`, for rpo_alpha). `reference` is None where the batch carries its scores."""
    rows = both_sides(batch)
    pairs = tf.shape(batch["input_ids"])[0]
    sums, counts = policy(rows, training=False)
    if reference is None:
        ref_sums = tf.concat([batch[REFERENCE_KEYS[0]], batch[REFERENCE_KEYS[1]]], 0)
    else:
        ref_sums = tf.stop_gradient(reference(rows, training=False)[0])
    logps, ref_logps = sums, ref_sums
    if settings.loss_type == "ipo":  # TRL's ipo compares mean log-probabilities
        logps, ref_logps = sums / tf.maximum(counts, 1.0), ref_sums / tf.maximum(counts, 1.0)
    chosen, rejected = logps[:pairs], logps[pairs:]
    losses, chosen_rewards, rejected_rewards = preference_losses(
        chosen, rejected, ref_logps[:pairs], ref_logps[pairs:], settings
    )
    return {
        "loss": losses,
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "chosen_logps": tf.stop_gradient(chosen),
        "rejected_logps": tf.stop_gradient(rejected),
        "nll_sum": -tf.reduce_sum(sums[:pairs]),
        "nll_tokens": tf.reduce_sum(counts[:pairs]),
    }


def objective_of(figures: dict, settings):
    """The batch's loss: the mean per-pair loss, plus rpo_alpha times the chosen answers' mean token loss."""
    loss = tf.reduce_mean(figures["loss"])
    if settings.rpo_alpha is not None:
        loss += settings.rpo_alpha * figures["nll_sum"] / tf.maximum(figures["nll_tokens"], 1.0)
    return loss


def watched_of(figures: dict) -> dict:
    """The per-pair values behind TRL's metrics."""
    chosen, rejected = figures["chosen_rewards"], figures["rejected_rewards"]
    values = (chosen, rejected, tf.cast(chosen > rejected, tf.float32), chosen - rejected,
              figures["chosen_logps"], figures["rejected_logps"])  # fmt: skip
    return dict(zip(WATCHED, values))


def reference_scorer(policy_lm, reference_lm, chunk_tokens: int = 0):
    """The reference's scorer: `reference_lm` frozen, or (None) the policy's base with its adapters off."""
    if reference_lm is None:
        return AdaptersOff(policy_lm, chunk_tokens)
    reference_lm.trainable = False
    return Scorer(reference_lm, chunk_tokens)
