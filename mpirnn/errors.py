"""Errors a user can act on, and how one line about them reaches stderr.

A `UsageError` (bad config, bad data, bad checkpoint) is the user's to fix: it is
reported as one line without a traceback. Anything else is a bug or a fault and is
reported as one line naming the exception type; both end every rank.
"""


class UsageError(Exception):
    """Something the user can fix: the message says what and how."""

    exit_status = 1   # what the command exits with (bad input data: 2, as `prepare` does)


class ConfigError(UsageError):
    """A config file or --set override is wrong."""


class DataError(UsageError):
    """A dataset on disk is missing, corrupt or does not fit the config."""


class CheckpointError(UsageError):
    """A checkpoint cannot be used for this run."""


class DataMismatchError(DataError):
    """The data does not fit the checkpoint's task (other classes or targets): bad input, exit 2."""

    exit_status = 2


def one_line(exc: BaseException) -> str:
    """The exception as a single line (no traceback, newlines folded)."""
    text = str(exc).strip() or exc.__class__.__name__
    text = " ".join(text.split())
    if isinstance(exc, UsageError):
        return text
    return f"{exc.__class__.__name__}: {text}"
