"""Atomic file writes: write next to the target, then rename over it, so a crash never leaves half a file."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; results should get the permissions any new file gets.
FILE_MODE = 0o666 & ~_umask()


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _is_temporary_of(path: Path, name: str) -> bool:
    """Whether `name` is one of atomic_path's temporary files for `path` (mkstemp's random middle included)."""
    other = Path(name)
    # Python 3.12's mkstemp names its file by an absolute path, also for a relative `dir`: compare them absolute.
    same_folder = os.path.abspath(other.parent) == os.path.abspath(path.parent)
    return same_folder and other.name.startswith(_temporary_prefix(path)) and other.suffix == ".tmp"


TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # atomic_path's names: .TARGET.RANDOM.tmp (mkstemp's 8)


def remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporary files that a killed writer left in `directory` (a kill -9 runs no clean-up). Only
    the holder of the directory's lock may call it: no other writer of its files is at work."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError:
                pass  # a read-only folder: the next write there says so


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError raised in the block names `path`. A failed write() carries no file name (a full disk would
    read 'No space left on device' and nothing else), and a temporary file's name means nothing to the user."""
    try:
        yield
    except OSError as err:
        if err.filename is None or _is_temporary_of(path, str(err.filename)):
            err.filename = str(path)
        raise


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a fresh, uniquely named temporary path beside `path` (so two writers never share one); once the
    block succeeds it replaces `path` in one rename, and on failure it is removed. An OSError names `path`."""
    path = Path(path)
    with naming(path):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class _KeepsWriteError:
    """A binary file that remembers the OSError its write raised. torch.save reports a failed write (a full disk)
    as 'RuntimeError: [enforce fail at inline_container.cc] unexpected pos', whether given a path or a file: so it
    did in 37 of 39 fills of a full tmpfs (torch 2.14.1)."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def save_atomic(obj: object, path: Path) -> None:
    """torch.save `obj` to `path` atomically; a failed write is the OSError that names `path`."""
    import torch  # here, not at the top: the run directory's other writers need no torch

    with atomic_path(path) as tmp, tmp.open("wb") as f:
        file = _KeepsWriteError(f)
        try:
            torch.save(obj, file)
        except RuntimeError:
            if file.error is None:
                raise
            raise file.error from None


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def savez_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed `arrays` to `path` atomically: a run or script killed while writing leaves the old
    file (or none), never a truncated archive that fails later with a zip error."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)


# What np.load and reading its arrays raise on a file that is no .npz archive, an empty one, or one cut short or
# overwritten by another writer than savez_atomic (a partial copy, a full disk): zipfile's and zlib's own errors
# (a bad CRC, a compressed member that no longer inflates) are neither OSError nor ValueError.
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
