"""The output dir a run writes: what it must be before anything is written there."""

import os
import shutil

from tfclm.errors import EnvironmentFailure
from tfclm.files import check_dir_target, parents

# Room for two checkpoints at once (the one being written while the last is kept: weights and two Adam slots,
# 4 bytes each) and the saved model (4 bytes): float32 bytes a parameter.
BYTES_PER_PARAMETER = 2 * 12 + 4


def check_output_dir(out: str) -> None:
    """A directory, or a path where one can be made: not a file, and not under one."""
    check_dir_target(out, "output_dir", "--output-dir")


def check_free_space(out: str, parameters: int) -> None:
    """Enough free space for the run's checkpoints and model, found before the first write, not at the first save."""
    existing = out if os.path.isdir(out) else next(p for p in parents(out) if os.path.isdir(p))
    free, need = shutil.disk_usage(existing).free, parameters * BYTES_PER_PARAMETER
    if free < need:
        raise EnvironmentFailure(
            f"output_dir: {out!r} has {free / 1e6:,.1f} MB free, and this run needs about {need / 1e6:,.1f} MB for "
            f"two checkpoints and the model ({parameters:,} parameters x {BYTES_PER_PARAMETER} bytes); free some "
            "disk space or choose another --output-dir"
        )
