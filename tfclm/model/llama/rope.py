"""Rotary position embeddings of the Llama-style families: the inverse frequencies of each `rope_type` tfclm
implements, read from a config in transformers 4.x's form (`rope_theta`, `rope_scaling`) or v5's
(`rope_parameters`).

The frequencies follow transformers' PyTorch `modeling_rope_utils` (computed in float32 as there), without
PyTorch:

>>> from transformers import LlamaConfig
>>> config = LlamaConfig(hidden_size=64, num_attention_heads=2, rope_theta=10000.0)
>>> [round(float(f), 4) for f in rotary(config, head_dim=32).inverse[:3]]
[1.0, 0.5623, 0.3162]
"""

import math
from dataclasses import dataclass

import numpy as np

IMPLEMENTED = ("default", "linear", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class Rotary:
    """The rotation of one config: `inverse` frequencies [rotary dim / 2] (float32); with LongRoPE, `long` ones
    that take over once a batch reaches past `switch_after` positions (as PyTorch's switch on the batch's largest
    position); cos and sin multiplied by `scale` (YaRN's and LongRoPE's attention factor)."""

    inverse: np.ndarray
    long: np.ndarray | None = None
    switch_after: int | None = None
    scale: float = 1.0


def rope_parameters(config, layer: str = "full_attention") -> dict:
    """{"rope_type": ..., "rope_theta": ..., and the type's own keys} of the layers of type `layer` (their
    `layer_types` name: Gemma 3's sliding layers turn by a rotation of their own), from either form of config."""
    given = getattr(config, "rope_parameters", None)
    sliding = layer == "sliding_attention"
    if isinstance(given, dict) and any(isinstance(value, dict) for value in given.values()):
        found = dict(given.get(layer) or {})  # v5's Gemma 3: one set per layer type
    elif isinstance(given, dict) and given:
        found = dict(given)
    elif sliding:  # 4.x's Gemma 3: the default rule at a base of its own
        found = {"rope_type": "default"}
    else:
        found = dict(getattr(config, "rope_scaling", None) or {})
    base = getattr(config, "rope_local_base_freq" if sliding else "rope_theta", None)
    found.setdefault("rope_theta", base or 10000.0)
    found["rope_type"] = found.get("rope_type") or found.get("type") or "default"
    return found


def check(config) -> None:
    """A rope_type the TF classes do not compute is an error naming the key, before any weight loads."""
    for layer in ("full_attention", "sliding_attention"):
        kind = rope_parameters(config, layer)["rope_type"]
        if kind not in IMPLEMENTED:
            raise ValueError(
                f"rope_scaling.rope_type {kind!r}: tfclm's TF {config.model_type} computes {', '.join(IMPLEMENTED)} "
                f"rotary embeddings, not {kind!r}"
            )


def rotary(config, head_dim: int, layer: str = "full_attention") -> Rotary:
    """The rotation of the config's layers of type `layer`, after refusing a rope_type the TF classes do not
    compute."""
    check(config)
    parameters = rope_parameters(config, layer)
    dim = rotary_dim(config, head_dim)
    powers = _powers(parameters["rope_theta"], dim)
    inverse = (np.float32(1.0) / powers).astype(np.float32)
    kind = parameters["rope_type"]
    if kind == "linear":
        return Rotary(inverse / np.float32(parameters["factor"]))
    if kind == "llama3":
        return Rotary(_llama3(inverse, parameters))
    if kind == "yarn":
        return _yarn(config, parameters, powers, dim)
    if kind == "longrope":
        return _longrope(config, parameters, powers)
    return Rotary(inverse)


def rotary_dim(config, head_dim: int) -> int:
    """The channels of a head that turn (all but those a `partial_rotary_factor` below 1 leaves)."""
    return int(head_dim * getattr(config, "partial_rotary_factor", 1.0))


def _powers(theta: float, dim: int) -> np.ndarray:
    """theta ** (2i / dim) for each channel pair i, in float32 as PyTorch computes them."""
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return np.power(np.float32(theta), exponents).astype(np.float32)


def _llama3(inverse: np.ndarray, p: dict) -> np.ndarray:
    """Llama 3.1's long-context rule: long wavelengths slowed by `factor`, short ones kept, a blend between."""
    factor, low, high = np.float32(p["factor"]), p["low_freq_factor"], p["high_freq_factor"]
    context = p["original_max_position_embeddings"]
    wavelength = np.float32(2 * math.pi) / inverse
    scaled = np.where(wavelength > context / low, inverse / factor, inverse)
    smooth = (context / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < context / high) & ~(wavelength > context / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def _yarn(config, p: dict, powers: np.ndarray, dim: int) -> Rotary:
    """YaRN: the low frequencies interpolated by `factor`, the high ones kept, a linear ramp between (over the
    channels `beta_fast` and `beta_slow` rotations bound), and cos and sin scaled by the attention factor."""
    factor, original = p["factor"], config.max_position_embeddings
    if "original_max_position_embeddings" in p:
        original = p["original_max_position_embeddings"]
        factor = config.max_position_embeddings / original
    scale = p.get("attention_factor")
    if scale is None:
        mscale, all_dims = p.get("mscale"), p.get("mscale_all_dim")
        scale = _mscale(factor, mscale) / _mscale(factor, all_dims) if mscale and all_dims else _mscale(factor)
    base = p["rope_theta"]

    def channel(rotations):  # the channel that turns `rotations` times over the original context
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(channel(p.get("beta_fast") or 32)), 0)
    high = min(math.ceil(channel(p.get("beta_slow") or 1)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / np.float32(high - low), 0, 1)
    kept = (1 - ramp).astype(np.float32)
    extrapolated, interpolated = np.float32(1.0) / powers, np.float32(1.0) / (np.float32(factor) * powers)
    return Rotary((interpolated * (1 - kept) + extrapolated * kept).astype(np.float32), scale=float(scale))


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _longrope(config, p: dict, powers: np.ndarray) -> Rotary:
    """LongRoPE (Phi-3): per-channel `short_factor` frequencies, `long_factor` ones past the original context, and
    the attention factor sqrt(1 + log(factor) / log(original context))."""
    original = getattr(config, "original_max_position_embeddings", None)
    if original:  # Phi-3 has it, and takes the factor from the two context lengths
        factor = config.max_position_embeddings / original
    else:
        original, factor = config.max_position_embeddings, p.get("factor") or 1.0
    scale = p.get("attention_factor")
    if scale is None:
        scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))

    def of(factors):
        return (np.float32(1.0) / (np.asarray(factors, np.float32) * powers)).astype(np.float32)

    return Rotary(of(p["short_factor"]), long=of(p["long_factor"]), switch_after=int(original), scale=float(scale))
