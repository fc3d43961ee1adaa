"""An exclusive lock on an open file that behaves the same on every OS: flock on POSIX, a one-byte lock
(msvcrt) on Windows. Either is held by the open file, not the process's memory: the OS releases it when the file is
closed or its holder exits, even on kill -9."""

from __future__ import annotations

import os
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

# Windows locks bytes, and a locked byte cannot be read by another process: the byte locked lies far past what a
# lock file holds (its holder's pid), so that whoever waits can still read who holds it.
WINDOWS_BYTE = 1 << 30
POLL_S = 0.05  # Windows has no blocking lock that waits without a limit: retry this often


def try_lock(fd: int) -> bool:
    """Take the lock on `fd` if no other open file holds it; whether it was taken. Never waits."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    position = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, WINDOWS_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False
    finally:
        os.lseek(fd, position, os.SEEK_SET)


def wait_lock(fd: int) -> None:
    """Take the lock on `fd`, waiting for as long as another open file holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not try_lock(fd):
        time.sleep(POLL_S)


def release(fd: int) -> None:
    """Give the lock on `fd` back (closing the file does too; Windows asks for it to be given back first)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    position = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, WINDOWS_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.lseek(fd, position, os.SEEK_SET)
