"""Evaluation: token-weighted loss, perplexity and bits per byte over blocks or sliding windows (`strided`), of a
model in memory or a saved one (`model_dir`), and lm-evaluation-harness tasks (`harness`, `tasks`).

May import data, model and generation (the harness's generation tasks); never training or the Hub.
"""
