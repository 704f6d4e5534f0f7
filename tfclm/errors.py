"""Errors that tfclm shows to users as one line, without a traceback."""


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
