"""Evaluation: token-weighted loss and perplexity, of a model in memory or a saved one.

May import data and model; never training, generation or the Hub.
"""
