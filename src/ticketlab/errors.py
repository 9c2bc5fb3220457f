"""User-facing errors: each names the problem and the fix, so the CLI can print one line and exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_PROBLEMS = 20  # a config with more problems than this reports the first ones and how many more


class TicketlabError(Exception):
    """A problem with the user's input or environment (not a bug in ticketlab)."""


class ConfigError(TicketlabError):
    """A config key or value is wrong. ``problems`` holds every problem found at once (one line each), so a
    config with several mistakes is fixed in one run instead of one run per mistake."""

    def __init__(self, message: str = "", problems: list[str] | None = None) -> None:
        self.problems = list(problems) if problems else [message]
        super().__init__(message or "; ".join(self.problems))

    @classmethod
    def many(cls, problems: list[str]) -> ConfigError:
        problems = list(dict.fromkeys(problems))  # one check may be reached twice (e.g. a non-finite option)
        return cls(problems[0] if len(problems) == 1 else f"{len(problems)} problems in the config: "
                   + "; ".join(problems), problems)


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


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed: an error message is one line."""
    return " ".join(str(text).split())


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid names (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
