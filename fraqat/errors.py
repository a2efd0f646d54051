"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class FraqatError(Exception):
    """Bad input or a missing prerequisite, explained in one line."""

    exit_code = 1


class ParamsError(FraqatError, ValueError):
    """A bad params.yaml: ``params.yaml: <key>: <problem> (allowed: …)``; exit code 2."""

    exit_code = 2


class BadFileError(FraqatError, OSError):
    """A file a stage reads is missing, truncated, malformed or of the wrong kind:
    ``<path>: <what is wrong>; <what to do>``; exit code 2 (see :mod:`fraqat.checked`)."""

    exit_code = 2
