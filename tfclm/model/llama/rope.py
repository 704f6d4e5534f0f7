"""Rotary position embeddings of the Llama-style families: the inverse frequencies of each `rope_type` tfclm
implements, read from a config in transformers 4.x's form (`rope_theta`, `rope_scaling`) or v5's
(`rope_parameters`).

The frequencies follow transformers' PyTorch `modeling_rope_utils` (computed in float32 as there), without
PyTorch:

>>> from transformers import LlamaConfig
>>> config = LlamaConfig(hidden_size=64, num_attention_heads=2, rope_theta=10000.0)
>>> [round(float(f), 4) for f in inverse_frequencies(config, head_dim=32)[:3]]
[1.0, 0.5623, 0.3162]
"""

import math

import numpy as np

IMPLEMENTED = ("default", "linear", "llama3")


def rope_parameters(config) -> dict:
    """{"rope_type": ..., "rope_theta": ..., and the type's own keys}, from either form of config."""
    given = getattr(config, "rope_parameters", None)
    if isinstance(given, dict) and given:
        found = dict(given)
    else:
        found = dict(getattr(config, "rope_scaling", None) or {})
    found.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    found["rope_type"] = found.get("rope_type") or found.get("type") or "default"
    return found


def check(config) -> None:
    """A rope_type the TF classes do not compute is an error naming the key, before any weight loads."""
    kind = rope_parameters(config)["rope_type"]
    if kind not in IMPLEMENTED:
        raise ValueError(
            f"rope_scaling.rope_type {kind!r}: tfclm's TF {config.model_type} computes {', '.join(IMPLEMENTED)} "
            f"rotary embeddings, not {kind!r}"
        )


def inverse_frequencies(config, head_dim: int) -> np.ndarray:
    """float32 [rotary dim / 2]: the angle each pair of channels turns by per position."""
    check(config)
    parameters = rope_parameters(config)
    dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inverse = (np.float32(1.0) / np.power(np.float32(parameters["rope_theta"]), exponents)).astype(np.float32)
    kind = parameters["rope_type"]
    if kind == "linear":
        inverse = inverse / np.float32(parameters["factor"])
    elif kind == "llama3":
        inverse = _llama3(inverse, parameters)
    return inverse.astype(np.float32)


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
