"""How many optimizer steps a run takes, and how many micro-batches Keras sees for them."""

import math
from dataclasses import dataclass

from tfclm import config as config_lib
from tfclm.errors import ConfigError


@dataclass
class Plan:
    """Optimizer steps and the micro-batches Keras sees (accumulation_steps of them per optimizer step)."""

    total_steps: int
    steps_per_epoch: int | None  # optimizer steps; None for a stream
    accumulation: int

    def epochs_needed(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch) if self.steps_per_epoch else 1


def plan_steps(n_blocks: int | None, config: config_lib.Config, replicas: int = 1) -> Plan:
    train, accumulation = config.train, config.train.gradient_accumulation_steps
    if n_blocks is None:  # a stream: only max_steps bounds it
        return Plan(train.max_steps, None, accumulation)
    per_epoch = n_blocks // (train.batch_size * replicas) // accumulation
    if per_epoch == 0:
        raise ConfigError(
            "train.batch_size",
            f"the training text makes {n_blocks} blocks of {config.data.block_size} tokens, fewer than one step of "
            f"{train.batch_size} x {replicas} replica(s) x {accumulation} blocks; lower train.batch_size, "
            f"train.gradient_accumulation_steps or data.block_size, or add text",
        )
    total = per_epoch * train.epochs if train.max_steps is None else min(per_epoch * train.epochs, train.max_steps)
    return Plan(total, per_epoch, accumulation)
