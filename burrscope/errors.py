"""Errors a user can act on, and how every stage's CLI reports them."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator

# A full disk, or a full quota: the same remedy.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserError(Exception):
    """A problem with the user's data, params or machine: the message says what is wrong and what to do."""


class DataError(UserError, ValueError):
    """Bad input data: the message names the file or row."""


class OutOfSpace(UserError, OSError):
    """A write ran out of disk space (files.atomic_path names the file it was writing). An OSError too: code that
    takes a failed write as a skipped shortcut (the export cache) goes on doing so."""


def out_of_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from or while handling, is a full disk or quota (torch's C++ writer
    reports one as a RuntimeError raised while handling Python's OSError)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Surface a UserError from a stage's main() as an `error: ...` message and a non-zero exit, no traceback; a full
    disk met outside files.atomic_path likewise."""
    try:
        yield
    except UserError as err:
        sys.exit(f"error: {err}")
    except OSError as err:
        if not out_of_space(err):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        sys.exit(f"error: no space left on the device{where} ({err.strerror}); free some space and run the stage again")
