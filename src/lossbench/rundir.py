"""The on-disk layout of runs and comparisons: every file a run or a comparison writes, with its one reader, the
ownership marker and the lock.

A run directory holds `config.yaml` (resolved, with absolute paths), `metrics.csv` (one row per evaluation),
`status.json` (running / finished / diverged / interrupted / failed), `run.json` (what produced it),
`confusion.csv` and `checkpoint.pt`. A comparison directory holds `compare.json` (everything `resume` needs,
recorded once with absolute paths) and one run directory per job; a tune's also `tune.json`. Both carry a
`.lossbench` marker (lossbench writes only into directories it made, or empty ones) and a `.lossbench.lock` file
that a working process holds an OS lock on (lossbench.oslock: released by the OS even after kill -9).
Directories written by lossbench before the marker existed are recognised by their files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lossbench.atomic import FILE_MODE, atomic_path, naming, write_atomic
from lossbench.errors import EnvironmentFailure, LossbenchError, one_line, require
from lossbench.lifeline import GRACE_S, orphaned_worker
from lossbench.oslock import release, try_lock

CONFIG_FILE, METRICS_FILE, STATUS_FILE, CHECKPOINT_FILE = "config.yaml", "metrics.csv", "status.json", "checkpoint.pt"
COMPARE_FILE = "compare.json"
CONFUSION_FILE, PROVENANCE_FILE = "confusion.csv", "run.json"
# written by `lossbench tune`: trials, record, choices
TUNING_DIR, TUNE_FILE, TUNED_FILE = "tuning", "tune.json", "tuned.md"
MARKER_FILE, LOCK_FILE = ".lossbench", ".lossbench.lock"
LAYOUT_VERSION = 2  # 1: no marker, no lock
KINDS = ("run", "comparison")
HYDRA_SWEEP_FILE = "multirun.yaml"  # what Hydra writes into a `run -m` sweep directory

# metrics.csv's columns, one row per evaluation (the metrics are defined in lossbench.metrics)
SPLIT_METRICS = [
    "nll",
    "acc",
    "top5_acc",
    "score",
    "score_bayes",
    "score_bayes_cal",
    "expected_score",
    "mistake_severity",
    "ece",
]
TRAIN_COLUMNS = ["epoch", "step", "elapsed_s", "lr", "train_loss", "train_acc", "grad_norm"]


def split_columns(split: str) -> list[str]:
    return [f"{split}_{name}" for name in SPLIT_METRICS]


METRIC_COLUMNS = [*TRAIN_COLUMNS, *split_columns("val"), *split_columns("test")]
REQUIRED_COLUMNS = ["epoch", "elapsed_s", "test_acc", "test_score"]  # a metrics.csv without them is unusable


# ---------------------------------------------------------------- JSON files


def json_text(value: Any, indent: int | None = 2, ensure_ascii: bool = True) -> str:
    """The text of a JSON file lossbench writes: `value` and a final newline."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii) + "\n"


def write_json(path: Path, value: Any, indent: int | None = 2, ensure_ascii: bool = True) -> None:
    """Write a JSON file atomically."""
    write_atomic(path, json_text(value, indent, ensure_ascii))


