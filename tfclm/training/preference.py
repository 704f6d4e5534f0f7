"""The preference train step: `CausalLMTrainer` with a preference loss (`tfclm.model.preference_loss`) as its
objective, TRL's metrics beside the loss, and validation as pairs."""

from tfclm.backend import keras, tf
from tfclm.model.preference_loss import WATCHED, Scorer, objective_of, pair_figures, watched_of
from tfclm.training.trainer import CausalLMTrainer


class PreferenceTrainer(CausalLMTrainer):
    """`CausalLMTrainer` whose objective is a preference loss (`settings`: the config's `preference:`).

    `reference` scores the answers for the reference (a `Scorer` of a frozen model, or `AdaptersOff` of the
    policy); None: the batches carry its scores (`ref_chosen_logps`, `ref_rejected_logps`).
    """

    def __init__(self, lm, settings, reference=None, **kwargs):
        super().__init__(lm, **kwargs)
        self.settings, self.reference = settings, reference
        self.policy = Scorer(lm, self.loss_chunk_tokens)
        self.watched = {name: keras.metrics.Mean(name=name.replace("/", "_")) for name in WATCHED}

    def objective(self, batch, training: bool):
        figures = pair_figures(self.policy, self.reference, batch, self.settings)
        return objective_of(figures, self.settings), watched_of(figures)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, batch):
        figures = pair_figures(self.policy, self.reference, batch, self.settings)
        pairs = tf.cast(tf.shape(batch["input_ids"])[0], tf.float32)
        self.loss_tracker.update_state(objective_of(figures, self.settings), sample_weight=pairs)
        return {"loss": self.loss_tracker.result(), **self._watch(watched_of(figures))}
