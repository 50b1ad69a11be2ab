"""User-facing errors: one line that says what is wrong and how to fix it."""


class ApparateError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    Commands print ``error: <message>`` on one line and exit with status 2, without a traceback.
    The message states what is wrong and how to fix it.
    """


class MissingExtraError(ApparateError):
    """A feature needs an optional dependency ("extra") that is not installed."""
