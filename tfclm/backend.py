"""The one place where tfclm loads TensorFlow and Keras: `from tfclm.backend import tf, keras`.

transformers' TF models are written for Keras 2, which TF >= 2.16 ships as
the separate `tf-keras` package; `tf.keras` points at it only when
TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported. Importing this
module sets it and nothing more (`tfclm/__init__` imports it first); `tf`
and `keras` are loaded, and checked to be the Keras 2 pair, on first use, so
`python -m tfclm --help` never starts TensorFlow.
"""

import os
import sys

from tfclm.errors import TfclmError

LEGACY_KERAS_VAR = "TF_USE_LEGACY_KERAS"

if "tensorflow" not in sys.modules:
    os.environ[LEGACY_KERAS_VAR] = "1"
# Tokenization forks worker processes; the Rust tokenizer's own threads would
# then be disabled with a warning in every child, so start them off instead.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_loaded: dict = {}


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def load():
    """Return (tensorflow, tf_keras), checked to be the Keras 2 pair transformers needs."""
    if _loaded:
        return _loaded["tf"], _loaded["keras"]
    import tensorflow as tf

    try:
        import tf_keras
    except ImportError:
        raise TfclmError(
            f"tf-keras is not installed; install the one matching TensorFlow {tf.__version__}: "
            f"pip install 'tf-keras=={_minor(tf.__version__)}.*'"
        ) from None
    if not tf.keras.__name__.startswith("tf_keras"):
        raise TfclmError(
            "tf.keras is Keras 3, which transformers' TF models refuse: TensorFlow was imported before tfclm "
            f"without {LEGACY_KERAS_VAR}=1; import tfclm before tensorflow, or export {LEGACY_KERAS_VAR}=1"
        )
    if _minor(tf.__version__) != _minor(tf_keras.__version__):
        raise TfclmError(
            f"tensorflow {tf.__version__} and tf-keras {tf_keras.__version__} are of different minor versions; "
            f"install matching ones: pip install 'tf-keras=={_minor(tf.__version__)}.*'"
        )
    _loaded.update(tf=tf, keras=tf_keras)
    return tf, tf_keras


def keras_call_context():
    """Keras' record of the layer call under way, whose `training` flag inner layers inherit when they are not
    passed one."""
    load()
    from tf_keras.src.engine import base_layer_utils

    return base_layer_utils.call_context()


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU kernels through oneDNN (on by default on x86; TF_ENABLE_ONEDNN_OPTS=0 turns
    it off): oneDNN's softmax sums in float32 even for bfloat16 inputs, Eigen's does not."""
    load()
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def dynamic_update_slice(operand, update, indices):
    """XLA's DynamicUpdateSlice as a TF op (`update` written into `operand` at `indices`): LiteRT converts it to
    its builtin, so an exported KV cache is written in place."""
    load()
    from tensorflow.compiler.tf2xla.python import xla

    return xla.dynamic_update_slice(operand, update, indices)


def __getattr__(name):
    if name in ("tf", "keras"):
        tf, keras = load()
        return tf if name == "tf" else keras
    raise AttributeError(f"module 'tfclm.backend' has no attribute {name!r}")
