"""Dropout in the train step is a pure function of (run seed, optimizer step, micro-batch, call): a resumed run
and a recomputed block draw the masks an uninterrupted run draws."""

import numpy as np
import pytest

from tfclm.model.families import TRAINED

from helpers import TINY_CONFIGS


def dropping(model_type, rate=0.1, seed=0):
    """A tiny model of the family with every dropout rate its config has at `rate`."""
    from transformers import AutoConfig, TFAutoModelForCausalLM

    from tfclm.backend import keras

    keras.utils.set_random_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=96, pad_token_id=1, **TINY_CONFIGS[model_type])
    for name, value in vars(config).copy().items():
        if ("drop" in name or name.endswith("_pdrop")) and isinstance(value, float) and "layerdrop" not in name:
            setattr(config, name, rate)
    model = TFAutoModelForCausalLM.from_config(config)
    model.build_in_name_scope()
    return model


def batches(count, seed=3):
    ids = np.random.default_rng(seed).integers(2, 96, size=(count, 4, 16)).astype(np.int32)
    return [{"input_ids": x, "attention_mask": np.ones_like(x), "labels": x} for x in ids]


@pytest.mark.parametrize("model_type", TRAINED)
def test_every_familys_dropout_is_a_function_of_the_seed(model_type):
    """Each family's masks come from the step's seed alone: the same seed, the same logits; another, others."""
    from tfclm.backend import tf
    from tfclm.model.dropout import seed_dropout, seeded, step_seed

    model = dropping(model_type)
    assert seed_dropout(model) > 0
    batch = batches(1)[0]

    def logits(seed, training=True):
        with seeded(step_seed(seed, step=5, micro_batch=0)):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=training).logits

    first, again, other = logits(1), logits(1), logits(2)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert not np.allclose(first.numpy(), other.numpy())
    # Masks are drawn while training only.
    plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=False).logits
    np.testing.assert_array_equal(logits(1, training=False).numpy(), plain.numpy())
    assert not np.allclose(first.numpy(), plain.numpy())
    assert tf.executing_eagerly()


def train(model, data, start_step=0, accumulation=1, recompute=False):
    from tfclm.backend import keras, tf
    from tfclm.training.trainer import CausalLMTrainer

    trainer = CausalLMTrainer(model, accumulation_steps=accumulation, recompute=recompute, fused_ops=False, seed=11)
    # SGD moves each weight by its gradient, and keeps no state but the step count a resume restores.
    trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.5))
    trainer.inner_optimizer.iterations.assign(start_step)
    stacked = {key: np.stack([b[key] for b in data]) for key in data[0]}
    history = trainer.fit(tf.data.Dataset.from_tensor_slices(stacked), epochs=1, verbose=0).history
    return history["loss"][0], [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize("model_type, accumulation", [("gpt2", 1), ("opt", 1), ("gpt2", 2)])
def test_a_resumed_trainer_ends_on_the_uninterrupted_weights(model_type, accumulation):
    """Steps 1-4 in one go, and steps 1-2 then 3-4 in a new model and trainer (as after a kill): the same weights
    to the bit. OPT calls one dropout layer twice a block: each call draws a mask of its own."""
    data = batches(4 * accumulation)
    _, uninterrupted = train(dropping(model_type), data, accumulation=accumulation)
    _, halfway = train(dropping(model_type), data[: 2 * accumulation], accumulation=accumulation)
    resumed = dropping(model_type)
    for variable, value in zip(resumed.trainable_variables, halfway):
        variable.assign(value)
    _, ended = train(resumed, data[2 * accumulation :], start_step=2, accumulation=accumulation)
    for a, b in zip(uninterrupted, ended):
        np.testing.assert_array_equal(a, b)
    # The masks change from step to step: a run that starts at step 2 on the same data ends elsewhere.
    _, shifted = train(dropping(model_type), data[: 2 * accumulation], start_step=2, accumulation=accumulation)
    assert not all(np.array_equal(a, b) for a, b in zip(halfway, shifted))


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "mistral"])
def test_recomputed_blocks_draw_the_forward_passs_masks(model_type):
    """train.recompute: blocks with dropout on: the loss and the weights after two steps of the plain step's."""
    data = batches(2)
    (plain_loss, plain), (loss, recomputed) = (
        train(dropping(model_type), data, recompute=recompute) for recompute in (False, True)
    )
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
