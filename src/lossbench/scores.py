"""Score matrices S (row = true class, column = predicted class): built-ins, CSV files, validation.

Every loss and metric takes S in the dataset's class order; `load_scores` is the one place that builds it.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lossbench.components import build
from lossbench.data.classes import CIFAR100_SUPERCLASSES, DOGS20_BREEDS, DOGS20_OBJECTS
from lossbench.errors import EnvironmentFailure, LossbenchError, require

# Built-in tables: groups of classes that score `near` for one another.
GROUPS = {
    "cifar10_groups": {  # vehicles vs animals
        "vehicle": ["airplane", "automobile", "ship", "truck"],
        "animal": ["bird", "cat", "deer", "dog", "frog", "horse"],
    },
    "cifar100_superclass": CIFAR100_SUPERCLASSES,  # the 5 fine classes of each of CIFAR-100's 20 coarse classes
    "dogs20_groups": {"dog": DOGS20_BREEDS, **{name: [name] for name in DOGS20_OBJECTS}},  # a breed for a breed
}

BUILTINS = ("identity", *GROUPS)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # S is float32: a larger value would become inf
SCORE_LIMIT = 1e32  # |S| beyond it: a difference or a test-set sum of scores overflows float32
# A plain decimal or scientific number: no '1_0', 'nan', 'inf', '0x10' (all of which Python's float() reads).
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Where a table's first cell looks like this, it is a bare numeric square (malformed or not), not a corner cell.
NUMBER_LIKE = re.compile(r"[+-]?[\d.]|[+-]?(nan|inf)", re.IGNORECASE)


class ScoreMatrix:
    """S as a float32 tensor plus the class names it is indexed by."""

    def __init__(self, matrix: torch.Tensor, classes: Sequence[str]):
        self.matrix = matrix.to(torch.float32)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.classes)


def group_scores(groups: dict[str, list[str]], exact: float, near: float, far: float) -> ScoreMatrix:
    """S = exact on the diagonal, near within a group, far across groups."""
    classes = sorted(c for members in groups.values() for c in members)
    group_of = {c: g for g, members in groups.items() for c in members}
    matrix = torch.tensor(
        [[exact if t == p else near if group_of[t] == group_of[p] else far for p in classes] for t in classes]
    )
    return ScoreMatrix(matrix, classes)


def builtin_scores(name: str, classes: Sequence[str], exact: float, near: float, far: float) -> ScoreMatrix:
    """A built-in score table for `classes` (identity has no names of its own)."""
    if name == "identity":
        n = len(classes)
        return ScoreMatrix(far + (exact - far) * torch.eye(n), classes)
    if name in GROUPS:
        return group_scores(GROUPS[name], exact, near, far)
    raise LossbenchError(f"unknown score table '{name}'; known: {', '.join(BUILTINS)}, file")


def check_score_value(value: float, where: str) -> None:
    """A score must be finite and fit float32 (|x| <= 3.4e38), or S silently holds inf; and within ±SCORE_LIMIT,
    so that the differences of two scores (losses, their gradients, mistake severity) and the sums of scores over
    a test set stay finite in float32 too."""
    require(math.isfinite(value), f"{where}: {value} is not finite")
    require(abs(value) <= FLOAT32_MAX, f"{where}: {value} does not fit float32 (|x| <= {FLOAT32_MAX:.4g})")
    require(
        abs(value) <= SCORE_LIMIT,
        f"{where}: {value} is outside [-{SCORE_LIMIT:.0e}, {SCORE_LIMIT:.0e}]: "
        "beyond it, differences of scores and their sums over a test set (up to a "
        "million examples) overflow float32",
    )


def _parse_number(text: str, where: str) -> float:
    if NUMBER_LIKE.match(text) and text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise LossbenchError(f"{where}: {text} is not finite")
    require(NUMBER.fullmatch(text) is not None, f"{where}: '{text}' is not a number")
    value = float(text)
    check_score_value(value, where)
    return value


def _read_rows(path: Path) -> list[list[str]]:
    """The CSV's non-blank rows, stripped; unreadable or non-UTF-8 files get one line naming the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [[cell.strip() for cell in row] for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise LossbenchError(f"score file {path}: not UTF-8 text (byte {err.start}); save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise LossbenchError(f"score file {path}: not a readable CSV ({err})") from None
    except OSError as err:
        raise EnvironmentFailure(f"score file {path}: cannot be read ({err.strerror})") from None


