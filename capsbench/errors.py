"""Errors a user can fix. The CLI turns them into one line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a spec, an argument, a missing data set or a corrupt file.

    The message is one line that names the key or file and what was expected.
    """


class SpecError(UserError):
    """A spec that cannot be loaded or validated."""


class DataError(UserError):
    """A data set that is missing or cannot be read."""


class OutputError(UserError):
    """A file or folder capsbench must write cannot be written: a file in the way, no permission,
    a read-only file system, a full disk or quota. Nothing is recorded as a result; once fixed,
    the same command resumes where it stopped."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
