"""Inputs pinned by what they held, not by their path.

A score table is copied, once, into the comparison (or run) directory that uses it, as `inputs/scores-<sha>.csv`
(named by its content), and every run reads that copy: a table replaced or edited while a comparison trains, or
between a kill and `resume`, changes nothing. A data file is pinned by its SHA-256, a data folder by the names,
sizes and modification times of its files; each run records them in `inputs.json` when it starts, and a resume
that finds them changed refuses in one line instead of training on other data.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lossbench.atomic import atomic_path
from lossbench.data.sources import builtin_name
from lossbench.errors import LossbenchError, require
from lossbench.rundir import read_json, write_json

INPUTS_DIR, INPUTS_FILE = "inputs", "inputs.json"
SCORES_KEY = "scores.path"
PINNED_NAME = re.compile(r"scores-([0-9a-f]{16})\.csv")
# The files a built-in source reads, below its path (TorchvisionCIFAR: only its dataset's folder, not all of root).
DATA_SOURCES = {
    "lossbench.data.Arrays": ("data.path", None),
    "lossbench.data.ImageFolder": ("data.root", None),
    "lossbench.data.TorchvisionCIFAR": (
        "data.root",
        {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"},
    ),
}


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    return "sha256:" + file_digest(Path(path))


def fingerprint(path: Path) -> str | None:
    """A file's SHA-256 (cached per size and modification time within a process); a folder's digest of every
    non-hidden file's relative path, size and modification time; None when the path does not exist."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return _fingerprint(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = Path(folder, name)
            stat = full.stat()
            digest.update(f"{full.relative_to(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return "files:" + digest.hexdigest()


def data_inputs(cfg: DictConfig) -> dict[str, Path]:
    """The data a run reads from disk: {config key: path} for lossbench's own file and folder sources."""
    data = cfg.get("data")
    source = builtin_name(data.get("_target_")) if isinstance(data, DictConfig) else None
    if source not in DATA_SOURCES:
        return {}
    key, folders = DATA_SOURCES[source]
    value = OmegaConf.select(cfg, key, default=None)
    if not isinstance(value, str) or not value:
        return {}
    path = Path(value)
    if folders is not None:
        path = path / folders.get(str(data.get("variant")), "")
    return {key: path}


def scores_file(cfg: DictConfig) -> Path | None:
    """The score table file a config reads (scores=file), or None."""
    value = OmegaConf.select(cfg, SCORES_KEY, default=None)
    is_file_table = cfg.scores.get("_target_") == "lossbench.scores.load_scores" and cfg.scores.get("name") == "file"
    return Path(value) if is_file_table and isinstance(value, str) and value else None


def pinned_digest(path: Path) -> str | None:
    """The content digest in a pinned copy's name (inputs/scores-<digest>.csv), or None for any other path."""
    match = PINNED_NAME.fullmatch(Path(path).name)
    return match.group(1) if match and Path(path).parent.name == INPUTS_DIR else None


def check_pinned(path: Path) -> None:
    """A pinned copy must still hold what its name says."""
    digest = pinned_digest(path)
    if digest is not None and Path(path).is_file():
        require(
            file_digest(path)[:16] == digest,
            f"score table {path} was changed after lossbench copied it (its name is its content's SHA-256); "
            "the runs that used it would mix two tables: restore it, or start again with a new --out",
        )


def pin_scores(source: Path, directory: Path) -> Path:
    """Copy the score table `source` into directory/inputs/ (named by its content), once; the copy's path."""
    source, directory = Path(source).resolve(), Path(directory).resolve()
    if pinned_digest(source) is not None and source.parent.parent == directory:
        check_pinned(source)
        return source
    digest = file_digest(source)[:16]
    target = directory / INPUTS_DIR / f"scores-{digest}.csv"
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    check_pinned(target)
    return target


def pin_run_inputs(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """At a run's first start: its score table pinned (a comparison's own pinned copy is used as it is, so that
    the runs of a pack keep one path; any other table is copied into run_dir) and cfg pointing at the copy; the
    data's fingerprints recorded in run_dir/inputs.json. Returns the config to record."""
    record: dict[str, Any] = {}
    table = scores_file(cfg)
    if table is not None and table.is_file():
        if pinned_digest(table) is not None:
            check_pinned(table)
            copy = table
        else:
            copy = pin_scores(table, run_dir)
        record[SCORES_KEY] = {"source": str(table), "copy": str(copy), "sha256": file_digest(copy)}
        OmegaConf.update(cfg, SCORES_KEY, str(copy))
    for key, path in data_inputs(cfg).items():
        found = fingerprint(path)
        if found is not None:
            record[key] = {"path": str(path), "fingerprint": found}
    write_json(Path(run_dir) / INPUTS_FILE, record)
    return cfg


def read_inputs(run_dir: Path) -> dict[str, Any]:
    """A run's inputs.json ({} for runs of older versions, which recorded none)."""
    path = Path(run_dir) / INPUTS_FILE
    if not path.exists():
        return {}
    try:
        record = read_json(path)
        require(isinstance(record, dict), "not a mapping")
        return record
    except (ValueError, LossbenchError) as err:
        raise LossbenchError(
            f"{path}: damaged ({err}); it pins the run's inputs: restore it, or remove the run "
            "directory to run it again from scratch"
        ) from None


def changed_inputs(run_dir: Path, seen: dict[tuple[str, str], str | None] | None = None) -> list[str]:
    """What changed since the run recorded its inputs: one phrase per input (empty when nothing did). `seen`
    keeps the fingerprints already taken (by kind and path) for the next run's call."""
    seen = {} if seen is None else seen
    problems = []
    for key, entry in read_inputs(run_dir).items():
        if not isinstance(entry, dict):
            continue
        if key == SCORES_KEY:
            copy = where_now(run_dir, Path(str(entry.get("copy", ""))))
            if ("sha256", str(copy)) not in seen:
                seen["sha256", str(copy)] = file_digest(copy) if copy.is_file() else None
            found = seen["sha256", str(copy)]
            if found != entry.get("sha256"):
                problems.append(f"{key}: the score table it used ({copy}) is {'changed' if found else 'gone'}")
        else:
            path = Path(str(entry.get("path", "")))
            if ("fingerprint", str(path)) not in seen:
                seen["fingerprint", str(path)] = fingerprint(path)
            found = seen["fingerprint", str(path)]
            if found != entry.get("fingerprint"):
                problems.append(f"{key} {path}: {'changed' if found else 'gone'} since the run started")
    return problems


def check_run_inputs(run_dir: Path) -> None:
    """Refuse to go on with a run whose inputs changed since it started (the run would mix two data sets or
    tables)."""
    problems = changed_inputs(run_dir)
    require(
        not problems,
        f"{run_dir}: {'; '.join(problems)}: resuming would train one run on two inputs; restore "
        "the original, or start the run again in a new directory",
    )


def resumed_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """A recorded config as a resume uses it: its inputs checked, and its pinned score table read from the run
    directory where it is now (the folder may have moved since)."""
    check_run_inputs(run_dir)
    entry = read_inputs(run_dir).get(SCORES_KEY)
    if isinstance(entry, dict):
        OmegaConf.update(cfg, SCORES_KEY, str(where_now(run_dir, Path(str(entry.get("copy", ""))))))
    return cfg


def where_now(run_dir: Path, copy: Path) -> Path:
    """A pinned score table recorded at `copy`: there, or where it is now that its run's (or comparison's)
    folder was moved or copied."""
    for candidate in (copy, Path(run_dir) / INPUTS_DIR / copy.name, Path(run_dir).parent / INPUTS_DIR / copy.name):
        if candidate.is_file():
            return candidate
    return copy


def input_warnings(run_dirs: list[Path]) -> list[str]:
    """What a report says about the runs' pinned inputs: runs of one report that used different data or score
    tables under one key (the comparison mixes two inputs), and inputs that changed since (the runs cannot be
    repeated as they are). Each file or folder is fingerprinted once."""
    used: dict[tuple[str, str], list[Path]] = {}
    for run_dir in run_dirs:
        try:
            record = read_inputs(run_dir)
        except LossbenchError as err:
            return [str(err)]
        for key, entry in record.items():
            if isinstance(entry, dict):
                pinned = entry.get("sha256") if key == SCORES_KEY else entry.get("fingerprint")
                used.setdefault((key, str(pinned)), []).append(run_dir)
    warnings = []
    for key in sorted({k for k, _ in used}):
        groups = [runs for (k, _), runs in used.items() if k == key]
        if len(groups) > 1:
            shown = "; ".join(f"{len(runs)} run(s) such as {runs[0].name}" for runs in groups)
            warnings.append(
                f"the runs used {len(groups)} different {key} inputs ({shown}): they are not one comparison"
            )
    seen: dict[tuple[str, str], str | None] = {}
    for run_dir in run_dirs:
        for problem in changed_inputs(run_dir, seen):
            warnings.append(f"{run_dir}: {problem}; the run used the earlier one")
    return list(dict.fromkeys(warnings))
