"""A switch that is on while the trainer traces its train step: what a model swap does differently there."""

import contextlib
import threading


class StepFlag:
    """Off by default; on inside `with flag():` (nestable, per thread). Read as `flag.on`."""

    def __init__(self):
        self._local = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def __call__(self):
        before = self.on
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before
