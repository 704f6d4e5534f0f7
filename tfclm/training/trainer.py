"""The training step: float32 loss, gradient accumulation, loss scaling, XLA.

`CausalLMTrainer` wraps a transformers TF causal LM in a Keras model whose
`train_step` computes the loss in float32 from the logits (under mixed
precision the model's own loss would sum token losses in 16 bits), averages
gradients over `accumulation_steps` micro-batches before one optimizer step,
and scales the loss under fp16. With `loss_chunk_tokens` the train and
eval steps take the LM head and its loss that many tokens at a time
(`tfclm.model.chunked_loss`), so the full logits never exist; with
`recompute` each transformer block is recomputed in the backward pass
(`tfclm.model.recompute`); with `fused_ops` (the default) the MLP's activation
and the layer norms run as XLA-fused functions in the train step
(`tfclm.model.fused_ops`). Dropout in the train step draws its masks from
the run's seed and the optimizer step (`tfclm.model.dropout`), so a resumed
run and a recomputed block draw the masks an uninterrupted run draws. The
wrapped model is the one that is saved.
"""

import contextlib
import logging

from tfclm.backend import keras, tf
from tfclm.errors import ConfigError
from tfclm.model import dropout
from tfclm.model.chunked_loss import chunked_token_loss_sums, closed_form_head
from tfclm.model.fused_ops import fuse, fused
from tfclm.model.loss import token_loss_sums
from tfclm.model.recompute import recompute_blocks, recomputing

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


NEVER = 2**31 - 1  # steps before the loss scale may grow


