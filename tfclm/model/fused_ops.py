"""The MLP's activation and the layer norms as one fused loop each way in the training step.

transformers' TF models apply GELU (tanh form in GPT-2 and GPT-J, erf form
elsewhere), SiLU (Mistral) and Keras' LayerNormalization as chains of
elementwise TensorFlow ops, and autodiff adds a longer chain for the
gradient: on a CPU each op is a pass over the tensor (the MLP's activation is
tokens x 4 x width), and what autodiff needs is kept for the backward pass.
`fuse` swaps them for functions whose forward and gradient are each one
XLA-compiled function (computed in float32, returned in the input's dtype)
that keep only their input for the backward pass.

Only the training step runs the fused forms (while `fused` is on, which the
trainer enters for the forward pass and the gradient): generation, evaluation
and a saved model run transformers' own ops, so what is exported is its graph
unchanged. The fused functions equal transformers' to float32 rounding (XLA's
exp and erfc are its own polynomials, GELU's tanh is taken as a logistic, and
the layer norm's sums go in another order).
"""

import functools
import logging
import math

from tfclm.backend import keras, tf
from tfclm.model.step_flag import StepFlag

logger = logging.getLogger(__name__)

# While tracing a train step: what `fuse` swapped runs fused.
fused = StepFlag()
ACTIVATION_ATTRIBUTES = ("act", "act_fn", "activation_fn", "activation", "intermediate_act_fn")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
_SQRT_HALF = math.sqrt(0.5)
_NORMAL_DENSITY = 1.0 / math.sqrt(2.0 * math.pi)


def _logistic(x):
    """The logistic of x, and its derivative (the logistic of x times that of -x), accurate in both tails.

    Not 0.5 * (1 + tanh(x / 2)) nor s * (1 - s): where tanh is near -1 or s near 1 those differences cancel to
    nothing; exp(-|x|) never overflows."""
    small = tf.exp(-tf.abs(x))
    inverse = 1.0 / (1.0 + small)
    return tf.where(x >= 0.0, inverse, small * inverse), small * inverse * inverse


def _gelu_inner(x):
    return _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)


def _tanh_gelu(x):
    # 0.5 * (1 + tanh(z)) is the logistic of 2z.
    return x * _logistic(2.0 * _gelu_inner(x))[0]


def _tanh_gelu_slope(x):
    cdf, density = _logistic(2.0 * _gelu_inner(x))
    return cdf + 2.0 * x * density * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x * x)


def _erf_gelu(x):
    return 0.5 * x * tf.math.erfc(-x * _SQRT_HALF)


def _erf_gelu_slope(x):
    return 0.5 * tf.math.erfc(-x * _SQRT_HALF) + x * _NORMAL_DENSITY * tf.exp(-0.5 * x * x)


def _silu(x):
    return x * _logistic(x)[0]


def _silu_slope(x):
    s, density = _logistic(x)
    return s + x * density


def fused_activation(value, slope):
    """An activation (`value`, its derivative `slope`) as one XLA loop forward and one backward."""

    @tf.function(jit_compile=True, autograph=False)
    def forward(x):
        return tf.cast(value(tf.cast(x, tf.float32)), x.dtype)

    @tf.function(jit_compile=True, autograph=False)
    def backward(x, upstream):
        return tf.cast(tf.cast(upstream, tf.float32) * slope(tf.cast(x, tf.float32)), x.dtype)

    @tf.custom_gradient
    def activation(x):
        return forward(x), lambda upstream: backward(x, upstream)

    return activation


FUSED_ACTIVATIONS = {
    "gelu_new": fused_activation(_tanh_gelu, _tanh_gelu_slope),
    "gelu": fused_activation(_erf_gelu, _erf_gelu_slope),
    "silu": fused_activation(_silu, _silu_slope),
}
FUSED_ACTIVATIONS.update(gelu_fast=FUSED_ACTIVATIONS["gelu_new"], swish=FUSED_ACTIVATIONS["silu"])