def read_json(path: Path) -> Any:
    """A JSON file's value. OSError when it cannot be read, ValueError when it is not UTF-8 JSON: each caller
    says what that means for its file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- what is lossbench's


def run_has_results(run_dir: Path) -> bool:
    """Whether a run was started here: its status (written before the first epoch), metrics or checkpoint."""
    return any((run_dir / name).exists() for name in (STATUS_FILE, METRICS_FILE, CHECKPOINT_FILE))


def find_runs(root: Path) -> list[Path]:
    """The runs of root (root itself when it is a run): the run directories below it (those with a status.json,
    written when a run starts), except the trials of `lossbench tune` below root/.../tuning (selection runs, not
    part of the comparison), the runs of another comparison made inside root, and copies of a run (see
    own_runs)."""
    return own_runs(root)[0]


def own_runs(root: Path) -> tuple[list[Path], list[str]]:
    """(the runs of root, one phrase per thing below root that looks like runs but is left out, saying why): a
    comparison made inside root has runs of its own, and a run directory copied beside the one lossbench made (its
    marker names the folder it was made as, and that folder is there too) is a duplicate."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    found = sorted(
        p.parent
        for p in root.rglob(STATUS_FILE)
        if (p.parent / CONFIG_FILE).exists() and TUNING_DIR not in p.relative_to(root).parts[:-1]
    )
    runs, nested, notes = [], set(), []
    for run_dir in found:
        parts = run_dir.relative_to(root).parts
        inner = next(
            (
                root.joinpath(*parts[:i])
                for i in range(1, len(parts) + 1)
                if _looks_like_comparison(root.joinpath(*parts[:i]))
            ),
            None,
        )
        if inner is not None:
            nested.add(inner)
        else:
            runs.append(run_dir)
    for inner in sorted(nested):
        notes.append(
            f"{inner}: a comparison of its own, made inside {root}; its runs are left out (report it with "
            f"`lossbench report {inner}`)"
        )
    names = {run_dir: _marker_name(run_dir) for run_dir in runs}
    copies = [d for d, name in names.items() if name not in (None, d.name) and (d.parent / name) in names]
    for copy in copies:
        notes.append(f"{copy}: a copy of {copy.parent / names[copy]} (lossbench made it as that folder); left out")
    own_id = _marker_field(root, "id")
    strangers = [d for d in runs if d not in copies and own_id and _marker_field(d, "comparison") not in (None, own_id)]
    for stranger in strangers:
        notes.append(f"{stranger}: made by another comparison and copied in (its marker says so); left out")
    return [d for d in runs if d not in copies and d not in strangers], notes


def _looks_like_comparison(directory: Path) -> bool:
    """A comparison's folder by what lossbench writes there (without reading its runs)."""
    return (
        marker_kind_or_none(directory) == "comparison"
        or (directory / COMPARE_FILE).is_file()
        or (directory / TUNE_FILE).is_file()
        or _lossbench_sweep(directory / HYDRA_SWEEP_FILE)
    )


def _marker_name(directory: Path) -> str | None:
    """The folder name a run's marker records (written since layout 2 with names), or None."""
    return _marker_field(directory, "name")


def _marker_field(directory: Path, field: str) -> str | None:
    """A text field of a directory's marker (name, id, comparison), or None."""
    try:
        value = read_json(directory / MARKER_FILE).get(field)
        return value if isinstance(value, str) and value else None
    except (OSError, ValueError, AttributeError):
        return None


def marker_kind(directory: Path) -> str | None:
    """The kind recorded in directory's marker ('run' or 'comparison'), or None when it has no marker."""
    path = directory / MARKER_FILE
    if not path.exists():
        return None
    try:
        kind = read_json(path)["kind"]
    except (ValueError, KeyError, TypeError) as err:
        raise LossbenchError(
            f"{path}: damaged lossbench marker ({one_line(err)}); remove it if lossbench made "
            "this directory (its runs are then recognised by their files)"
        ) from None
    require(kind in KINDS, f"{path}: unknown directory kind '{kind}' (a newer lossbench?)")
    return kind


def _made_before_markers(directory: Path, kind: str) -> bool:
    """A version-1 directory, recognised only by what lossbench writes, never by a file name alone (any Hydra
    app writes a multirun.yaml, anyone may name a file status.json): a run with a status.json holding a status and
    a config.yaml naming a loss; a comparison with a compare.json holding its overrides, or the sweep directory
    of a `lossbench run -m`, whose multirun.yaml names lossbench's job and which holds lossbench's runs."""
    if kind == "run":
        return _is_status(directory / STATUS_FILE) and _names_a_loss(directory / CONFIG_FILE)
    if (directory / COMPARE_FILE).is_file():
        try:
            read_record(directory)
            return True
        except (LossbenchError, OSError):
            return False
    return _lossbench_sweep(directory / HYDRA_SWEEP_FILE) and any(
        _made_before_markers(run_dir, "run") or marker_kind_or_none(run_dir) == "run"
        for run_dir in find_runs(directory)
    )


