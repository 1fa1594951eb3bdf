"""User-facing errors, shared by every command-line tool, and `plural`, for the counts in every message.

A `UserError` is a mistake the user can fix (a bad setting, a missing file). Command-line entry points
wrap their `main` in `exit_on_user_error`, which prints the message as one line on standard error and
exits with status 2: tracebacks are kept for our own bugs.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix; its message says what to do."""


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `python sample.py | head`
            return 0

    return wrapper


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """A count and its noun in the right number: "1 document", "2 documents", "1,024 tokens", "3 processes"."""
    return f"{count:,} {noun if count == 1 else plural_noun or noun + 's'}"
