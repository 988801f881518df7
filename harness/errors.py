"""User-facing errors: the CLI prints these as one clear line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input from the user (file, config, argument, request). The message names what and where."""


class ScorerError(RuntimeError):
    """The scorer failed the run: never replaced by default scores. The message names the scorer and the request."""


class ScorerUnavailable(ScorerError):
    """The scorer could not be reached before the deadline."""


class BadScorerReply(ScorerError):
    """The scorer answered, but not with one finite reward and one finite cost per pair sent."""