def marker_kind_or_none(directory: Path) -> str | None:
    try:
        return marker_kind(directory)
    except LossbenchError:
        return None


def _is_status(path: Path) -> bool:
    try:
        info = read_json(path)
        return isinstance(info, dict) and isinstance(info.get("status"), str)
    except (OSError, ValueError):
        return False


def _names_a_loss(path: Path) -> bool:
    try:
        cfg = OmegaConf.load(path)
        return isinstance(cfg, DictConfig) and isinstance(OmegaConf.select(cfg, "loss.name", default=None), str)
    except Exception:  # not YAML, not UTF-8, not readable: not lossbench's
        return False


def _lossbench_sweep(path: Path) -> bool:
    """A multirun.yaml that Hydra wrote for lossbench's job (hydra.job.name: lossbench)."""
    try:
        cfg = OmegaConf.load(path)
        return isinstance(cfg, DictConfig) and OmegaConf.select(cfg, "hydra.job.name", default=None) == "lossbench"
    except Exception:
        return False


def is_own(directory: Path, kind: str) -> bool:
    return marker_kind(directory) == kind or _made_before_markers(directory, kind)


def claim(directory: Path, kind: str, ignore: Iterable[str] = ()) -> None:
    """Make `directory` lossbench's `kind` directory (creating it and its marker), or refuse in one line: it
    is a file, lossbench's directory of the other kind, or a non-empty directory lossbench did not make.
    `ignore` names entries another writer put there first (Hydra's `.hydra/` and job log in a run directory)."""
    directory = Path(directory)
    require(not directory.exists() or directory.is_dir(), f"{directory}: exists and is not a directory")
    if directory.is_dir():
        found = marker_kind(directory)
        require(found in (None, kind), f"{directory} is a lossbench {found} directory, not a {kind} directory")
        if found is None and not _made_before_markers(directory, kind):
            skip = {MARKER_FILE, LOCK_FILE, *ignore}
            foreign = sorted(p.name for p in directory.iterdir() if p.name not in skip)
            require(
                not foreign,
                f"{directory}: not empty and not made by lossbench (it holds "
                f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                "choose a new or empty directory",
            )
        if found is not None:
            return
    directory.mkdir(parents=True, exist_ok=True)
    # The folder's own name: a copy of it (`cp -r run 'run (copy)'`) is told from it (own_runs). A comparison
    # gets an id, and a run made inside one records it: a run copied in from another comparison is told too.
    marker = {"kind": kind, "version": LAYOUT_VERSION, "name": directory.resolve().name}
    if kind == "comparison":
        marker["id"] = uuid.uuid4().hex
    else:
        home = next((p for p in directory.resolve().parents if marker_kind_or_none(p) == "comparison"), None)
        if home is not None and _marker_field(home, "id"):
            marker["comparison"] = _marker_field(home, "id")
    write_json(directory / MARKER_FILE, marker, indent=None)


def adopt_for_report(directory: Path) -> None:
    """Allow a report to be written into `directory`: a lossbench run or comparison, or a directory holding
    nothing but directories of runs (e.g. Hydra's outputs/DATE), which then gets a comparison marker.
    Anything else is refused in one line, so that a report never replaces a user's own summary.md."""
    directory = Path(directory)
    if is_own(directory, "comparison") or is_own(directory, "run"):
        return
    require(find_runs(directory), f"{directory}: no run directories found")
    entries = [p for p in directory.iterdir() if p.name not in (MARKER_FILE, LOCK_FILE)]
    foreign = sorted(p.name for p in entries if not (p.is_dir() and find_runs(p)))
    require(
        not foreign,
        f"{directory}: holds files lossbench did not make ({', '.join(foreign[:3])}); "
        "report writes only into lossbench's comparison directories",
    )
    claim(directory, "comparison", ignore=[p.name for p in entries])


