"""The fused activation and layer norm equal transformers' and Keras' to rounding, and run only in the train step."""

import math

import numpy as np
import pytest

from helpers import one_batch, plain_sgd_step, tiny

# Inputs across the range an MLP sees, the tails (where GELU's 1 + tanh cancels) and zero.
GRID = np.concatenate([np.linspace(-12.0, 12.0, 4001), [0.0, 1e-6, -1e-6, 30.0, -30.0]]).astype(np.float32)


def exact(name, x):
    """An activation and its derivative in float64, from the definitions."""
    x = x.astype(np.float64)
    if name == "gelu_new":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        t = np.tanh(inner)
        slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
        return 0.5 * x * (1 + t), slope
    if name == "gelu":
        cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        return x * cdf, cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    s = 1 / (1 + np.exp(-x))
    return x * s, s * (1 + x * (1 - s))


def value_and_slope(activation, x, dtype):
    """The activation and its derivative at `x` rounded to `dtype`, as float64, and the rounded `x`."""
    from tfclm.backend import tf

    x = tf.cast(tf.constant(x), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = activation(x)
    slope = tape.gradient(y, x)
    assert y.dtype == slope.dtype == dtype
    return [tf.cast(t, tf.float32).numpy().astype(np.float64) for t in (y, slope, x)]


def ulp(values, dtype) -> np.ndarray:
    """The spacing of `dtype`'s numbers at `values`: float32's, or bfloat16's (16 fewer significand bits)."""
    spacing = np.spacing(np.abs(values).astype(np.float32)).astype(np.float64)
    return spacing if dtype == "float32" else spacing * 2**16


@pytest.mark.parametrize("name", ["gelu_new", "gelu", "silu"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_fused_activation_is_the_function_and_its_derivative_to_rounding(name, dtype):
    """Against the float64 definitions: in float32 within 4 units in the last place (plus float32's spacing at
    1, where the values come near 0 after a cancellation), in bfloat16 within one unit (one rounding of a float32
    result; transformers' bfloat16 ops round every intermediate). Never more than a unit further off than
    transformers' own ops."""
    from transformers.activations_tf import ACT2FN

    from tfclm.backend import tf
    from tfclm.model.fused_ops import FUSED_ACTIVATIONS

    ours, our_slope, x = value_and_slope(FUSED_ACTIVATIONS[name], GRID, getattr(tf, dtype))
    theirs, their_slope, _ = value_and_slope(ACT2FN[name], GRID, getattr(tf, dtype))
    want, want_slope = exact(name, x)
    units, floor = (4, 2.0**-24) if dtype == "float32" else (1, 2.0**-40)
    for got, reference, transformers_own in ((ours, want, theirs), (our_slope, want_slope, their_slope)):
        units_off = np.abs(got - reference) / (ulp(reference, dtype) + floor)
        assert units_off.max() <= units, x[units_off.argmax()]
        their_units_off = np.abs(transformers_own - reference) / (ulp(reference, dtype) + floor)
        assert units_off.max() <= max(1.0, their_units_off.max()) + 1.0


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_the_fused_layer_norm_equals_keras_forward_and_backward(policy):
    from tfclm.backend import keras, tf
    from tfclm.model.fused_ops import fuse, fused

    keras.mixed_precision.set_global_policy(policy)
    try:
        norm = keras.layers.LayerNormalization(epsilon=1e-5)
        norm.build((None, 16, 64))
        norm.gamma.assign(tf.random.stateless_normal((64,), seed=(3, 4)))
        norm.beta.assign(tf.random.stateless_normal((64,), seed=(5, 6)))
        x = 3.0 + 2.0 * tf.random.stateless_normal((4, 16, 64), seed=(1, 2))
        upstream = tf.random.stateless_normal((4, 16, 64), seed=(7, 8))
        results = []
        for swapped in (False, True):
            if swapped:
                assert fuse(norm) == 1
            with tf.GradientTape() as tape:
                tape.watch(x)
                with fused():
                    y = norm(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
            results.append([y, *tape.gradient(loss, [x, norm.gamma, norm.beta])])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name, keras_own, ours in zip(("output", "d_x", "d_gamma", "d_beta"), *results):
        assert ours.dtype == keras_own.dtype, name
        keras_own, ours = (tf.cast(t, tf.float32).numpy() for t in (keras_own, ours))
        scale = np.abs(keras_own).max()
        # In bfloat16 the output and d_x are rounded from float32 in both: one unit apart where the sums differ.
        bfloat16 = policy != "float32" and name in ("output", "d_x")
        np.testing.assert_allclose(ours, keras_own, rtol=0, atol=(2**-8 if bfloat16 else 1e-6) * scale, err_msg=name)


def compiled_by_xla(trainer) -> list[str]:
    """The functions of the traced train step that XLA must compile."""
    (step,) = trainer.train_function._list_all_concrete_functions()
    library = step.graph.as_graph_def().library.function
    return sorted(f.signature.name for f in library if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b)


def test_fuse_swaps_activations_and_norms_and_changes_nothing_outside_the_train_step():
    """Outside the train step the model runs transformers' ops: its logits are bit for bit those from before."""
    from tfclm.backend import tf
    from tfclm.model.fused_ops import fuse, fused

    model = tiny("gpt2", dropout=False)
    ids = np.random.default_rng(3).integers(2, 96, size=(2, 12)).astype(np.int32)
    before = model(input_ids=ids).logits.numpy()
    layers = model.config.n_layer
    assert fuse(model) == layers + 2 * layers + 1  # each block's GELU and two norms, and the final norm
    assert fuse(model) == 0  # already swapped
    np.testing.assert_array_equal(model(input_ids=ids).logits.numpy(), before)
    with fused():
        inside = tf.function(lambda ids: model(input_ids=ids).logits)(ids).numpy()
    assert not np.array_equal(inside, before)  # XLA's own polynomials: the fused forms did run
    np.testing.assert_allclose(inside, before, rtol=0, atol=1e-5 * np.abs(before).max())


@pytest.mark.parametrize("model_type", ["gpt2", "mistral", "bert"])
def test_a_train_step_with_fused_ops_updates_as_transformers_ops_do(model_type):
    """GPT-2's tanh GELU and layer norms, Mistral's SiLU, BERT's erf GELU: one trainer step with them fused moves
    the weights as a step by hand through transformers' own ops; with fused_ops off nothing is compiled by XLA."""
    from tfclm.backend import keras
    from tfclm.training.trainer import CausalLMTrainer

    ids = np.random.default_rng(1).integers(2, 96, size=(4, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    reference = tiny(model_type, dropout=False)
    reference_loss = plain_sgd_step(reference, batch, 0.5)
    for fused_ops in (True, False):
        model = tiny(model_type, dropout=False)
        trainer = CausalLMTrainer(model, fused_ops=fused_ops)
        trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.5))
        history = trainer.fit(one_batch(batch), epochs=1, verbose=0)
        assert bool(compiled_by_xla(trainer)) == fused_ops
        assert history.history["loss"][0] == pytest.approx(reference_loss, rel=1e-6)
        for plain, stepped in zip(reference.trainable_variables, model.trainable_variables):
            np.testing.assert_allclose(stepped.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6, err_msg=plain.name)
