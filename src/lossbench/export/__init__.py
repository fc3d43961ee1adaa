"""`lossbench export DIR --to tensorboard|mlflow`: replay a comparison's runs, finished or partial, from disk into
one tracking writer (replay.py reads them; one module per writer). Each writer's library is an optional extra,
imported only here, so that the rest of lossbench never needs it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from lossbench.errors import EnvironmentFailure, require
from lossbench.export.replay import read_comparison
from lossbench.rundir import locked

LIBRARIES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # --to -> the library it writes with (its extra)


def export(directory: str, to: str, out: str | None = None) -> int:
    """Export into `out` (default DIR/<to>): a TensorBoard log directory, or the folder of an MLflow store."""
    require(to in LIBRARIES, f"--to must be one of {', '.join(LIBRARIES)}, not {to!r}")
    root = Path(directory)
    require(root.is_dir(), f"{root}: directory not found")
    writer = backend(to)
    comparison = read_comparison(root)
    partial = [run for run in comparison.runs if not run.complete]
    noted = tuple(f"{comparison.root / run.key}: " for run in partial)
    for warning in comparison.warnings:  # the report's reading notes; a partial run's own is said below
        if not warning.startswith(noted):
            print(f"warning: {warning}", file=sys.stderr)
    for run in partial:
        print(f"warning: {run.note()}", file=sys.stderr)
    target = Path(out) if out is not None else root / to
    # Two exports into one place would race on its files (MLflow's store migrates its schema on first use): the
    # second is refused. The lock file lies beside the target, which must stay new or empty until the writer checks.
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent, f".{target.name}.export.lock", what=target):
        writer.write(comparison, target)
    print(
        f"exported {len(comparison.runs)} run(s) of {comparison.root} to {target}; to look at them: "
        f"{writer.ui_command(target)}"
    )
    return 0


def backend(to: str):
    """The writer module for `to`, or one line saying which extra to install."""
    library = LIBRARIES[to]
    try:
        importlib.import_module(library)
    except ImportError:
        raise EnvironmentFailure(
            f"--to {to} needs {library}, which is not installed: pip install 'lossbench[{to}]'"
        ) from None
    return importlib.import_module(f"lossbench.export.to_{to}")
