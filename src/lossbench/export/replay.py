"""What an export replays: a comparison's runs as they are on disk (finished or partial), read through the report's
readers, each with a key that names it the same way on every export (its folder relative to the comparison)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lossbench.errors import LossbenchError
from lossbench.report import FIGURES, load_runs, run_config
from lossbench.rundir import (
    COMPARE_FILE,
    CONFIG_FILE,
    CONFUSION_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    PROVENANCE_FILE,
    read_record,
)

# What `lossbench report` writes into a comparison (its sweep_*.png are found by name)
REPORT_FILES = ["summary.md", "summary.csv", "curves.csv", "report.html", *FIGURES]
# A run's records as artifacts, less status.json (a tag): a folder holding a config.yaml and a status.json counts
# as a run, so a store inside the comparison (the default) must not hold both in one folder.
RUN_FILES = [CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE, CONFUSION_FILE]
METRICS = [c for c in METRIC_COLUMNS if c != "epoch"]
# hparams for TensorBoard's table: what tells a comparison's runs apart (the rest is alike across them)
NAMING_KEYS = ("loss.name", "seed")


@dataclass
class Run:
    key: str  # the run's folder relative to the comparison: the stable id an export updates
    status: str
    complete: bool  # finished with every configured epoch's row, as the report counts it; else partial
    epochs: int | None  # configured; None when its config does not say
    config: dict[str, object]  # flattened config.yaml
    hparams: dict[str, object]  # loss, seed, swept keys and the loss's own parameters
    rows: pd.DataFrame  # epoch and the metrics, one row per epoch on disk
    files: list[Path]  # the run's own records, for artifacts

    def scalars(self) -> list[tuple[int, str, float]]:
        """(epoch, metric, value) for every finite value on disk; NaN (a metric this run has no data for, such as
        val_ without a validation split) is left out rather than drawn as a gap."""
        return [
            (int(row["epoch"]), name, float(row[name]))
            for _, row in self.rows.iterrows()
            for name in METRICS
            if not math.isnan(row[name])
        ]

    def note(self) -> str:
        """What was exported, for the line that says a run is partial."""
        epochs = list(self.rows["epoch"].astype(int))
        held = f"epochs {epochs[0]}-{epochs[-1]}" if epochs else "no epoch"
        of = f" of {self.epochs}" if self.epochs is not None else ""
        return f"{self.key}: {self.status}; exported {held}{of} as they are on disk (partial)"


@dataclass
class Comparison:
    root: Path  # resolved: names the comparison in every export
    runs: list[Run]
    overrides: list[str]  # compare.json's args (empty for a plain directory of runs)
    report_files: list[Path]
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name


def read_comparison(directory: Path) -> Comparison:
    """Every readable run below directory (the report's own reading: the same runs, rows and warnings)."""
    root = Path(directory).resolve()
    found = load_runs(root)
    swept = found.swept
    runs = []
    for _, row in found.runs.iterrows():
        run_dir = Path(row["run_dir"])
        config, _ = run_config(run_dir)  # readable: load_runs kept it
        epochs = config.get("train.epochs")
        rows = found.curves[found.curves["run_dir"] == row["run_dir"]][["epoch", *METRICS]].reset_index(drop=True)
        runs.append(
            Run(
                key=run_key(root, run_dir),
                status=row["status"],
                complete=bool(row["complete"]),
                epochs=int(epochs) if isinstance(epochs, int) else None,
                config=config,
                hparams=hparams(config, swept),
                rows=rows,
                files=[run_dir / name for name in RUN_FILES if (run_dir / name).is_file()],
            )
        )
    report = [root / name for name in REPORT_FILES if (root / name).is_file()] + sorted(root.glob("sweep_*.png"))
    return Comparison(root, runs, recorded_overrides(root, found.warnings), report, found.warnings)


def recorded_overrides(root: Path, warnings: list[str]) -> list[str]:
    """compare.json's args; none for a plain directory of runs, or (with a warning) a damaged record."""
    if not (root / COMPARE_FILE).is_file():
        return []
    try:
        return read_record(root)["args"]
    except LossbenchError as err:
        warnings.append(f"{err}; exported without the comparison's overrides")
        return []


def run_key(root: Path, run_dir: Path) -> str:
    return run_dir.name if run_dir == root else run_dir.relative_to(root).as_posix()


def hparams(config: dict[str, object], swept: list[str]) -> dict[str, object]:
    """The settings that tell runs apart, as TensorBoard's hparams take them (bool, number or text)."""
    keys = [*NAMING_KEYS, *swept, *(k for k in config if k.startswith("loss.") and not k.startswith("loss._"))]
    chosen = {k: config.get(k) for k in dict.fromkeys(keys)}  # in that order, each once
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in chosen.items()}
