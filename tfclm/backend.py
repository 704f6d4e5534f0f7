"""The one place where tfclm loads TensorFlow and Keras.

transformers' TF models are written for Keras 2, which TF >= 2.16 ships as
the separate `tf-keras` package; `tf.keras` points at it only when
TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported. `tfclm/__init__`
imports this module first, so importing anything from tfclm sets it.
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


def load():
    """Return (tensorflow, tf_keras), checked to be the Keras 2 pair transformers needs."""
    import tensorflow as tf

    try:
        import tf_keras
    except ImportError:
        minor = ".".join(tf.__version__.split(".")[:2])
        raise TfclmError(f"tf-keras is not installed; install the one matching TensorFlow {tf.__version__}: pip install 'tf-keras=={minor}.*'") from None
    if not tf.keras.__name__.startswith("tf_keras"):
        raise TfclmError(
            "tf.keras is Keras 3, which transformers' TF models refuse: TensorFlow was imported before tfclm "
            f"without {LEGACY_KERAS_VAR}=1; import tfclm before tensorflow, or export {LEGACY_KERAS_VAR}=1"
        )
    if tf.__version__.split(".")[:2] != tf_keras.__version__.split(".")[:2]:
        raise TfclmError(
            f"tensorflow {tf.__version__} and tf-keras {tf_keras.__version__} are of different minor versions; "
            f"install matching ones: pip install 'tf-keras=={'.'.join(tf.__version__.split('.')[:2])}.*'"
        )
    return tf, tf_keras
