"""The optimizer: transformers' AdamWeightDecay, its decay exclusions and its learning-rate schedule.

Weight decay applies to weight matrices and embeddings only: the stock
exclusion list ("LayerNorm", "layer_norm", "bias") misses GPT-2's `ln_1`,
`ln_2` and `ln_f`, so the exclusions are read off the model's own layers
instead of guessed from names.
"""

from transformers import AdamWeightDecay, WarmUp

from tfclm.backend import keras
from tfclm.config import TrainConfig


def no_decay_variables(model) -> list:
    """Biases and every normalization layer's variables: weight decay would only shrink them toward 0."""
    norm_ids = set()
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Layer) and "norm" in type(layer).__name__.lower():
            norm_ids.update(id(v) for v in layer.weights)
    return [v for v in model.trainable_variables if id(v) in norm_ids or v.name.split("/")[-1].startswith("bias")]


def learning_rate_schedule(train: TrainConfig, total_steps: int):
    warmup = int(round(train.warmup_ratio * total_steps))
    decay_steps = max(1, total_steps - warmup)
    if train.lr_schedule == "linear":
        schedule = keras.optimizers.schedules.PolynomialDecay(train.learning_rate, decay_steps, end_learning_rate=0.0)
    elif train.lr_schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps)
    else:
        schedule = train.learning_rate
    if warmup > 0:
        if not callable(schedule):
            constant = train.learning_rate
            schedule = lambda step: constant  # noqa: E731 - WarmUp wants a callable
        schedule = WarmUp(initial_learning_rate=train.learning_rate, decay_schedule_fn=schedule, warmup_steps=warmup)
    return schedule


def make_optimizer(train: TrainConfig, model, total_steps: int) -> AdamWeightDecay:
    # AdamWeightDecay matches these as substrings of variable names; full names
    # (".../h_._1/ln_1/gamma:0") match only themselves.
    excluded = [v.name for v in no_decay_variables(model)]
    return AdamWeightDecay(
        learning_rate=learning_rate_schedule(train, total_steps),
        weight_decay_rate=train.weight_decay,
        exclude_from_weight_decay=excluded,
        global_clipnorm=train.clipnorm,
    )
