"""Bounds on config keys, kept on the fields: one source for the config's checks, the CLI's option types and the
reference's wording.

A field made with `setting(16, "blocks per batch", min=1)` holds `{"help": ..., "bounds": Bounds(min=1)}` in its
metadata. `problems(config)` lists every value out of its bounds in every section, `click_type(field)` is the
click type that refuses the same values with the option's name, and `Bounds.phrase` the words both use.

Example:
    >>> from tfclm.config.schema import TrainConfig
    >>> problems(TrainConfig(batch_size=0), "train")
    [('train.batch_size', 'must be at least 1, got 0')]
"""

import dataclasses
import math
import types
import typing


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A number's range: `min`/`max` inclusive, `above`/`below` exclusive; `must` words it where the plain range
    would not say enough (what 0 means, a seed's range)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    must: str | None = None

    def holds(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.min is not None and value < self.min)
            or (self.max is not None and value > self.max)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def phrase(self, nullable: bool = False) -> str:
        """What "must be" is followed by: "at least 1", "in [0, 1)", "positive", ..."""
        if self.must:
            return self.must
        low = self.min if self.min is not None else self.above
        high = self.max if self.max is not None else self.below
        if low is not None and high is not None:
            left, right = "[" if self.min is not None else "(", "]" if self.max is not None else ")"
            text = f"in {left}{_number(low)}, {_number(high)}{right}"
        elif self.min is not None:
            text = "0 or more" if self.min == 0 else f"at least {_number(self.min)}"
        elif self.above is not None:
            text = "positive" if self.above == 0 else f"above {_number(self.above)}"
        else:
            text = f"at most {_number(self.max)}" if self.max is not None else f"below {_number(self.below)}"
        return text + (", or null" if nullable else "")


def _number(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def bounds_of(f: dataclasses.Field) -> Bounds | None:
    return f.metadata.get("bounds")


def nullable(f: dataclasses.Field) -> bool:
    hint = f.type
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def problems(section, prefix: str) -> list[tuple[str, str]]:
    """(key, message) for each value of the dataclass `section` out of its field's bounds."""
    found = []
    for f in dataclasses.fields(section):
        value, bounds = getattr(section, f.name), bounds_of(f)
        if bounds is None or value is None or isinstance(value, (bool, str)):
            continue
        if not bounds.holds(value):
            found.append((f"{prefix}.{f.name}", f"must be {bounds.phrase(nullable(f))}, got {value}"))
    return found


def click_type(f: dataclasses.Field):
    """The click type of an option for the field: its number type, refusing what its bounds refuse."""
    import click

    bounds = bounds_of(f)
    number = int if int in (f.type, *typing.get_args(f.type)) else float
    if bounds is None:
        return number
    low = bounds.min if bounds.min is not None else bounds.above
    high = bounds.max if bounds.max is not None else bounds.below
    ranged = click.IntRange if number is int else click.FloatRange
    return ranged(min=low, max=high, min_open=bounds.above is not None, max_open=bounds.below is not None)
