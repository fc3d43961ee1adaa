"""`lossbench rescore DIR --scores OTHER.csv [--out NEW]`: what if my table changes?

Every finished run under DIR that saved predictions.npz is re-decided (argmax, Bayes, calibrated Bayes) and
re-scored under OTHER.csv without training: NEW gets one run directory per such run, holding its config (with
the scores node naming OTHER.csv), status, provenance, test confusion, its predictions (scored on the new table,
remembering the one it was trained with), a rescore.json naming where it came from, and a metrics.csv whose
table-independent columns (losses, accuracies, NLL, ECE, gradients, time) are the run's own and whose score
columns hold the new table's values at the final epoch only (a curve cannot be rescored from final
predictions). Then NEW gets its report, which says which runs were trained with another table.

Nothing in a run directory is instantiated or executed: the config is read as data and copied, the rest comes
from predictions.npz and the CSV.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from lossbench.atomic import atomic_path, savez_atomic, write_atomic
from lossbench.errors import one_line, require
from lossbench.predictions import PREDICTIONS_FILE, RULES, Predictions, read_predictions, rule_metrics
from lossbench.report import RESCORE_FILE
from lossbench.rundir import (
    CONFIG_FILE,
    CONFUSION_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    STATUS_FILE,
    TUNED_FILE,
    claim,
    find_runs,
    locked,
    read_status,
    write_config,
)
from lossbench.scores import load_scores

SCORE_COLUMNS = ["score", "score_bayes", "score_bayes_cal", "expected_score", "mistake_severity"]  # per split


def split_scores(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, temperature: float) -> dict[str, float]:
    """A split's table-dependent metrics under `scores`, as metrics.csv names them (without the split prefix)."""
    values = {}
    for rule, (_, column) in RULES.items():
        values[column] = rule_metrics(probs, labels, scores, rule, temperature)["score"]
    values["expected_score"] = float((scores[labels] * probs.astype(np.float64)).sum(-1).mean())
    values["mistake_severity"] = rule_metrics(probs, labels, scores, "argmax")["mistake_severity"]
    return values


def rescored_metrics(path: Path, found: Predictions, scores: np.ndarray) -> str:
    """The run's metrics.csv with every score column blanked and the final row's rescored."""
    table = pd.read_csv(path)
    for split in ("val", "test"):
        columns = [f"{split}_{c}" for c in SCORE_COLUMNS if f"{split}_{c}" in table]
        table[columns] = math.nan
    last = table.index[-1]
    splits = {"test": (found.test_probs, found.test_labels)}
    if found.val_probs is not None:
        splits["val"] = (found.val_probs, found.val_labels)
    for split, (probs, labels) in splits.items():
        for column, value in split_scores(probs, labels, scores, found.temperature).items():
            table.loc[last, f"{split}_{column}"] = value
    return table.to_csv(index=False)


def rescore_run(run_dir: Path, new_dir: Path, found: Predictions, scores: np.ndarray, csv_path: Path) -> None:
    claim(new_dir, "run")
    config = OmegaConf.load(run_dir / CONFIG_FILE)  # read as data only; nothing in it is instantiated
    trained_with = OmegaConf.to_container(config.get("scores", {}), resolve=False)
    config.scores = {"_target_": "lossbench.scores.load_scores", "name": "file", "path": str(csv_path)}
    write_config(new_dir, config)
    for name in (STATUS_FILE, PROVENANCE_FILE, CONFUSION_FILE):
        if (run_dir / name).exists():
            with atomic_path(new_dir / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    write_atomic(new_dir / METRICS_FILE, rescored_metrics(run_dir / METRICS_FILE, found, scores))
    arrays = {
        "test_probs": found.test_probs.astype(np.float16),
        "test_labels": found.test_labels,
        "temperature": np.float32(found.temperature),
        "classes": np.array(found.classes),
        "scores": scores.astype(np.float32),
        "trained_scores": found.trained_scores.astype(np.float32),
    }
    if found.val_probs is not None:
        arrays.update(val_probs=found.val_probs.astype(np.float16), val_labels=found.val_labels)
    savez_atomic(new_dir / PREDICTIONS_FILE, arrays)
    record = {
        "source": str(run_dir.resolve()),
        "scores_path": str(csv_path),
        "trained_with": trained_with,
        "trained_with_other_table": found.trained_scores.shape != scores.shape
        or not np.array_equal(found.trained_scores.astype(np.float32), scores.astype(np.float32)),
    }
    write_atomic(new_dir / RESCORE_FILE, json.dumps(record, indent=2, default=str) + "\n")


def rescore(directory: str, scores_path: str, out: str | None = None) -> int:
    """Rescore every finished run under `directory` that has predictions.npz, into `out`, and report there."""
    from lossbench.launch import report_comparison  # launch imports the report; so does this module

    source = Path(directory)
    require(source.is_dir(), f"{source}: directory not found")
    csv_path = Path(scores_path).expanduser().resolve()
    require(csv_path.is_file(), f"--scores {scores_path}: no such file")
    target = Path(out) if out else source.parent / f"{source.name}_rescored_{csv_path.stem}"
    require(target.resolve() != source.resolve(), f"--out {target}: must differ from {source}")
    runs = find_runs(source)
    require(runs, f"{source}: no run directories found")
    usable, skipped = [], []
    for run_dir in runs:
        if read_status(run_dir)["status"] != "finished":
            skipped.append(f"{run_dir}: not finished")
            continue
        found, warning = read_predictions(run_dir)
        if found is None:
            skipped.append(warning or f"{run_dir}: no {PREDICTIONS_FILE} (made by an older lossbench)")
            continue
        usable.append((run_dir, found))
    require(
        usable,
        f"{source}: no finished run has {PREDICTIONS_FILE}, which rescoring needs (runs of an older "
        "lossbench have none: train them again); " + "; ".join(skipped[:3]),
    )
    claim(target, "comparison")
    with locked(target):
        require(not find_runs(target), f"--out {target}: already holds runs; choose another --out")
        tables: dict[tuple[str, ...], np.ndarray] = {}
        for run_dir, found in usable:
            key = tuple(found.classes)
            if key not in tables:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    table = load_scores("file", found.classes, str(csv_path))
                for w in caught:
                    print(f"warning: {w.message}", file=sys.stderr)
                tables[key] = table.matrix.double().numpy()
            relative = run_dir.relative_to(source)
            rescore_run(run_dir, target / (relative if relative.parts else run_dir.name), found, tables[key], csv_path)
        if (source / TUNED_FILE).exists():
            write_atomic(target / TUNED_FILE, (source / TUNED_FILE).read_text(encoding="utf-8"))
        for line in skipped:
            print(f"skipped {one_line(line)}", file=sys.stderr)
        print(f"rescored {len(usable)} run(s) of {source} under {csv_path} into {target}")
        return report_comparison(target, partial_ok=True)