# ---------------------------------------------------------------- the lock


def _holder(path: Path) -> str:
    """The pid written into a lock file (its holder may be writing it just now: try a few times)."""
    for _ in range(20):
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def _after_orphan(fd: int, holder: str) -> bool:
    """Whether the lock on `fd` was taken after waiting for its holder, when the holder is a worker of a killed
    command, which stops on its own (lossbench.lifeline) within GRACE_S: a resume right after the kill waits for
    it instead of naming a process the user never started."""
    deadline = time.monotonic() + GRACE_S + 5
    while holder.isdigit() and time.monotonic() < deadline:
        stopping = orphaned_worker(int(holder))
        if try_lock(fd):
            return True
        if not stopping:
            return False
        time.sleep(0.2)
    return False


@contextmanager
def locked(directory: Path, name: str = LOCK_FILE, what: Path | None = None) -> Iterator[None]:
    """Hold an exclusive OS lock (lossbench.oslock) on `directory` (its lock file `name`; `what` is the place the
    lock guards, named in the refusal, by default the directory) while the block runs; another process is refused
    with one line naming the holder's pid. The OS releases the lock when the holder exits, even on kill -9."""
    path = Path(directory) / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        if not try_lock(fd):
            holder = _holder(path)
            if not _after_orphan(fd, holder):
                raise EnvironmentFailure(
                    f"{what or directory} is in use by another lossbench process (pid {holder}); "
                    "wait for it to finish or stop it"
                )
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            release(fd)
    finally:
        os.close(fd)  # the file stays, so that no two processes lock different inodes


def check_comparisons_free(path: Path, itself: bool = False) -> None:
    """Refuse (naming the holder) to start work in `path` while a lossbench comparison it lies in (an ancestor
    with a comparison marker, or `path` itself when `itself`) is being run, resumed or reported: each such lock is
    taken and released at once, so that runs started side by side in one folder do not stop each other."""
    path = Path(path).resolve()
    for parent in [*([path] if itself else []), *path.parents]:
        if (parent / MARKER_FILE).exists() and marker_kind_or_none(parent) == "comparison":
            with locked(parent):
                pass


# ---------------------------------------------------------------- files of a run


