"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class FraqatError(Exception):
    """Bad input or a missing prerequisite, explained in one line."""

    exit_code = 1


class ParamsError(FraqatError, ValueError):
    """A bad params.yaml: ``params.yaml: <key>: <problem> (allowed: …)``; exit code 2."""

    exit_code = 2
