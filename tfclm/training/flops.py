"""Model FLOPs per token, for utilisation figures: 6N + 12 L H Q T.

N counts the parameters without the position embeddings (a lookup, no
multiply), L is the layers, H the heads, Q the head size and T the sequence
length: 6N for the forward and backward matrix products, and 12 L H Q T for
attention's scores and weighted sums, which grow with the sequence (PaLM,
appendix B; nanoGPT's `estimate_mfu`).
"""

# Variable names of position-embedding tables across transformers' TF families.
POSITION_TABLES = ("wpe", "position_embeddings", "embed_positions")


def _first(config, *names):
    return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)


def non_embedding_parameters(model) -> int:
    """Trainable parameters, less the position-embedding tables."""
    return int(
        sum(
            v.shape.num_elements()
            for v in model.trainable_variables
            if not any(f"/{name}" in v.name or v.name.startswith(name) for name in POSITION_TABLES)
        )
    )


def flops_per_token(model, sequence_length: int | None) -> float:
    """Training FLOPs per token; without a sequence length (or a config that names its layers, heads and width),
    the 6N term alone."""
    flops = 6 * non_embedding_parameters(model)
    config = getattr(model, "config", None)
    layers = _first(config, "n_layer", "num_hidden_layers", "num_layers")
    width = _first(config, "n_embd", "hidden_size", "d_model")
    if sequence_length and layers and width:
        flops += 12 * layers * width * sequence_length  # H heads of size Q make the width: H Q = d
    return float(flops)
