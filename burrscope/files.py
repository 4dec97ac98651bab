"""File helpers: hashing, atomic writes, so a killed stage never leaves a half-written output, and sealed files that
carry their own digest, so a cache entry corrupted on disk is never trusted.

An atomic write goes to a temp beside its target (`.<name>.<random>.tmp`), renamed onto the target only once
complete. A kill (SIGKILL, a time limit, power loss) leaves the temp behind; the next write of the same target
removes it, so a rerun of the killed stage leaves nothing behind. That assumes one writer per target at a time,
which DVC and Snakemake guarantee for outputs and the feature cache's file lock for its entries. A full disk is an
OutOfSpace error naming the target, with the temp removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from glob import escape
from pathlib import Path

from burrscope.errors import OutOfSpace, UserError, out_of_space

CHUNK = 1 << 20
# Below this many free bytes, a write that failed for a reason its writer does not pass on (torch's C++ zip writer
# says only "unexpected pos") is taken to have failed for want of space.
NEARLY_FULL = 1 << 20
SEAL = b"burrscope-sha256:"


class CorruptFile(UserError):
    """A sealed file whose bytes no longer match the digest written with them."""


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _as_if_created_normally(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp make owner-only temps; an output should get the permissions open() would give."""
    os.chmod(path, mode & ~_current_umask())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temps(target: Path) -> None:
    """Remove the temps an earlier, killed write of `target` left beside it (with a sqlite journal, for a store)."""
    for stale in target.parent.glob(f".{escape(target.name)}.*.tmp*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.is_mount() and path != path.parent:
        path = path.parent
    return path


def no_space_error(target: Path, err: BaseException) -> OutOfSpace | None:
    """An OutOfSpace naming `target` if `err` came from a full disk (or, unsaid, the disk is nearly full), else None."""
    free = shutil.disk_usage(target.parent).free
    if not out_of_space(err) and not (isinstance(err, OSError | RuntimeError) and free < NEARLY_FULL):
        return None
    return OutOfSpace(
        f"{target}: no space left on the device holding {mount_point(target.parent)} ({free / 2**20:.1f} MiB free) "
        "while writing it; nothing was written there. Free some space and run the stage again"
    )


@contextlib.contextmanager
def disk_full_named(target: Path) -> Iterator[None]:
    """A full disk's error while writing `target` raised as OutOfSpace naming it; any other error as it is."""
    try:
        yield
    except Exception as err:
        full = no_space_error(target, err)
        if full is None:
            raise
        raise full from err


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is renamed onto `target`, on error removed (a full disk
    raises OutOfSpace naming `target`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with disk_full_named(target):
            yield tmp
            _as_if_created_normally(tmp, 0o666)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; on success it replaces `target` whole (a full disk raises
    OutOfSpace naming `target`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with disk_full_named(target):
            yield tmp
            _as_if_created_normally(tmp, 0o777)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def seal(payload: bytes) -> bytes:
    """`payload` behind a line holding its sha256: what `unseal` checks."""
    return SEAL + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def unseal(data: bytes, path: Path) -> bytes:
    """The payload of a sealed file's bytes `data`; CorruptFile, naming `path`, unless it matches its digest."""
    header, _, payload = data.partition(b"\n")
    if not header.startswith(SEAL):
        raise CorruptFile(f"{path}: not a sealed file (no digest line)")
    if hashlib.sha256(payload).hexdigest().encode() != header.removeprefix(SEAL):
        raise CorruptFile(f"{path}: its bytes do not match the sha256 written with them (truncated or corrupted)")
    return payload


# DVC runs `--temp` and `--queue` experiments in a copy under <workspace>/.dvc/tmp/exps/.
DVC_EXP_TMP = (".dvc", "tmp", "exps")


def workspace_root(cwd: Path | None = None) -> Path:
    """The main DVC workspace, even from inside a temp experiment copy, so that runs share one store and cache."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(DVC_EXP_TMP) + 1):
        if parts[i : i + len(DVC_EXP_TMP)] == DVC_EXP_TMP:
            return Path(*parts[:i])
    return cwd
