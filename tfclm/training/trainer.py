"""The training step: float32 loss, gradient accumulation, loss scaling, XLA.

`CausalLMTrainer` wraps a transformers TF causal LM in a Keras model whose
`train_step` computes the loss in float32 from the logits (under mixed
precision the model's own loss would sum token losses in 16 bits), averages
gradients over `accumulation_steps` micro-batches before one optimizer step,
and scales the loss under fp16. The wrapped model is the one that is saved.
"""

import logging

from tfclm.backend import keras, tf
from tfclm.errors import ConfigError
from tfclm.model.loss import token_loss_sums

logger = logging.getLogger(__name__)

PRECISION_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def has_accelerator() -> bool:
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def set_precision(precision: str) -> str:
    """Set Keras' global dtype policy before the model is built; returns the policy's name."""
    if precision not in PRECISION_POLICIES:
        raise ConfigError(
            "train.precision", f"unknown precision {precision!r}; use one of {', '.join(PRECISION_POLICIES)}"
        )
    policy = PRECISION_POLICIES[precision]
    keras.mixed_precision.set_global_policy(policy)
    if precision == "fp16" and not tf.config.list_logical_devices("GPU"):
        logger.warning(
            "precision: fp16 without a GPU runs slowly and gains nothing on a CPU; bf16 is the CPU's mixed precision"
        )
    return policy


def resolve_jit_compile(setting) -> bool:
    """auto: XLA on GPUs and TPUs, where it pays; on a CPU it changed the train step by under 2%."""
    return has_accelerator() if setting == "auto" else bool(setting)


class CausalLMTrainer(keras.Model):
    """Trains `lm` (a transformers TF causal LM) on batches of the tfclm contract.

    `iterations` of the optimizer count optimizer steps; Keras' own batch count
    counts micro-batches, `accumulation_steps` of them per optimizer step.
    """

    def __init__(self, lm, accumulation_steps: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.lm = lm
        self.accumulation_steps = accumulation_steps
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._accumulated = None
        self._micro_steps = None

    def call(self, batch, training=False):
        return self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=training).logits

    @property
    def metrics(self):
        return [self.loss_tracker]

    def compile(self, optimizer, jit_compile: bool = False, **kwargs):
        if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
            optimizer, keras.mixed_precision.LossScaleOptimizer
        ):
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        variables = self.lm.trainable_variables
        # Slots exist before the first step: a step applied inside tf.cond may not create variables.
        self.inner_optimizer._create_all_weights(variables)
        if self.accumulation_steps > 1:
            self._accumulated = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables]
            self._micro_steps = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def loss_scaled(self) -> bool:
        return isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)

    @property
    def inner_optimizer(self):
        """The optimizer that updates the weights: under fp16 the one inside the loss-scale wrapper."""
        return self.optimizer.inner_optimizer if self.loss_scaled else self.optimizer

    def learning_rate(self):
        optimizer = self.inner_optimizer
        lr = optimizer.learning_rate
        return lr(optimizer.iterations) if callable(lr) else tf.convert_to_tensor(lr)

    def train_step(self, batch):
        variables = self.lm.trainable_variables
        scaled = self.loss_scaled
        with tf.GradientTape() as tape:
            total, count = token_loss_sums(batch["labels"], self(batch, training=True))
            loss = total / tf.maximum(count, 1.0)
            # Replicas' gradients are summed when applied: each contributes its share of the mean.
            objective = loss / tf.distribute.get_strategy().num_replicas_in_sync
            objective = self.optimizer.get_scaled_loss(objective) if scaled else objective
        grads = tape.gradient(objective, variables)
        if scaled:
            grads = self.optimizer.get_unscaled_gradients(grads)
        if self.accumulation_steps == 1:
            self.optimizer.apply_gradients(zip(grads, variables))
        else:
            for buffer, grad in zip(self._accumulated, grads):
                buffer.assign_add(tf.cast(tf.convert_to_tensor(grad), tf.float32) / self.accumulation_steps)
            self._micro_steps.assign_add(1)

            def apply():
                self.optimizer.apply_gradients(zip([tf.identity(b) for b in self._accumulated], variables))
                for buffer in self._accumulated:
                    buffer.assign(tf.zeros_like(buffer))
                return tf.constant(True)

            tf.cond(self._micro_steps % self.accumulation_steps == 0, apply, lambda: tf.constant(False))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result(), "learning_rate": tf.cast(self.learning_rate(), tf.float32)}

    def test_step(self, batch):
        total, count = token_loss_sums(batch["labels"], self(batch, training=False))
        self.loss_tracker.update_state(total / tf.maximum(count, 1.0), sample_weight=count)
        return {"loss": self.loss_tracker.result()}
