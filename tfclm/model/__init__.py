"""The model: what tfclm knows of each family (`families`), loading or building a transformers TF causal LM
(`loading`), its loss (`loss`, and `chunked_loss` without the full logits), recomputed blocks (`recompute`) and
the train step's fused activations and layer norms (`fused_ops`).

May import `tfclm.config` and `tfclm.data` (a saved model comes with its
tokenizer); never training, evaluation, generation or the Hub.
"""
