"""The optimizer: transformers' AdamWeightDecay (its decay in one pass), its decay exclusions and its schedule.

Weight decay applies to weight matrices and embeddings only: the stock
exclusion list ("LayerNorm", "layer_norm", "bias") misses GPT-2's `ln_1`,
`ln_2` and `ln_f`, so the exclusions are read off the model's own layers
instead of guessed from names.
"""

from transformers import AdamWeightDecay

from tfclm.backend import keras, tf
from tfclm.config import TrainConfig
from tfclm.training.schedule import RunSchedule, initial_segments


class OnePassDecayAdam(AdamWeightDecay):
    """transformers' AdamWeightDecay, its decoupled decay taken in one pass over each weight.

    The stock decay, `var.assign_sub(lr * var * rate)`, makes two products the
    size of the weight and subtracts one from it: three passes, more time than
    Adam's own fused update (on distilgpt2 on 2 cores). `var * (1 - lr * rate)`
    is the same decay in one product, which the assignment takes over.
    """

    def _decay_weights_op(self, var, learning_rate, apply_state):
        if not self._do_use_weight_decay(var.name):
            return tf.no_op()
        rate = apply_state[(var.device, var.dtype.base_dtype)]["weight_decay_rate"]
        return var.assign(var * (1.0 - learning_rate * rate), use_locking=self._use_locking)


def no_decay_variables(model) -> list:
    """Biases and every normalization layer's variables: weight decay would only shrink them toward 0."""
    norm_ids = set()
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Layer) and "norm" in type(layer).__name__.lower():
            norm_ids.update(id(v) for v in layer.weights)
    return [v for v in model.trainable_variables if id(v) in norm_ids or v.name.split("/")[-1].startswith("bias")]


def learning_rate_schedule(train: TrainConfig, total_steps: int) -> RunSchedule:
    """Warm-up over train.warmup_ratio of the steps, then train.lr_schedule's decay to 0 at `total_steps`."""
    return RunSchedule(initial_segments(train.learning_rate, train.lr_schedule, train.warmup_ratio, total_steps))


def make_optimizer(train: TrainConfig, model, total_steps: int | None = None, segments: list | None = None):
    """AdamWeightDecay (its decay in one pass) over `segments` (a resumed run's saved schedule), or a new
    schedule of `total_steps`."""
    # AdamWeightDecay matches these as substrings of variable names; full names
    # (".../h_._1/ln_1/gamma:0") match only themselves.
    excluded = [v.name for v in no_decay_variables(model)]
    schedule = RunSchedule(segments) if segments is not None else learning_rate_schedule(train, total_steps)
    return OnePassDecayAdam(
        learning_rate=schedule,
        weight_decay_rate=train.weight_decay,
        exclude_from_weight_decay=excluded,
        global_clipnorm=train.clipnorm,
    )