def write_status(
    run_dir: Path, status: str, epoch: int, epochs: int, message: str = "", environment: bool = False
) -> None:
    """environment: the run failed because of the machine (a full disk, out of memory), not its input, so that a
    comparison whose runs all failed exits 1 (retry once it is fixed) rather than 2."""
    info = {
        "status": status,
        "epoch": epoch,
        "epochs": epochs,
        "message": message,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if environment:
        info["environment"] = True
    text = json_text(info)
    try:
        write_atomic(run_dir / STATUS_FILE, text)
    except PermissionError:
        # A directory that cannot take a new file (read-only) may still let its status.json be rewritten in place:
        # a failure is then recorded, rather than a stale "running".
        if not (run_dir / STATUS_FILE).is_file():
            raise
        with naming(run_dir / STATUS_FILE), (run_dir / STATUS_FILE).open("r+", encoding="utf-8") as f:
            f.write(text)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


def require_writable(run_dir: Path) -> None:
    """A run about to train must be able to write its checkpoint and records: a read-only directory is refused
    in one line (exit 1), and the run's status says failed where it can be written."""
    if os.access(run_dir, os.W_OK | os.X_OK):
        return
    message = f"{run_dir}: not writable (permission denied); resuming needs to write its checkpoint and records there"
    previous = read_status(run_dir)
    try:
        write_status(run_dir, "failed", previous["epoch"], previous.get("epochs", 0), message, environment=True)
    except OSError:
        pass  # nothing in it can be written: the error line says why
    raise EnvironmentFailure(message)


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status; 'unknown' (with a message saying how to recover) when status.json is missing or
    damaged, so that reports and resumes go on."""
    path = Path(run_dir) / STATUS_FILE
    try:
        info = read_json(path)
        require(isinstance(info, dict) and isinstance(info.get("status"), str), "no status field")
        return {"message": "", **info, "epoch": int(info.get("epoch", 0))}
    except FileNotFoundError:
        return {"status": "unknown", "epoch": 0, "message": f"no {STATUS_FILE}"}
    except (OSError, ValueError, TypeError, LossbenchError) as err:
        message = f"{path} is damaged ({one_line(err)}); `lossbench resume {run_dir}` rewrites it"
        return {"status": "unknown", "epoch": 0, "message": message}


def read_config(run_dir: Path) -> DictConfig:
    """The run's resolved config.yaml, or one line naming it and how to recover."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        cfg = OmegaConf.load(path)
        require(isinstance(cfg, DictConfig), "not a mapping")
        return cfg
    except OSError:
        raise
    except Exception as err:  # yaml's and omegaconf's errors, a non-UTF-8 file
        raise LossbenchError(
            f"{path}: damaged ({one_line(err)}); remove the run directory {run_dir} to run it again from scratch"
        ) from None


def append_metrics(run_dir: Path, row: dict[str, float]) -> None:
    """Add one row, on disk before returning. A new file appears whole, header and first row in one rename, so a
    kill never leaves an empty or header-only metrics.csv; a later row is one small write, which a kill leaves
    whole or, at worst, unterminated (truncate_metrics drops that)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        with atomic_path(path) as tmp:  # names path in its errors
            _write_rows(tmp, [row], "w")
        return
    with naming(path):
        _write_rows(path, [row], "a")


def _write_rows(path: Path, rows: list[dict[str, Any]], mode: str) -> None:
    """Write `rows` (after the header, for mode "w") and fsync them."""
    with path.open(mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        if mode == "w":
            writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def _number(text: str) -> float | None:
    """A metrics.csv cell as a float (empty = missing = NaN), or None when it is not a number."""
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def parse_metrics(text: str) -> tuple[list[str], list[list[str]], list[int]]:
    """metrics.csv's text as (its header, its usable rows as written, the line numbers of the others). A row is
    usable when it is complete (a file cut mid-write ends without a newline), has the header's number of fields
    and holds only numbers (an empty cell is a missing one), its epoch among them. The one parser of the file: the
    report takes what it can from it, a resume needs it whole."""
    lines = text.splitlines(keepends=True)
    header = next(csv.reader(lines[:1]), [])
    epoch = header.index("epoch") if "epoch" in header else None
    rows, damaged = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = next(csv.reader([line]), [])
        values = [_number(v) for v in fields]
        if (
            not line.endswith("\n")
            or len(fields) != len(header)
            or None in values
            or epoch is None
            or math.isnan(values[epoch])
        ):
            damaged.append(number)
        else:
            rows.append(fields)
    return header, rows, damaged


def read_metrics(run_dir: Path) -> tuple[pd.DataFrame, str | None]:
    """The usable rows of a run's metrics.csv (parse_metrics) as numbers in METRIC_COLUMNS (metrics an older
    version did not log are NaN), a repeated epoch keeping its last row, and a warning naming the file and the rows
    used when any of it is damaged: what reports and tunes read."""
    path = Path(run_dir) / METRICS_FILE
    empty = pd.DataFrame(columns=METRIC_COLUMNS)
    if not path.exists():
        return empty, None  # the run has not finished an epoch
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return empty, f"{path}: unreadable ({one_line(err)}); no rows used"
    if not text:
        return empty, f"{path}: empty; no rows used"
    header, rows, damaged = parse_metrics(text)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        return empty, f"{path}: no column(s) {', '.join(missing)} in its header; no rows used"
    table = pd.DataFrame([[_number(v) for v in row] for row in rows], columns=header, dtype=float)
    repeated = int(table.duplicated("epoch", keep="last").sum())
    table = table.drop_duplicates("epoch", keep="last").sort_values("epoch", kind="stable")
    table = table.reindex(columns=METRIC_COLUMNS)
    if not damaged and not repeated:
        return table, None
    problems = []
    if damaged:
        shown = ", ".join(map(str, damaged[:5])) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        problems.append(f"damaged line(s) {shown} skipped")
    if repeated:
        problems.append(f"{repeated} repeated epoch row(s) replaced by the later one")
    used = (
        f"using {len(table)} row(s), epochs {table['epoch'].min():g}-{table['epoch'].max():g}"
        if len(table)
        else "no rows used"
    )
    return table, f"{path}: {'; '.join(problems)}; {used}"


def final_metric(run_dir: Path, column: str) -> float:
    """The last evaluation's value of a metrics.csv column (NaN when the run has none)."""
    table, _ = read_metrics(run_dir)
    return float(table[column].iloc[-1]) if len(table) and column in table else math.nan


