"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases, as Keras callbacks.

May import `training.callbacks` and `training.steps` (the step history a tracker sends); nothing imports a
tracker but the run, the CLI and `tfclm.callbacks`. The trackers' own packages load only when a tracker starts.
"""
