"""No worker outlives the command that started it.

A launcher that runs jobs in worker processes (hydra/launcher=joblib: loky's workers) leaves them training when the
command is killed with SIGKILL, which no handler sees: they would hold the runs' locks (a `resume` refused, naming
a process the user never started) and write into the comparison behind its back. The command records itself in
the environment its workers inherit; a job that finds itself in another process on the same machine watches that
process and, once it is gone, stops as Ctrl-C would stop it: its run is marked interrupted and `resume` continues
it. Jobs on other machines (SLURM) are meant to outlive the command and are left alone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from lossbench.errors import raise_terminated

LAUNCHER_ENV = "LOSSBENCH_LAUNCHER"  # "host:pid" of the command that launched the jobs
POLL_S = 0.5
GRACE_S = 30.0  # after the stop, how long a job may take to record its run as interrupted
EXIT_TERMINATED = 143

_launcher: int | None = None  # the launcher this worker process follows


def mark_launcher(command: bool = False) -> None:
    """Record this process as the launcher of the jobs it starts. A lossbench command always is one (`command`:
    whatever it inherited from the process that started it); a library call keeps a launcher already recorded."""
    if command:
        os.environ[LAUNCHER_ENV] = f"{socket.gethostname()}:{os.getpid()}"
    else:
        os.environ.setdefault(LAUNCHER_ENV, f"{socket.gethostname()}:{os.getpid()}")


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def follow_launcher() -> None:
    """In a job's worker process on the launcher's machine: stop when the launcher is gone (SIGTERM to itself,
    which the CLI's handler turns into an interruption). Nothing in the launcher's own process or elsewhere."""
    global _launcher
    host, _, pid = os.environ.get(LAUNCHER_ENV, "").rpartition(":")
    if _launcher is not None or not pid.isdigit() or int(pid) == os.getpid() or host != socket.gethostname():
        return
    launcher = _launcher = int(pid)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)  # the worker's job then records the run as interrupted

    def watch() -> None:
        while alive(launcher):
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_S)  # the job records its run and leaves (exit_if_orphaned); a stuck one is ended here
        os._exit(EXIT_TERMINATED)

    threading.Thread(target=watch, name="lossbench-lifeline", daemon=True).start()


def exit_if_orphaned() -> None:
    """At the end of a job in a worker process: leave the process if its launcher is gone (the pool's idle worker
    would otherwise wait for work that never comes)."""
    if _launcher is not None and not alive(_launcher):
        logging.shutdown()
        os._exit(EXIT_TERMINATED)


def orphaned_worker(pid: int) -> bool:
    """Whether process `pid` is a lossbench job's worker whose launcher is gone: it is stopping (follow_launcher),
    and a lock it holds is free within GRACE_S."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return False
    host, _, launcher = environ.get(LAUNCHER_ENV.encode(), b"").decode(errors="replace").rpartition(":")
    return launcher.isdigit() and int(launcher) != pid and host == socket.gethostname() and not alive(int(launcher))