def _whole_rows(text: str) -> list[dict[str, str]]:
    """The rows of metrics.csv's complete lines, as written, when every one is usable and the header is today's;
    else LossbenchError. An epoch is a whole number."""
    header, rows, damaged = parse_metrics(text)
    require(header == METRIC_COLUMNS, f"header is not {','.join(METRIC_COLUMNS)}")
    if damaged:
        raise LossbenchError(f"line {damaged[0]} is not a complete row of numbers")
    rows = [dict(zip(header, row)) for row in rows]
    for row in rows:
        int(row["epoch"])
    return rows


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop rows after the checkpoint's epoch (written after the last checkpoint by a killed process). An
    unterminated last line is such a row cut by the kill: each row is on disk before its epoch's checkpoint is
    written, so it cannot be the checkpoint's own."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    try:
        text = path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        if not complete and last_epoch == 0:  # nothing trained is lost: the next row makes the file anew
            path.unlink()
            return
        rows = _whole_rows(complete)
    except (ValueError, csv.Error, LossbenchError) as err:
        raise LossbenchError(
            f"{path}: damaged ({one_line(err)}); remove it and {CHECKPOINT_FILE} to restart this run from epoch 1"
        ) from None
    rows = [row for row in rows if int(row["epoch"]) <= last_epoch]
    with atomic_path(path) as tmp:
        _write_rows(tmp, rows, "w")


def metric_epochs(run_dir: Path) -> list[int]:
    """The epochs metrics.csv holds complete rows for, in file order ([] when it is missing or damaged: the
    callers that need it intact read it themselves)."""
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8")
        return [int(row["epoch"]) for row in _whole_rows(text[: text.rfind("\n") + 1])]
    except (OSError, ValueError, csv.Error, LossbenchError):
        return []


def record_disagreement(run_dir: Path, epochs: int, trained: int | None = None) -> str | None:
    """Whether a run's records agree that it trained `trained` epochs (default: all `epochs` configured): its
    metrics.csv must hold exactly the rows of epochs 1..trained. A phrase saying how they disagree, or None."""
    trained = epochs if trained is None else trained
    rows = metric_epochs(run_dir)
    if rows == list(range(1, trained + 1)):
        return None
    held = f"epochs {', '.join(map(str, rows[:6]))}{' ...' if len(rows) > 6 else ''}" if rows else "no rows"
    return f"{METRICS_FILE} holds {held}, not epochs 1-{trained} of {epochs}"


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """config.yaml: the resolved config a run trains with."""
    write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))


