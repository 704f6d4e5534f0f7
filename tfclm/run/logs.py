"""What a run has logged, carried over a resume: so a resumed run's results and curves cover the whole run."""

import dataclasses

from tfclm import config as config_lib
from tfclm.backend import keras
from tfclm.training.callbacks import StepHistory
from tfclm.training.run_state import Position, RunState, settings_of


def logs_so_far(state: RunState | None, every_n_steps: int):
    """(Keras History, StepHistory) holding what a resumed run logged before, to go on recording into."""
    epochs = keras.callbacks.History()
    epochs.history = {key: list(values) for key, values in (state.history if state else {}).items()}
    steps = StepHistory(every_n_steps)
    if state is not None and state.step_history:
        steps.steps = list(state.step_history["steps"])
        steps.history = {k: list(v) for k, v in state.step_history.items() if k != "steps"}
    return epochs, steps


class RunLogs:
    """What the run has logged (per epoch and every N steps), carried over a resume, and the run state a
    checkpoint saves: so a resumed run's results and curves cover the whole run, not its last part."""

    def __init__(self, config: config_lib.Config, state: RunState | None, total_steps: int, segments: list, *,
                 position: Position, before: dict | None):  # fmt: skip
        self.epochs, self.steps = logs_so_far(state, config.logging.every_n_steps)
        self.total_steps, self.segments, self.position, self.before = total_steps, segments, position, before
        self.settings = settings_of(dataclasses.asdict(config))
        self.trackers = []  # the tracker callbacks, whose run ids the state keeps
        self.tracker_ids = state.trackers if state else {}

    def epoch_logs(self) -> dict:
        return {key: [float(v) for v in values] for key, values in self.epochs.history.items()}

    def step_logs(self) -> dict:
        return {"steps": list(self.steps.steps), **self.steps.history}

    def run_state(self, step: int) -> RunState:
        run_ids = {t.name: t.run_id for t in self.trackers if t.run_id}
        position = self.position
        return RunState(
            step, position.epoch, position.batches, self.total_steps, self.segments, self.settings,
            self.epoch_logs(), self.step_logs(), self.before, run_ids,
        )  # fmt: skip
