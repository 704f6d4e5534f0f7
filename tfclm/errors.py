"""Errors that tfclm shows to users as one line, without a traceback."""

import errno
import re
import sys


class TfclmError(Exception):
    """A problem with the user's input: the message names the parameter and the fix."""


class ConfigError(TfclmError):
    """A config file, key or value that tfclm cannot use."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """`TypeName: first line of the message`: what a one-line error quotes of a library's exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


WRITE_FAILURES = (
    "No space left on device", "Disk quota exceeded", "File too large", "Read-only file system", "Permission denied",
)  # fmt: skip

# What the machine, not the input, got wrong: exit 1 with one line, as `fit` leaves what it wrote intact.
ENVIRONMENT_HINTS = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some of your disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
    errno.EACCES: "choose a directory you may write to",
    errno.EPERM: "choose a directory you may write to",
    errno.EROFS: "choose a directory on a writable filesystem",
}


def environment_failure(exc: BaseException) -> str | None:
    """One line for a failure of the machine (disk full, read-only, file-size limit), or None for anything else."""
    if isinstance(exc, EnvironmentFailure):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_HINTS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}; {ENVIRONMENT_HINTS[exc.errno]}"
    text = str(exc)
    # TensorFlow's and safetensors' messages lead with their internals; the cause is a phrase inside.
    cause = next((c for c in WRITE_FAILURES if c in text), None)
    if cause is not None:
        return (
            f"{type(exc).__name__}: could not write a file: {cause}; free some disk space, raise the file-size limit "
            "(ulimit -f), or choose a writable directory"
        )
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError):
        shape = re.search(r"tensor with shape\s*\[[^\]]*\]", text)
        return (
            f"out of memory{f' (allocating a {shape.group(0)})' if shape else ''}; lower train.batch_size, "
            "data.block_size or lora.rank, or try train.precision bf16, train.loss_chunk_tokens or train.recompute"
        )
    return None


class EnvironmentFailure(Exception):
    """Something outside the input failed (disk, network, the Hub): shown as one line, exit code 1."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where Python was, as SIGINT raises KeyboardInterrupt."""


def raise_interrupted(signum, frame):
    raise Interrupted()
