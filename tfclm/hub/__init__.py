"""The Hugging Face Hub: background uploads over the HTTP commit API, the push callback, model cards.

May import model and `training.distribute` (only the chief pushes); nothing
imports the Hub but the run, the CLI and `tfclm.callbacks`.
"""
