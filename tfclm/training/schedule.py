"""The learning-rate schedule as explicit segments, so that it can be saved, resumed and extended.

A segment's curve runs from optimizer step `start` to `end`, from rate
`begin` to rate `finish`, in a `shape` (linear, cosine, constant); it applies
until step `until` (its `end`, unless an extension cut it short). A run's schedule is
warm-up (linear from 0 to the peak) then decay to 0 (linear or cosine) or a
constant peak; the rate at step s is the one the optimizer uses for its
(s + 1)-th update.

Extending a run (more epochs, a larger max_steps) never jumps: the segments
up to the current step stay, and a new last segment goes from the current
rate to 0 at the new end, in the schedule's own shape (a constant schedule
stays constant). A run whose rate had decayed to 0 therefore trains on at 0;
start a new run to train more.
"""

import math

from tfclm.backend import keras, tf


def segment(start: int, end: int, begin: float, finish: float, shape: str) -> dict:
    return {
        "start": int(start),
        "end": int(end),
        "until": int(end),
        "begin": float(begin),
        "finish": float(finish),
        "shape": shape,
    }


def initial_segments(peak: float, schedule: str, warmup_ratio: float, total_steps: int) -> list[dict]:
    warmup = int(round(warmup_ratio * total_steps))
    segments = [segment(0, warmup, 0.0, peak, "linear")] if warmup > 0 else []
    if schedule == "constant":
        segments.append(segment(warmup, max(total_steps, warmup + 1), peak, peak, "constant"))
    else:
        segments.append(segment(warmup, max(total_steps, warmup + 1), peak, 0.0, schedule))
    return segments


def rate_at(segments: list[dict], step: int) -> float:
    """The rate at `step`, computed in Python the way `RunSchedule` computes it in TensorFlow."""
    for s in segments:
        if step < s["until"] or s is segments[-1]:
            t = min(max((step - s["start"]) / max(s["end"] - s["start"], 1), 0.0), 1.0)
            if s["shape"] == "cosine":
                return s["finish"] + (s["begin"] - s["finish"]) * 0.5 * (1.0 + math.cos(math.pi * t))
            if s["shape"] == "linear":
                return s["begin"] + (s["finish"] - s["begin"]) * t
            return s["begin"]
    raise ValueError("a schedule needs at least one segment")


def extend(segments: list[dict], step: int, new_end: int) -> list[dict]:
    """The schedule up to `step`, then from the rate there to 0 at `new_end` (constant stays constant)."""
    kept = [dict(s, until=min(s["until"], step)) for s in segments if s["start"] < step]
    current = rate_at(segments, step)
    shape = segments[-1]["shape"]
    finish = current if shape == "constant" else 0.0
    return kept + [segment(step, max(new_end, step + 1), current, finish, shape)]


class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A Keras learning-rate schedule over `segments` (see the module docstring)."""

    def __init__(self, segments: list[dict]):
        super().__init__()
        self.segments = [dict(s) for s in segments]

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = None
        # The last segment holds past its end; each earlier one overrides it before its own end.
        for s in reversed(self.segments):
            t = tf.clip_by_value((step - s["start"]) / float(max(s["end"] - s["start"], 1)), 0.0, 1.0)
            if s["shape"] == "cosine":
                value = s["finish"] + (s["begin"] - s["finish"]) * 0.5 * (1.0 + tf.cos(math.pi * t))
            elif s["shape"] == "linear":
                value = s["begin"] + (s["finish"] - s["begin"]) * t
            else:
                value = tf.constant(s["begin"])
            rate = value if rate is None else tf.where(step < s["until"], value, rate)
        return rate

    def get_config(self):
        return {"segments": self.segments}
