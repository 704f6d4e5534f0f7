"""tfclm's Keras callbacks, for tfclm runs and for any `model.fit` of your own.

    model.fit(train, validation_data=val, callbacks=[tfclm.callbacks.PerplexityCallback(), ...])

Each does one job, keeps its constructor arguments as attributes and writes
what it measures into `logs`; their docstrings hold runnable examples. They
live with the stage they belong to; this module is their public address.
"""

from tfclm.hub.callback import PushToHubCallback
from tfclm.tracking.mlflow_tracker import MLflowCallback
from tfclm.tracking.wandb_tracker import WandbCallback
from tfclm.training.callbacks import (
    PerplexityCallback,
    SampleTextCallback,
    StepHistory,
    StopAfterSteps,
    StopOnNonFiniteLoss,
    ThroughputCallback,
)
from tfclm.training.checkpoints import CheckpointCallback

__all__ = [
    "CheckpointCallback",
    "MLflowCallback",
    "PerplexityCallback",
    "PushToHubCallback",
    "SampleTextCallback",
    "StepHistory",
    "StopAfterSteps",
    "StopOnNonFiniteLoss",
    "ThroughputCallback",
    "WandbCallback",
]
