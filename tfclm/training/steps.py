"""What a step is: an optimizer step. Keras counts batches, which under gradient accumulation are micro-batches;
every `*_steps` setting and callback argument in tfclm counts optimizer steps, read from the optimizer."""


def optimizer_steps(model) -> int:
    """Optimizer steps taken so far: Keras counts batches, which under gradient accumulation are micro-batches."""
    optimizer = getattr(model, "optimizer", None)
    return int(optimizer.iterations.numpy()) if optimizer is not None else 0


class StepClock:
    """Tells a callback when an optimizer step has been taken, so every `*_steps` counts optimizer steps."""

    def __init__(self):
        self.last = None

    def start(self, model) -> None:
        """At train begin: steps count from the optimizer's step now (a resumed run's, say)."""
        self.last = optimizer_steps(model)

    def tick(self, model) -> int | None:
        """The optimizer step just taken, or None when this batch did not end one (mid-accumulation)."""
        step = optimizer_steps(model)
        if step == self.last:
            return None
        self.last = step
        return step
