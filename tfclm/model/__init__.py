"""The model: what tfclm knows of each family (`families`), loading or building a transformers TF causal LM
(`loading`), its loss (`loss`, and `chunked_loss` without the full logits), and recomputed blocks (`recompute`).

May import `tfclm.config` and `tfclm.data` (a saved model comes with its
tokenizer); never training, evaluation, generation or the Hub.
"""
