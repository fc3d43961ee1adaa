"""The bridge to Hydra: lossbench's one Hydra entry point, the command lines of every run and sweep it launches
(`run`, `run -m`, `compare`, `resume`, each trial and final sweep of `tune`) with one quoting scheme, and the call
that runs them.

Values that come from the user or the disk (paths, resolved interpolations) are written with `hydra_quote`, which
reads back exactly through Hydra's override grammar; numbers and the like with `hydra_value`.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lossbench.errors import LossbenchError, debug_enabled, one_line
from lossbench.lifeline import mark_launcher

HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"  # set to 1, Hydra raises an error that escapes a job instead of printing it
CONFIG_PATH = "pkg://lossbench.configs"
CONFIG_NAME = "config"

Task = Callable[[DictConfig], object]  # what a job does with the config Hydra composed for it


def hydra_quote(text: str) -> str:
    """`text` as a Hydra override value that reads back exactly: single-quoted (commas, spaces, non-ASCII
    survive), quotes escaped as Hydra's grammar wants, and `${` escaped so that OmegaConf does not interpolate."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("${", "\\${") + "'"


def hydra_value(value: object) -> str:
    """A resolved config value as Hydra override text that reads back as exactly that value."""
    if isinstance(value, str):
        return hydra_quote(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def setting(key: str, value: object) -> str:
    """The override key=value, the value quoted (a path) or written (a number) so that it reads back exactly."""
    return f"{key}={hydra_value(value)}"


def sweep(key: str, values: list[object]) -> str:
    """The sweep override key=v1,v2,... over `values`, each written as `setting` writes one."""
    return f"{key}={','.join(hydra_value(v) for v in values)}"


def run_command(args: list[str], run_dir: Path) -> list[str]:
    """The command line of one job (no -m) into run_dir."""
    return [*args, setting("hydra.run.dir", str(run_dir))]


def sweep_command(
    args: list[str],
    sweep_dir: Path,
    sweeps: Sequence[str] = (),
    subdir: str | None = None,
    name_by: list[str] | None = None,
) -> list[str]:
    """The command line of a multirun into sweep_dir: the user's args, then the sweeps. `subdir` names each job's
    directory (a Hydra interpolation such as trial_${hydra.job.num}, passed as it is); `name_by`, when given, are
    the keys left out of the default job directory name (hydra.job.override_dirname)."""
    command = ["-m", *args, *sweeps, setting("hydra.sweep.dir", str(sweep_dir))]
    if subdir is not None:
        command.append(f"hydra.sweep.subdir={subdir}")
    if name_by is not None:
        command.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(name_by)}]")
    return command


def entry_point(task: Task) -> Callable[[], object]:
    """lossbench's Hydra entry point for `task`: the package's config, composed from the command line that
    launch_hydra sets. Every job lossbench launches goes through here (one config, one version base)."""
    return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)(task)


def run_task(task: Task, args: list[str]) -> None:
    """Run `task` through Hydra with `args` (built by run_command or sweep_command) as its command line."""
    launch_hydra(args, entry_point(task))


def config_error(err: Exception) -> LossbenchError:
    """A config composition error in one line; a missing option (loss=nope) names its group and the options."""
    if isinstance(err, MissingConfigException):
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        return LossbenchError(f"unknown {group} '{option}'; known: {', '.join(err.options or [])}")
    return LossbenchError(one_line(err))


def launch_hydra(args: list[str], job: Callable[[], object]) -> None:
    """Call a Hydra entry point (entry_point's) with `args` as its command line. Hydra prints an error that
    escapes the job function (with a traceback) and exits 1; here it is raised instead, so that the CLI says in
    one line what the user can fix: Hydra's own writes failing (its .hydra/ files on a full disk: exit 1) and
    Hydra's config errors in a sweep's values (exit 2). Anything else (a launcher's failure) is printed with its
    traceback, as Hydra did, and exits 1. LOSSBENCH_DEBUG=1 or HYDRA_FULL_ERROR=1 raise everything."""
    saved_argv, full_error = sys.argv, os.environ.get(HYDRA_FULL_ERROR)
    mark_launcher()  # the jobs' worker processes, if any, stop when this process is gone
    sys.argv = ["lossbench", *args]
    os.environ[HYDRA_FULL_ERROR] = "1"
    try:
        job()
    except LossbenchError:
        raise
    except Exception as err:
        if debug_enabled() or full_error == "1":
            raise
        if isinstance(err, (HydraException, OmegaConfBaseException)):  # before OSError: a missing config is both
            raise config_error(err) from None
        cause = err.__cause__ or err.__context__
        if not isinstance(err, OSError) and isinstance(cause, OSError):  # e.g. logging's "Unable to configure
            err = cause  # handler 'file'" over a log file in a read-only folder: the file and the reason
        if isinstance(err, OSError):
            if err.filename is None:  # lossbench's writes name their file (atomic.naming): this was one of Hydra's
                err.filename = "Hydra's files in the run directory (.hydra/, the job log)"
            raise err from None
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        sys.argv = saved_argv
        if full_error is None:
            del os.environ[HYDRA_FULL_ERROR]
        else:
            os.environ[HYDRA_FULL_ERROR] = full_error
