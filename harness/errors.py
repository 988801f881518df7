"""User-facing errors: the CLI prints these as one clear line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input from the user (file, config, argument, request). The message names what and where."""


class ScorerUnavailable(RuntimeError):
    """The scorer could not be reached before the deadline. Never replaced by default scores."""
