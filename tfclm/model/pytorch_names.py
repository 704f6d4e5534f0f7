"""TF variables under the names and layouts of the PyTorch class, by transformers' own naming rule.

TF names read like `tfopt_for_causal_lm/model/decoder/layers.0/fc1/kernel:0`:
the model's own scope goes, `_._` and `/` become `.`, `kernel`/`gamma`/
`embeddings` become `weight`, `beta` becomes `bias`, and `a___b` scopes keep
`b`. Dense kernels are (in, out) in TF and (out, in) in PyTorch; GPT-2's
Conv1D keeps (in, out) in both and is not called a kernel. Biases kept as
(1, n) in TF are (n,) in PyTorch.
"""

import numpy as np
from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name


def pytorch_name(variable) -> str:
    """`transformer.h.0.attn.c_attn.weight` for GPT-2's TF variable `.../h_._0/attn/c_attn/weight:0`."""
    return convert_tf_weight_name_to_pt_weight_name(variable.name, tf_weight_shape=variable.shape)[0]


def pytorch_tensor(variable) -> tuple[str, np.ndarray]:
    """(PyTorch name, float32 value in PyTorch's layout) of one TF variable."""
    name, transpose = convert_tf_weight_name_to_pt_weight_name(variable.name, tf_weight_shape=variable.shape)
    value = np.asarray(variable.numpy(), dtype=np.float32)
    if transpose is TransposeType.SIMPLE:
        value = value.T
    if name.endswith("bias") and value.ndim == 2 and value.shape[0] == 1:
        value = value.reshape(-1)
    return name, np.ascontiguousarray(value)


def from_pytorch(variable, value: np.ndarray) -> np.ndarray:
    """The inverse of `pytorch_tensor`: a PyTorch-layout value in the TF variable's layout."""
    _, transpose = convert_tf_weight_name_to_pt_weight_name(variable.name, tf_weight_shape=variable.shape)
    if transpose is TransposeType.SIMPLE:
        value = value.T
    return np.reshape(value, variable.shape)


def pytorch_state_dict(model) -> dict:
    """Every weight of `model` under its PyTorch name. A tied LM head has no variable of its own in TF, so
    PyTorch ties it again from the config."""
    return dict(pytorch_tensor(variable) for variable in model.weights)