def write_confusion(path: Path, counts: Sequence[Sequence[int]], classes: Sequence[str]) -> None:
    """confusion.csv: class names as header and first column, corner cell `true\\pred` (the score-table layout)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\pred", *classes])
        for name, row in zip(classes, counts):
            writer.writerow([name, *row])


def read_confusion(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """A run's confusion.csv as a (true x predicted) count table, or a warning naming the damaged file."""
    if not path.exists():
        return None, None
    try:
        # Names as written (csv, not pandas' inference: a class named 00000 is not 0, NA is not missing).
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
        require(len(rows) >= 2, "no rows")
        require(all(len(row) == len(rows[0]) for row in rows), "rows of different lengths")
        table = pd.DataFrame(
            [[float(v) for v in row[1:]] for row in rows[1:]], index=[row[0] for row in rows[1:]], columns=rows[0][1:]
        )
        values = table.to_numpy(float)
        require(
            table.shape[0] == table.shape[1] and list(table.index) == list(table.columns),
            "rows and columns do not name the same classes",
        )
        require(np.isfinite(values).all() and (values >= 0).all(), "counts must be finite and >= 0")
    except Exception as err:
        return None, f"{path}: unreadable ({one_line(err)})"
    return table.astype(float), None


def nothing_counted(root: Path) -> str:
    """The error of a script that found no run of confusions_by_run to count: the warnings it printed before name
    each run left out, so the message does not guess why."""
    return f"no run under {root} has a {CONFUSION_FILE} that could be counted (a warning above names each run left out)"


def confusions_by_run(root: Path, warnings: list[str]) -> Iterator[tuple[Path, pd.DataFrame, DictConfig, str, int]]:
    """(run directory, test confusion table, config, loss name, seed) for each run of root with a confusion.csv;
    a run whose confusion.csv or config is damaged is left out, with a phrase appended to warnings (the scripts
    that count mistakes print them, as the report does)."""
    for run_dir in find_runs(root):
        counts, warning = read_confusion(run_dir / CONFUSION_FILE)
        if warning:
            warnings.append(f"{warning}; run left out")
        if counts is None:
            continue
        try:
            cfg = read_config(run_dir)
            loss, seed = str(cfg.loss.name), int(cfg.seed)
        except (LossbenchError, OmegaConfBaseException, ValueError, TypeError) as err:  # e.g. no loss.name
            warnings.append(f"{run_dir}: {one_line(err)}; run left out")
            continue
        yield run_dir, counts, cfg, loss, seed


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    """run.json: what produced the run (lossbench.provenance)."""
    write_json(run_dir / PROVENANCE_FILE, record)


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.json's record: FileNotFoundError where there is none (a run that never started, or one from a version
    that recorded none), another OSError or ValueError where it cannot be read or is damaged."""
    record = read_json(Path(run_dir) / PROVENANCE_FILE)
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    return record


# ---------------------------------------------------------------- the comparison's record


def write_record(comparison: Path, record: dict[str, Any]) -> None:
    write_json(comparison / COMPARE_FILE, record, ensure_ascii=False)


def read_record(comparison: Path) -> dict[str, Any]:
    """compare.json: the overrides the comparison was started with (absolute paths since layout version 2)."""
    path = comparison / COMPARE_FILE
    try:
        record = read_json(path)
        args = record.get("args") if isinstance(record, dict) else None
        require(isinstance(args, list) and all(isinstance(a, str) for a in args), "no list of args")
        return record
    except (ValueError, LossbenchError) as err:
        raise LossbenchError(
            f"{path}: damaged ({one_line(err)}); `lossbench report {comparison}` still reports "
            "its runs, but resuming needs this file: start the comparison again with a new "
            "--out"
        ) from None


def write_tune_record(directory: Path, record: dict[str, Any]) -> None:
    """tune.json: every trial of `lossbench tune` and each loss's choice."""
    write_json(directory / TUNE_FILE, record)


def read_tune_record(path: Path) -> Any:
    """A tune.json's value (`path`: the file); OSError or ValueError when it cannot be read."""
    return read_json(path)
