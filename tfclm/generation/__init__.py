"""Generation: sampling (eager or XLA), and export to PyTorch and TF Serving.

May import data and model; never training, evaluation or the Hub.
"""
