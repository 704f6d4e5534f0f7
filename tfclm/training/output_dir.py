"""The output dir a run writes: what it must be before anything is written there."""

import os

from tfclm.errors import ConfigError


def check_output_dir(out: str) -> None:
    """A directory, or a path where one can be made: not a file, and not under one."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError("output_dir", f"{out!r} is a file, not a directory; choose a directory for --output-dir")
    parent = next((p for p in _parents(out) if os.path.exists(p)), None)
    if parent is not None and not os.path.isdir(parent):
        raise ConfigError("output_dir", f"{out!r} lies under {parent!r}, which is a file; choose another --output-dir")


def _parents(path: str):
    """`path`'s ancestors, nearest first."""
    path = os.path.abspath(path)
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        yield path
