"""User-facing errors: each names the problem and the fix, so the CLI can print one line and exit."""


class TicketlabError(Exception):
    """A problem with the user's input or environment (not a bug in ticketlab)."""


class ConfigError(TicketlabError):
    """A config key or value is wrong."""


class MaskMismatchError(TicketlabError):
    """A mask does not fit the model it is applied to."""


class CorruptFileError(TicketlabError):
    """A checkpoint or mask file is truncated, corrupted or of an unknown format."""


class DataError(TicketlabError):
    """A dataset is empty, mislabelled or unreadable."""


class NonFiniteLossError(TicketlabError):
    """Training diverged: the loss became NaN or infinite."""


class DivergenceError(NonFiniteLossError):
    """Training diverged: the loss exploded relative to its start, or weights stopped being finite."""
