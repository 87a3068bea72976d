"""Errors a user can act on, and how one line about them reaches stderr.

A `UsageError` (bad config, bad data, bad checkpoint) is the user's to fix: it is
reported as one line without a traceback. Anything else is a bug or a fault and is
reported as one line naming the exception type; both end every rank.
"""


class UsageError(Exception):
    """Something the user can fix: the message says what and how."""


class ConfigError(UsageError):
    """A config file or --set override is wrong."""


class DataError(UsageError):
    """A dataset on disk is missing, corrupt or does not fit the config."""


class CheckpointError(UsageError):
    """A checkpoint cannot be used for this run."""


def one_line(exc: BaseException) -> str:
    """The exception as a single line (no traceback, newlines folded)."""
    text = str(exc).strip() or exc.__class__.__name__
    text = " ".join(text.split())
    if isinstance(exc, UsageError):
        return text
    return f"{exc.__class__.__name__}: {text}"
