"""Errors a user can act on, and how every stage's CLI reports them."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A problem with the user's data, params or machine: the message says what is wrong and what to do."""


class DataError(UserError, ValueError):
    """Bad input data: the message names the file or row."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Surface a UserError from a stage's main() as an `error: ...` message and a non-zero exit, no traceback."""
    try:
        yield
    except UserError as err:
        sys.exit(f"error: {err}")