class CausalLMTrainer(keras.Model):
    """Trains `lm` (a transformers TF causal LM) on batches of the tfclm contract.

    `iterations` of the optimizer count optimizer steps; Keras' own batch count
    counts micro-batches, `accumulation_steps` of them per optimizer step.

    An update whose loss or gradients are not finite is skipped: the optimizer
    is wrapped in Keras' LossScaleOptimizer (as fp16 needs; elsewhere from a
    scale of 1 that never grows, so that it changes no number), which checks
    the gradients of every replica before it applies them, counts the step
    and leaves the weights as they were. `skipped_steps` (in the logs) counts such steps and
    `nonfinite_streak` those in a row, for a callback to stop on.

    `seed` (0 to 2**32 - 1) with the optimizer step, the micro-batch and the
    replica seeds every dropout mask of a step; None leaves Keras' own dropout
    (drawn from the process's random state: a resumed run draws other masks),
    for comparison.
    """

    def __init__(
        self,
        lm,
        accumulation_steps: int = 1,
        loss_chunk_tokens: int = 0,
        recompute: bool = False,
        fused_ops: bool = True,
        seed: int | None = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lm = lm
        self.seed = seed
        if seed is not None:
            dropout.seed_dropout(lm)
        self.accumulation_steps = accumulation_steps
        self.loss_chunk_tokens = loss_chunk_tokens
        self._body, self._head = closed_form_head(lm, required=bool(loss_chunk_tokens))
        self.recompute = recompute
        if recompute:
            recompute_blocks(lm)
        self.fused_ops = fused_ops
        if fused_ops:
            fuse(lm)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.watched = {}  # log name -> Mean: what `objective` reports beside the loss
        # The last batch's own loss: Keras logs the epoch's running mean, and the step's loss taken back out of it
        # is off by float32 rounding that grows with the batch index (and differs for an epoch resumed mid-way).
        self.last_batch_loss = tf.Variable(
            0.0, trainable=False, aggregation=tf.VariableAggregation.MEAN, name="last_batch_loss"
        )
        counter = dict(dtype=tf.int64, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.skipped_steps = tf.Variable(0, **counter)
        self.nonfinite_streak = tf.Variable(0, **counter)
        self._window_bad = tf.Variable(False, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._accumulated = None
        self._micro_steps = None

    def call(self, batch, training=False):
        return self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=training).logits

    def loss_sums(self, batch, training: bool):
        """(sum of token losses, tokens scored), from the full logits or `loss_chunk_tokens` tokens at a time.

        Training with `loss_chunk_tokens` 0 takes the head over all tokens as one chunk where the family allows
        (see `closed_form_head`): the same loss, its gradients in closed form."""
        labels = batch["labels"]
        if self._head is None or not (self.loss_chunk_tokens or training):
            return token_loss_sums(labels, self(batch, training=training))
        hidden = self._body(batch["input_ids"], batch["attention_mask"], training)
        # Read as the step is traced: a frozen head (LoRA's) takes no gradient.
        head_trains = self._head.weight.name in {v.name for v in self.lm.trainable_variables}
        return chunked_token_loss_sums(
            hidden, labels, self._head, self.loss_chunk_tokens or None, training, head_trains
        )

    def _fused(self):
        return fused() if self.fused_ops else contextlib.nullcontext()

    @property
    def metrics(self):
        return [self.loss_tracker, *self.watched.values()]

    def compile(self, optimizer, jit_compile: bool = False, **kwargs):
        # The loss is scaled (and the gradients unscaled, a pass over every gradient) only under a scale that
        # moves: fp16's, or one the caller brought.
        self._scales_loss = True
        if not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
            if keras.mixed_precision.global_policy().name == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            else:
                self._scales_loss = False
                # Only the dynamic wrapper checks the gradients and skips; its scale (from 1, never growing) is never
                # applied.
                optimizer = keras.mixed_precision.LossScaleOptimizer(
                    optimizer, dynamic=True, initial_scale=1.0, dynamic_growth_steps=NEVER
                )
                # A scale of 1 has nothing to apply: without these, Keras warns at the first step that the loss
                # was never scaled and that quality will suffer.
                optimizer._loss_has_been_scaled = optimizer._gradients_have_been_unscaled = True
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        variables = self.lm.trainable_variables
        # Slots exist before the first step: a step applied inside tf.cond may not create variables.
        self.inner_optimizer._create_all_weights(variables)
        if self.accumulation_steps > 1:
            self._accumulated = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables]
            self._micro_steps = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def inner_optimizer(self):
        """The optimizer that updates the weights, inside the loss-scale wrapper."""
        return self.optimizer.inner_optimizer

    def learning_rate(self):
        optimizer = self.inner_optimizer
        lr = optimizer.learning_rate
        return lr(optimizer.iterations) if callable(lr) else tf.convert_to_tensor(lr)

    def _count(self, bad):
        """After each optimizer step: one more skipped step and streak, or the streak back to 0."""
        self.skipped_steps.assign_add(tf.cast(bad, tf.int64))
        self.nonfinite_streak.assign(tf.where(bad, self.nonfinite_streak + 1, tf.constant(0, tf.int64)))

    def _step_seed(self):
        """This micro-batch's dropout seed, read before the step changes the counters."""
        micro = self._micro_steps % self.accumulation_steps if self.accumulation_steps > 1 else 0
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return dropout.step_seed(self.seed, self.inner_optimizer.iterations, micro, replica)

    # Not converted by autograph, nor is the model code they call (Keras layers follow the caller's status):
    # the steps use tf.cond where they branch, and converting transformers' model code took seconds a process.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, batch):
        if self.seed is None:
            return self._train_step(batch)
        # Around the gradient too: a recomputed block draws its masks again there.
        with dropout.seeded(self._step_seed()):
            return self._train_step(batch)

    def _train_step(self, batch):
        variables = self.lm.trainable_variables
        # Only what trains is watched: frozen weights (LoRA's base) keep no activations for gradients never taken.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            with recomputing() if self.recompute else contextlib.nullcontext(), self._fused():
                loss, watched = self.objective(batch, training=True)
            # Replicas' gradients are summed when applied: each contributes its share of the mean.
            objective = loss / tf.distribute.get_strategy().num_replicas_in_sync
            if self._scales_loss:
                objective = self.optimizer.get_scaled_loss(objective)
        with self._fused():  # a recomputed block runs its forward pass again here
            grads = tape.gradient(objective, variables)
        if self._scales_loss:
            grads = self.optimizer.get_unscaled_gradients(grads)
        loss_finite = tf.math.is_finite(loss)
        # A non-finite loss spoils one gradient, so the optimizer's own check skips the update: the smallest,
        # since spoiling means a pass over it.
        smallest = min((g for g in grads if g is not None), key=lambda g: g.shape.num_elements() or 0, default=None)
        grads = [_spoil_unless(loss_finite, g) if g is smallest else g for g in grads]
        bad = tf.logical_not(tf.logical_and(loss_finite, _all_finite(grads)))
        if self.accumulation_steps == 1:
            self.optimizer.apply_gradients(zip(grads, variables))
            self._count(bad)
        else:
            for buffer, grad in zip(self._accumulated, grads):
                buffer.assign_add(tf.cast(tf.convert_to_tensor(grad), tf.float32) / self.accumulation_steps)
            self._micro_steps.assign_add(1)
            self._window_bad.assign(tf.logical_or(self._window_bad, bad))

            def apply():
                self.optimizer.apply_gradients(zip([tf.identity(b) for b in self._accumulated], variables))
                for buffer in self._accumulated:
                    buffer.assign(tf.zeros_like(buffer))
                self._count(self._window_bad)
                self._window_bad.assign(False)
                return tf.constant(True)

            tf.cond(self._micro_steps % self.accumulation_steps == 0, apply, lambda: tf.constant(False))
        # A skipped step's loss stays out of the running mean, which would otherwise be NaN for the whole epoch.
        self.loss_tracker.update_state(tf.where(loss_finite, loss, 0.0), sample_weight=tf.cast(loss_finite, tf.float32))
        self.last_batch_loss.assign(loss)
        return {
            "loss": self.loss_tracker.result(),
            "learning_rate": tf.cast(self.learning_rate(), tf.float32),
            "skipped_steps": self.skipped_steps.value(),
            **self._watch(watched),
        }

    def objective(self, batch, training: bool):
        """(the loss to minimise, {log name: values whose mean the logs show}): the mean token loss here."""
        total, count = self.loss_sums(batch, training=training)
        return total / tf.maximum(count, 1.0), {}

    def _watch(self, watched: dict) -> dict:
        for name, values in watched.items():
            self.watched[name].update_state(values)
        return {name: tracker.result() for name, tracker in self.watched.items()}

    @tf.autograph.experimental.do_not_convert
    def test_step(self, batch):
        total, count = self.loss_sums(batch, training=False)
        self.loss_tracker.update_state(total / tf.maximum(count, 1.0), sample_weight=count)
        return {"loss": self.loss_tracker.result()}


def _all_finite(grads):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(getattr(g, "values", g))) for g in grads if g is not None])


def _spoil_unless(ok, grad):
    if grad is None:
        return None
    factor = tf.where(ok, tf.constant(1.0, tf.float32), tf.constant(float("nan"), tf.float32))
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * tf.cast(factor, grad.values.dtype), grad.indices, grad.dense_shape)
    return grad * tf.cast(factor, grad.dtype)
