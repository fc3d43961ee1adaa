"""Atomic file writes: write next to the target, then rename over it, so a crash never leaves half a file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; results should get the permissions any new file gets.
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a fresh, uniquely named temporary path beside `path` (so two writers never share one); once the
    block succeeds it replaces `path` in one rename, and on failure it is removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
