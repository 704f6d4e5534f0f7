"""Errors that tfclm shows to users as one line, without a traceback."""

import errno
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
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(
        exc, (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError, tf.errors.OutOfRangeError)
    ):
        text = str(exc)
        # TensorFlow's message leads with its op's internals; the cause is a phrase inside it.
        causes = ("File too large", "No space left on device", "Disk quota exceeded", "Permission denied", "Read-only")
        cause = next((c for c in causes if c in text), text.strip().splitlines()[0][:200] if text.strip() else "")
        return (
            f"TensorFlow could not write a file: {cause}; free some disk space, raise the file-size limit "
            "(ulimit -f), or choose a writable directory"
        )
    return None


class EnvironmentFailure(Exception):
    """Something outside the input failed (disk, network, the Hub): shown as one line, exit code 1."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where Python was, as SIGINT raises KeyboardInterrupt."""


def raise_interrupted(signum, frame):
    raise Interrupted()
