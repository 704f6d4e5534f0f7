"""The model: loading or building a transformers TF causal LM, and its loss.

May import `tfclm.config` and `tfclm.data` (a saved model comes with its
tokenizer); never training, evaluation, generation or the Hub.
"""
