"""Errors that tfclm shows to users as one line, without a traceback."""


class TfclmError(Exception):
    """A problem with the user's input: the message names the parameter and the fix."""


class ConfigError(TfclmError):
    """A config file, key or value that tfclm cannot use."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)