def _normalised(x, epsilon):
    """(x - mean) / std over the last axis, and 1 / std, in float32."""
    x = tf.cast(x, tf.float32)
    centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    inverse_std = tf.math.rsqrt(tf.reduce_mean(centred * centred, axis=-1, keepdims=True) + epsilon)
    return centred * inverse_std, inverse_std


@functools.cache
def fused_layer_norm(epsilon: float):
    """Layer normalisation over the last axis with a scale and an offset, one XLA function each way."""

    @tf.function(jit_compile=True, autograph=False)
    def forward(x, gamma, beta):
        normed, _ = _normalised(x, epsilon)
        return tf.cast(normed * gamma + beta, x.dtype)

    @tf.function(jit_compile=True, autograph=False)
    def backward(x, gamma, upstream):
        normed, inverse_std = _normalised(x, epsilon)
        upstream = tf.cast(upstream, tf.float32)
        d_normed = upstream * gamma
        d_x = inverse_std * (
            d_normed
            - tf.reduce_mean(d_normed, axis=-1, keepdims=True)
            - normed * tf.reduce_mean(d_normed * normed, axis=-1, keepdims=True)
        )
        leading = list(range(len(x.shape) - 1))
        return tf.cast(d_x, x.dtype), tf.reduce_sum(upstream * normed, leading), tf.reduce_sum(upstream, leading)

    @tf.custom_gradient
    def layer_norm(x, gamma, beta):
        return forward(x, gamma, beta), lambda upstream: backward(x, gamma, upstream)

    return layer_norm


def _switching_activation(original, fused_form):
    def activation(x):
        return fused_form(x) if fused.on else original(x)

    activation.original = original
    return activation


def _switching_norm(layer):
    original = layer.call

    def call(inputs, *args, **kwargs):
        plain = not isinstance(inputs, tf.Tensor) or args or kwargs or layer.gamma is None or layer.beta is None
        if not fused.on or plain or inputs.shape.rank is None or list(layer.axis) != [inputs.shape.rank - 1]:
            return original(inputs, *args, **kwargs)
        gamma, beta = (tf.cast(weight, tf.float32) for weight in (layer.gamma, layer.beta))
        return fused_layer_norm(float(layer.epsilon))(tf.cast(inputs, layer.compute_dtype), gamma, beta)

    call.original = original
    return call


@functools.cache
def xla_available() -> bool:
    """Whether XLA compiles on the default device (tensorflow-metal's GPU, for one, has no XLA)."""
    try:
        tf.function(lambda x: x * 2.0, jit_compile=True)(tf.ones(1)).numpy()
    except Exception as error:  # XLA's errors are several types, and any of them means: do not fuse
        logger.warning("train.fused_ops: XLA does not compile here (%s); transformers' own ops run", error)
        return False
    return True


def fuse(lm) -> int:
    """Swap the activations and layer norms of `lm` that have a fused form; returns how many were swapped.

    Idempotent: what is already swapped is left as it is. Nothing is swapped where XLA does not compile."""
    if not xla_available():
        return 0
    from transformers.activations_tf import ACT2FN

    replacements = {ACT2FN[name]: form for name, form in FUSED_ACTIVATIONS.items() if name in ACT2FN}
    swapped = 0
    for layer in lm._flatten_layers():
        if isinstance(layer, keras.layers.LayerNormalization) and not hasattr(layer.call, "original"):
            layer.call = _switching_norm(layer)
            swapped += 1
        for attribute in ACTIVATION_ATTRIBUTES:
            current = getattr(layer, attribute, None)
            if not callable(current) or hasattr(current, "original"):
                continue
            try:
                fused_form = replacements.get(current)
            except TypeError:  # unhashable: not one of transformers' functions
                continue
            if fused_form is not None:
                setattr(layer, attribute, _switching_activation(current, fused_form))
                swapped += 1
    return swapped