def read_score_csv(path: str | Path) -> tuple[torch.Tensor, list[str] | None]:
    """Read a score CSV: a table with a header of predicted-class names and a first column of true-class
    names, or a bare numeric square. Returns (matrix, names or None)."""
    path = Path(path)
    require(path.is_file(), f"score file {path}: not found")
    rows = _read_rows(path)
    require(len(rows) > 0, f"score file {path}: empty")
    if all(len(row) == 1 for row in rows) and len(rows) > 1:  # one cell per line: another separator?
        for name, separator in (("semicolons", ";"), ("tabs", "\t"), ("spaces", " "), ("pipes", "|")):
            require(
                not all(separator in row[0] for row in rows),
                f"score file {path}: its values are separated by {name}, not commas; save it as a comma-separated CSV",
            )
    named = not NUMBER_LIKE.match(rows[0][0])  # a named table starts with a corner cell: empty or text
    if named:
        header, body = rows[0], rows[1:]
        require(len(body) > 0, f"score file {path}: header row but no data rows")
        columns = header[1:]  # header[0] is the corner cell (e.g. "true\\pred")
        row_names = [row[0] for row in body]
        cells = [row[1:] for row in body]
        for kind, names in (("column", columns), ("row", row_names)):
            seen: set[str] = set()
            for name in names:
                require(name != "", f"score file {path}: a {kind} name is empty")
                require(name not in seen, f"score file {path}: duplicate {kind} name '{name}'")
                seen.add(name)
        require(
            len(row_names) == len(columns),
            f"score file {path}: not square ({len(row_names)} rows, {len(columns)} columns)",
        )
        require(
            set(row_names) == set(columns),
            f"score file {path}: row names and column names differ "
            f"(only in rows: {sorted(set(row_names) - set(columns))}, "
            f"only in columns: {sorted(set(columns) - set(row_names))})",
        )
    else:
        row_names, columns, cells = None, None, rows
    n = len(cells)
    values = []
    for i, row in enumerate(cells):
        label = f"row {i + 1}" if row_names is None else f"row '{row_names[i]}'"
        require(len(row) == n, f"score file {path}: {label} has {len(row)} values, expected {n} (ragged or not square)")
        names = [f"column {j + 1}" for j in range(n)] if columns is None else [f"column '{c}'" for c in columns]
        values.append([_parse_number(cell, f"score file {path}, {label}, {names[j]}") for j, cell in enumerate(row)])
    matrix = torch.tensor(values, dtype=torch.float32)
    if row_names is not None:
        # Reorder columns to the row order so that S[i, i] is the exact match.
        order = [columns.index(name) for name in row_names]
        matrix = matrix[:, order]
    return matrix, row_names


def match_classes(scores: ScoreMatrix, classes: Sequence[str], source: str) -> ScoreMatrix:
    """Reorder (and restrict) S to the dataset's class order, by name."""
    missing = [c for c in classes if c not in scores.classes]
    require(
        not missing,
        f"{source}: no scores for dataset class(es) {missing}; the table has {scores.classes}",
    )
    index = torch.tensor([scores.classes.index(c) for c in classes])
    return ScoreMatrix(scores.matrix[index][:, index], classes)


def diagonal_warnings(scores: ScoreMatrix) -> list[str]:
    """One message per row whose maximum is not on the diagonal, and per row with no spread."""
    messages = []
    for i, name in enumerate(scores.classes):
        row = scores.matrix[i]
        if row.max() == row.min():
            messages.append(f"true class '{name}': all scores equal, so this row carries no training signal")
        elif row[i] < row.max():
            winner = scores.classes[int(row.argmax())]
            messages.append(
                f"true class '{name}': the row maximum is on '{winner}', not the diagonal; "
                f"the linear expected-score loss will learn to answer '{winner}'"
            )
    return messages


def load_scores(
    name: str,
    classes: Sequence[str],
    path: str | None = None,
    exact: float = 2.0,
    near: float = 1.0,
    far: float = -1.0,
    warn: bool = True,
) -> ScoreMatrix:
    """Build S for `classes` from a built-in name or a CSV file (name='file'), validated and reordered."""
    if name == "file":
        require(path is not None and str(path) != "", "scores=file needs scores.path=FILE.csv")
        matrix, names = read_score_csv(path)
        source = f"score file {path}"
        if names is None:
            require(
                matrix.shape[0] == len(classes),
                f"{source}: {matrix.shape[0]}x{matrix.shape[0]} matrix but the dataset has {len(classes)} classes",
            )
            names = list(classes)
        scores = ScoreMatrix(matrix, names)
    else:
        for key, value in (("exact", exact), ("near", near), ("far", far)):
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"scores.{key} must be a number, not {value!r}",
            )
            check_score_value(float(value), f"scores.{key}")
        scores = builtin_scores(name, classes, exact, near, far)
        source = f"score table {name}"
        require(bool(torch.isfinite(scores.matrix).all()), f"{source}: scores.exact/near/far overflow float32 in S")
    scores = match_classes(scores, classes, source)
    if warn:
        for message in diagonal_warnings(scores):
            warnings.warn(f"{source}: {message}", stacklevel=2)
    return scores


def normalise_scores(matrix: torch.Tensor) -> torch.Tensor:
    """Ŝ[i,j] = (S[i,j] - min_j S[i,j]) / max_i (max_j S[i,j] - min_j S[i,j]).

    Each row is shifted by its own minimum, which leaves the expected-score objective (and its argmax) unchanged,
    and the whole table is divided by ONE global span: scaling rows separately would re-weight classes, a choice
    that belongs to the user's table, not to us. Ŝ lies in [0, 1]; an all-constant table becomes zeros."""
    shifted = matrix - matrix.min(dim=1, keepdim=True).values
    span = shifted.max()
    return shifted / span if span > 0 else torch.zeros_like(matrix)


def build_scores(cfg: DictConfig, classes: Sequence[str], warn: bool = True) -> ScoreMatrix:
    """S for `classes` from a `scores` config node (its `_target_`, load_scores for the shipped options)."""
    if cfg.get("name") == "file":
        require(not OmegaConf.is_missing(cfg, "path"), "scores=file needs scores.path=FILE.csv")
    scores = build(cfg, "scores", classes=list(classes), warn=warn)
    require(
        isinstance(scores, ScoreMatrix), f"scores._target_={cfg._target_} must build a lossbench.scores.ScoreMatrix"
    )
    return scores
