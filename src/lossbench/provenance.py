"""Provenance: what produced a run (lossbench version, git commit, torch, device, precision), saved as run.json
beside its metrics so that a number can always be traced to the code and the machine that made it."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lossbench.cpus import cpu_model
from lossbench.precision import Precision, choice_record
from lossbench.rundir import read_run_record, write_run_record


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout lossbench runs from (with '+dirty' for uncommitted changes), None when it is
    installed from a wheel."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def provenance(device: torch.device, precision: Precision, setting: str, pack: int = 1) -> dict[str, Any]:
    """What produced a run. `setting`: the precision the config asked for (what recorded_choice is valid under);
    `pack`: how many runs trained together in its packed network (1: alone)."""
    try:
        version = metadata.version("lossbench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "lossbench": version,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        **choice_record(precision, setting),  # with cpu_layout where model.cpu_layout=auto chose it
        "pack": pack,
    }


def write_provenance(run_dir: Path, device: torch.device, precision: Precision, setting: str, pack: int = 1) -> None:
    write_run_record(run_dir, provenance(device, precision, setting, pack))


def recorded_choice(run_dir: Path) -> dict[str, Any]:
    """run.json's fields, for the precision and layout its run chose when it first started; empty when there is no
    readable run.json (a run that never started, or one from a version that recorded none)."""
    try:
        return read_run_record(run_dir)
    except (OSError, ValueError):
        return {}
