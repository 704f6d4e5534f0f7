"""TF (Keras 2) classes for the Llama-style families transformers never shipped for TensorFlow."""
