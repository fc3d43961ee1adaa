"""Reports built only from run directories on disk, so they can be rebuilt at any time, over partial, remote or
damaged results: curves.csv, summary.csv, summary.md, report.html and PNG figures. Every file is written
atomically.

summary.md opens with the verdict (verdict.py: the best loss x decision rule, what cannot be told from it, the
advice) and a compact table; the details follow. Verdicts come from statistics, never from means alone: per
setting (loss x swept parameters) the mean, sample SD, 95% t-interval half-width and n over seeds; per loss a
comparison with ce paired by seed, Holm-corrected over all of the comparison's tests against ce, and for the
scores an equivalence test at report.margin ("tied" comes only from it). Where runs saved predictions.npz, a
bootstrap interval over test examples stands beside the interval over seeds. Targets: a test score that does not
move when a loss is added (the user's `report.target_score`, else ce's final mean) and, as before, an accuracy
target. A loss's setting and decision rule are chosen on validation metrics only; test is reported."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lossbench import html, plots, stats
from lossbench import verdict as verdicts
from lossbench.atomic import write_atomic
from lossbench.errors import LossbenchError, one_line, require
from lossbench.inputs import input_warnings
from lossbench.losses import LOSSES
from lossbench.metrics import epochs_to_target
from lossbench.predictions import Predictions, read_predictions
from lossbench.rundir import (
    CONFIG_FILE,
    CONFUSION_FILE,
    METRIC_COLUMNS,
    PROVENANCE_FILE,
    STATUS_FILE,
    TUNE_FILE,
    TUNED_FILE,
    own_runs,
    read_config,
    read_confusion,
    read_json,
    read_metrics,
    read_run_record,
    read_status,
    read_tune_record,
)
from lossbench.verdict import runs_of

REFERENCE = "ce"  # the paired comparisons and the default score target are against this loss
TARGET_FRACTION = 0.9  # target accuracy = this x the best mean (over seeds) accuracy of any setting
# "still rising": the slope of test_score over the last half of the evaluations, at least this many. A fixed
# short window called a slow climb "flat" at a constant learning rate, where epoch-to-epoch noise is larger than
# a few epochs' gain.
SLOPE_WINDOW = 5
FINAL_METRICS = [
    "test_acc",
    "test_score",
    "test_score_bayes",
    "test_score_bayes_cal",
    "test_expected_score",
    "test_mistake_severity",
    "test_ece",
    "test_top5_acc",
    "val_acc",
    "val_score",
    "val_score_bayes",
    "val_score_bayes_cal",
]

CURVES_FILE = "curves.csv"  # the report's long table: one row per run and epoch


def read_curves(directory: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A comparison's curves.csv, for the scripts that analyse it: each of `columns` present, every one after the
    first a number (or empty), else one LossbenchError naming the file, the column and the value."""
    path = directory / CURVES_FILE
    require(path.is_file(), f"{path}: not found (run `lossbench report {directory}` first)")
    curves = pd.read_csv(path)
    missing = [c for c in columns if c not in curves.columns]
    require(not missing, f"{path}: no column {', '.join(missing)}")
    for column in columns[1:]:
        numbers = pd.to_numeric(curves[column], errors="coerce")
        bad = curves[column][numbers.isna() & curves[column].notna()]
        if not bad.empty:
            raise LossbenchError(f"{path}: {column} holds {bad.iloc[0]!r}, not a number")
        curves[column] = numbers
    return curves


# ---------------------------------------------------------------- column names
# Every column name of the per-run measures and of the per-setting table (summary.csv) is made here.


def final(metric: str) -> str:
    """The measure of a metrics.csv column's value at a run's last evaluation."""
    return f"final_{metric}"


def auc(metric: str) -> str:
    """The measure of a metrics.csv column's mean over a run's evaluations (complete_mean)."""
    return f"auc_{metric}"


def to_target(unit: str, target: str) -> str:
    """The measure of the epochs or seconds (`unit`) until the score or acc `target` is first reached."""
    return f"{unit}_to_target_{target}"


def column(measure: str, part: str) -> str:
    """The per-setting table's column of a measure's `part`: a summary over seeds (STATS), the paired comparison
    with the reference (PAIRED), its Holm-adjusted p_holm, equivalence_p and equivalence_p_holm."""
    return f"{measure}_{part}"


BEST_TEST_ACC = "best_test_acc"  # for the accuracy target
AUC_METRICS = ("test_acc", "test_score", "test_score_bayes", "test_score_bayes_cal")
RUN_MEASURES = [*map(final, FINAL_METRICS), BEST_TEST_ACC, *map(auc, AUC_METRICS)]  # run_measures'
TARGETS = {"score": "test_score", "acc": "test_acc"}  # target -> the metrics.csv column that reaches it
TARGET_MEASURES = [to_target(unit, target) for target in TARGETS for unit in ("epochs", "seconds")]
STATS = ("mean", "sd", "ci95", "n")  # describe_settings' columns of each measure
PAIRED = ("diff", "diff_ci95", "p_value", "pairs")  # compare_with_reference's, per headline measure
# headline measure -> (markdown heading, digits, words for a positive / negative difference with ce)
HEADLINE = {
    final("test_acc"): ("final test_acc", 3, ("higher", "lower")),
    final("test_score"): ("final test_score", 3, ("higher", "lower")),
    final("test_score_bayes"): ("test_score, Bayes decision", 3, ("higher", "lower")),
    final("test_score_bayes_cal"): ("test_score, calibrated Bayes", 3, ("higher", "lower")),
    final("test_expected_score"): ("test_expected_score", 3, ("higher", "lower")),
    final("test_mistake_severity"): ("mistake severity", 3, ("higher", "lower")),
    final("test_ece"): ("ECE", 3, ("higher", "lower")),
    auc("test_acc"): ("AUC test_acc", 3, ("higher", "lower")),
    auc("test_score"): ("AUC test_score", 3, ("higher", "lower")),
    to_target("epochs", "score"): ("epochs to score target", 1, ("slower", "faster")),
    to_target("seconds", "score"): ("seconds to score target", 1, ("slower", "faster")),
    to_target("epochs", "acc"): ("epochs to accuracy target", 1, ("slower", "faster")),
}
SCORE_MEASURES = (final("test_score"), final("test_score_bayes"), final("test_score_bayes_cal"), auc("test_score"))
# data.train_subset_seed follows the seed (one training subset per seed): not a setting of its own
IGNORED_KEYS = {"seed", "resume", "seeds", "losses", "name", "data.train_subset_seed"}
RESCORE_FILE = "rescore.json"  # written by `lossbench rescore` into each rescored run
IGNORED_PREFIXES = ("report.",)  # report settings are not part of a run's setting


@dataclass
class Report:
    curves: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    warnings: list[str] = field(default_factory=list)
    verdict: verdicts.Verdict | None = None
    console: str = ""  # what compare and tune print at the end: the verdict, then the compact table


@dataclass
class Runs:
    runs: pd.DataFrame  # one row per readable run: loss, seed, swept parameters, status, run_dir, provenance
    curves: pd.DataFrame  # every run's usable metrics rows, with the run's columns in front
    swept: list[str]
    warnings: list[str]


def tuned_note(root: Path) -> str:
    """The settings `lossbench tune` chose (its tuned.md), for the end of summary.md; empty for a comparison."""
    path = Path(root) / TUNED_FILE
    return "\n" + path.read_text() if path.exists() else ""


def tuning_trials(root: Path, warnings: list[str]) -> pd.DataFrame | None:
    """Every trial in `lossbench tune`'s tune.json, one row each (loss, lr, the loss's searched parameter, its
    value and whether it was searched log-uniformly, objective, chosen), for tuning.png; None for a comparison,
    or (with a warning) a damaged file."""
    path = Path(root) / TUNE_FILE
    if not path.exists():
        return None
    try:
        record = read_tune_record(path)
        rows = []
        for loss, entry in record["losses"].items():
            chosen = (entry.get("chosen") or {}).get("trial")
            for trial in entry["trials"]:
                setting = dict(trial["setting"])
                lr = float(setting.pop("optim.lr"))
                param, value = next(iter(setting.items()), (None, math.nan))
                log = bool(entry["space"][param]["log"]) if param else False
                rows.append(
                    {
                        "loss": loss,
                        "lr": lr,
                        "param": param,
                        "value": float(value),
                        "log": log,
                        "val_score": float("nan") if trial["val_score"] is None else float(trial["val_score"]),
                        "chosen": trial["trial"] == chosen,
                    }
                )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.append(f"{path}: unreadable ({one_line(err)}); no tuning.png")
        return None
    return pd.DataFrame(rows) if rows else None


@dataclass
class Targets:
    score: float
    score_source: str  # how the score target was chosen, for summary.md
    acc: float


# ---------------------------------------------------------------- reading run directories


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def run_config(run_dir: Path) -> tuple[dict[str, object] | None, str | None]:
    """(flattened config, None), or (None, a warning naming the file) when it is unreadable or names no loss."""
    try:
        flat = flatten(OmegaConf.to_container(read_config(run_dir)))
        require(isinstance(flat.get("loss.name"), str), f"{run_dir / CONFIG_FILE}: names no loss.name")
    except (LossbenchError, OSError) as err:  # this one run is unusable; the others still make a report
        return None, f"{one_line(err)}; run skipped"
    return flat, None


def read_provenance(run_dir: Path, config: dict[str, object]) -> tuple[tuple[str, str, str], str | None]:
    """(device, precision, training) the run used, from run.json; else as requested in config.yaml; else unknown.
    training: "alone", or "packed" when it trained in a packed network with other runs (hydra/launcher=packed).
    With them, a warning naming a damaged run.json (runs of older versions have none: no warning)."""
    path = run_dir / PROVENANCE_FILE
    try:
        info = read_run_record(run_dir)
        pack = info.get("pack", 1)
        training = "packed" if isinstance(pack, int) and pack > 1 else "alone"
        return (str(info.get("device", "unknown")), str(info.get("precision", "unknown")), training), None
    except FileNotFoundError:
        warning = None
    except (OSError, ValueError, AttributeError) as err:
        warning = f"{path}: unreadable ({one_line(err)}); its device and precision are shown as requested"
    device, precision = config.get("device"), config.get("precision")
    return (
        f"{device} (requested)" if device else "unknown",
        f"{precision} (requested)" if precision else "unknown",
        "alone",
    ), warning


def is_setting_key(key: str) -> bool:
    return key not in IGNORED_KEYS | {"loss.name"} and not key.startswith(IGNORED_PREFIXES)


def load_runs(root: Path) -> Runs:
    """Every readable run below root, its usable metrics, and the swept parameters.

    A parameter counts as swept when it takes more than one value among the runs of one loss (so loss.tau is
    not swept just because only soft_label_ce has it, but optim.lr=0.01,0.1 is). A run whose config.yaml is
    unreadable is skipped, a damaged metrics.csv contributes its usable rows: both with a warning."""
    run_dirs, left_out = own_runs(root)
    require(
        run_dirs,
        f"{root}: no run directories found (directories with {STATUS_FILE} and {CONFIG_FILE})"
        + "".join(f"; {note}" for note in left_out),
    )
    warnings, configs, kept = list(left_out), [], []
    for run_dir in run_dirs:
        config, warning = run_config(run_dir)
        if config is None:
            warnings.append(warning)
            continue
        configs.append(config)
        kept.append(run_dir)
    require(kept, f"{root}: no run directory has a readable {CONFIG_FILE}: " + "; ".join(warnings))
    table = pd.DataFrame(configs)
    candidates = [k for k in table.columns if is_setting_key(k)]
    by_loss = table.astype({k: str for k in candidates}).groupby("loss.name")
    swept = [k for k in candidates if (by_loss[k].nunique() > 1).any()]
    runs = table[["loss.name", "seed", *swept]].rename(columns={"loss.name": "loss"})
    runs["status"] = [read_status(d)["status"] for d in kept]
    runs["run_dir"] = [str(d) for d in kept]
    runs["target_score_setting"] = table["report.target_score"] if "report.target_score" in table else None
    runs["margin_setting"] = table["report.margin"] if "report.margin" in table else None
    runs["epochs_configured"] = table["train.epochs"] if "train.epochs" in table else None
    runs, kept, configs = without_duplicates(runs, kept, configs, swept, warnings)
    warnings += input_warnings(kept)  # the pinned data and tables: one of each, unchanged since
    provenance = []
    for run_dir, config in zip(kept, configs):
        used, warning = read_provenance(run_dir, config)
        provenance.append(used)
        warnings += [warning] if warning else []
    runs["device"], runs["precision"], runs["training"] = ([p[i] for p in provenance] for i in range(3))
    packed = int((runs["training"] == "packed").sum())
    if packed:
        warnings.append(
            f"{packed} run(s) trained packed with others (hydra/launcher=packed): their seconds to a "
            "target share their pack's training time, so they compare epochs, not what each loss "
            "costs"
        )
    frames = []
    for _, run in runs.iterrows():
        rows, warning = read_metrics(Path(run["run_dir"]))
        if warning:
            warnings.append(warning)
        if len(rows):
            frames.append(rows.assign(**run[["loss", "seed", *swept, "status", "run_dir"]].to_dict()))
    front = ["loss", "seed", *swept, "status", "run_dir"]
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    runs["complete"] = complete_runs(runs, curves, warnings)
    return Runs(runs, curves.reindex(columns=[*front, *METRIC_COLUMNS]), swept, warnings)


def complete_runs(runs: pd.DataFrame, curves: pd.DataFrame, warnings: list[str]) -> list[bool]:
    """Per run, whether it counts as final: finished, with the rows of every configured epoch (when its config
    says how many). Curves show the others; their values never enter the final means, the paired verdicts or the
    times to a target, and each one that stopped short (not a diverged run: its status says why) is named."""
    epochs_of = (
        {d: list(c["epoch"].astype(int)) for d, c in curves.groupby("run_dir", sort=False)}
        if "run_dir" in curves
        else {}
    )
    complete = []
    for _, run in runs.iterrows():
        rows, epochs = epochs_of.get(run["run_dir"], []), run.get("epochs_configured")
        epochs = int(epochs) if isinstance(epochs, (int, float)) and pd.notna(epochs) else None
        whole = epochs is None or rows == list(range(1, epochs + 1))
        complete.append(run["status"] == "finished" and whole)
        last = f"after epoch {rows[-1]}" if rows else "before its first epoch"
        of = f" of {epochs}" if epochs is not None else ""
        if run["status"] == "finished" and not whole:
            warnings.append(
                f"{run['run_dir']}: status finished, but its metrics.csv holds "
                f"{len(rows)} of {epochs} epochs' rows; left out of the final values"
            )
        elif run["status"] not in ("finished", "diverged"):
            warnings.append(
                f"{run['run_dir']}: {run['status']} {last}{of}; left out of the final values (`lossbench "
                f"resume {run['run_dir']}` finishes it)"
            )
    return complete


def without_duplicates(
    runs: pd.DataFrame, kept: list[Path], configs: list[dict], swept: list[str], warnings: list[str]
) -> tuple[pd.DataFrame, list[Path], list[dict]]:
    """The runs with one run per loss, seed and setting: a second one (a copied run directory whose marker does not
    tell, an older comparison's) is left out with a warning naming it, instead of pairing a seed with itself."""
    keys = runs[["loss", "seed", *swept]].astype(str).apply(tuple, axis=1)
    first: dict[tuple, str] = {}
    keep = []
    for key, run_dir in zip(keys, runs["run_dir"]):
        keep.append(key not in first)
        if key in first:
            warnings.append(f"{run_dir}: the same loss, seed and setting as {first[key]}; left out")
        first.setdefault(key, run_dir)
    return (
        runs[keep].reset_index(drop=True),
        [d for d, k in zip(kept, keep) if k],
        [c for c, k in zip(configs, keep) if k],
    )


# ---------------------------------------------------------------- per run, per setting, per loss


def setting_label(loss: str, params: dict[str, object]) -> str:
    return " ".join([loss, *(f"{k}={v}" for k, v in params.items())])


def run_measures(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per run: the final value of each metric, the best test accuracy (for the accuracy target) and the AUCs
    (the mean of test_acc and test_score over the evaluated epochs). Runs without rows get NaN."""
    runs = runs.copy()
    by_run = final_curves(runs, curves)
    curve_of = [by_run.get(d, curves.iloc[:0]) for d in runs["run_dir"]]
    for metric in FINAL_METRICS:
        runs[final(metric)] = [c[metric].iloc[-1] if len(c) else math.nan for c in curve_of]
    runs[BEST_TEST_ACC] = [c["test_acc"].max() if len(c) else math.nan for c in curve_of]
    for metric in AUC_METRICS:
        runs[auc(metric)] = [complete_mean(c, metric) for c in curve_of]
    return runs


def final_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The curves of the runs that count as final (complete_runs), by run directory."""
    final = set(runs["run_dir"][runs["complete"]]) if "complete" in runs else set(runs["run_dir"])
    return {d: c for d, c in curves.groupby("run_dir", sort=False) if d in final} if "run_dir" in curves else {}


def complete_mean(curve: pd.DataFrame, column: str) -> float:
    """The AUC of `column`: its mean over every evaluated epoch; NaN when any evaluation lacks it (a rescored run
    has the new table's scores at its final epoch only, an older run no such column)."""
    values = curve[column] if column in curve else pd.Series(dtype=float)
    return float(values.mean()) if len(values) and values.notna().all() else math.nan


def add_times_to_targets(runs: pd.DataFrame, curves: pd.DataFrame, targets: Targets) -> pd.DataFrame:
    """Per run: epochs and seconds until test_score (test_acc) first reaches the score (accuracy) target."""
    runs = runs.copy()
    by_run = final_curves(runs, curves)
    for kind, metric in TARGETS.items():
        target = targets.score if kind == "score" else targets.acc
        # a curve with gaps (a rescored run's scores exist at its last epoch only) cannot say when it got there
        hits = [
            epochs_to_target(by_run[d], target, metric)
            if d in by_run and by_run[d][metric].notna().all()
            else (math.nan, math.nan)
            for d in runs["run_dir"]
        ]
        runs[to_target("epochs", kind)] = [h[0] for h in hits]
        runs[to_target("seconds", kind)] = [h[1] for h in hits]
    return runs


def describe_settings(runs: pd.DataFrame, swept: list[str], measures: list[str]) -> pd.DataFrame:
    """One row per setting: runs, status, and mean / sample SD / 95% CI half-width / n over seeds of each of
    `measures` (n counts the runs with a value: a run that never reached a target has none)."""
    keys = ["loss", *swept]
    rows = []
    for setting, group in runs.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, setting if isinstance(setting, tuple) else (setting,)))
        row["runs"] = len(group)
        row["status"] = ", ".join(f"{n} {s}" for s, n in group["status"].value_counts().items())
        for measure in measures:
            summary = stats.summarise(group[measure].dropna().to_numpy(float))
            row.update(
                zip((column(measure, part) for part in STATS), (summary.mean, summary.sd, summary.ci95, summary.n))
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(LOSSES)}
    return table.sort_values(by="loss", key=lambda s: s.map(lambda n: order.get(n, len(order))), kind="stable")


def with_target_measures(table: pd.DataFrame, runs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """The per-setting table with the TARGET_MEASURES' columns added, once the runs have them (the targets
    themselves come from the table without them)."""
    added = describe_settings(runs, swept, TARGET_MEASURES)
    return pd.concat([table, added[[column(m, part) for m in TARGET_MEASURES for part in STATS]]], axis=1)


def selection_measure(runs: pd.DataFrame) -> str:
    """Settings are chosen on the final validation score; only runs from before the validation split (no
    val_score) fall back to the test score, which summary.md then says."""
    return final("val_score") if runs[final("val_score")].notna().any() else final("test_score")


def select_settings(table: pd.DataFrame, swept: list[str], measure: str) -> pd.Index:
    """The table's rows (index labels) of each loss at the setting of the swept parameters with the best mean
    `measure` (a loss whose settings all lack it keeps its first). The table's later columns never change the
    choice: its rows keep their labels, so the labels select the same settings from any later table."""
    if not swept:
        return table.index
    mean = column(measure, "mean")
    return pd.Index(
        [
            group[mean].idxmax() if group[mean].notna().any() else group.index[0]
            for _, group in table.groupby("loss", sort=False)
        ]
    )


def choose_targets(
    runs: pd.DataFrame, chosen: pd.DataFrame, table: pd.DataFrame, target_score: float | None
) -> Targets:
    """The score target: `target_score` when given, else the runs' common report.target_score, else the
    reference loss's final mean test_score at its chosen setting (else the first registered loss present's):
    none of these move when a loss is added. The accuracy target keeps its old definition."""
    acc = TARGET_FRACTION * table[column(BEST_TEST_ACC, "mean")].max()
    if target_score is not None:
        require(math.isfinite(target_score), f"--target-score {target_score}: must be a finite number")
        return Targets(float(target_score), "set by --target-score", acc)
    settings = runs["target_score_setting"].dropna().unique()
    require(
        len(settings) <= 1,
        f"the runs disagree on report.target_score ({sorted(map(str, settings))}); "
        "choose one with `lossbench report DIR --target-score X`",
    )
    if len(settings) == 1:
        value = pd.to_numeric(settings[0], errors="coerce")
        require(pd.notna(value) and math.isfinite(value), f"report.target_score {settings[0]!r}: not a finite number")
        return Targets(float(value), "set by report.target_score", acc)
    reference = REFERENCE if REFERENCE in set(chosen["loss"]) else chosen["loss"].iloc[0]
    value = float(chosen.set_index("loss").loc[reference, column(final("test_score"), "mean")])
    source = f"{reference}'s final mean test_score" + (
        "" if reference == REFERENCE else f" ({REFERENCE} is not in this comparison; the first loss present is used)"
    )
    return Targets(value, source, acc)


def compare_with_reference(
    runs: pd.DataFrame,
    table: pd.DataFrame,
    chosen: pd.DataFrame,
    swept: list[str],
    margin: float = verdicts.DEFAULT_MARGIN,
) -> pd.DataFrame:
    """Per setting and headline measure: the difference from the reference loss at its chosen setting, paired by
    seed (`_diff`, its 95% CI half-width `_diff_ci95`, `_p_value`, `_pairs`), the p-value adjusted by Holm's
    method over every test against the reference in this comparison (`_p_holm`), and for the scores an
    equivalence test within +-margin (`_equivalence_p`, Holm-adjusted over its own family: `_equivalence_p_holm`).
    Seeds where either has no value (a target never reached) are left out of the pairs."""
    table = table.copy()
    if REFERENCE not in set(chosen["loss"]):
        return table
    reference = runs_of(runs, chosen[chosen["loss"] == REFERENCE].iloc[0], swept).set_index("seed")
    for index, setting in table.iterrows():
        if setting["loss"] == REFERENCE:
            continue
        own = runs_of(runs, setting, swept).set_index("seed")
        for measure in HEADLINE:
            pairs = pd.concat([own[measure], reference[measure]], axis=1, join="inner").dropna()
            a, b = pairs.iloc[:, 0].to_numpy(float), pairs.iloc[:, 1].to_numpy(float)
            result = stats.paired(a, b)
            table.loc[index, [column(measure, part) for part in PAIRED]] = [
                result.diff,
                result.ci95,
                result.p_value,
                result.n,
            ]
            if measure in SCORE_MEASURES:
                table.loc[index, column(measure, "equivalence_p")] = stats.equivalence(a, b, margin)
    for suffix, family in (("p_value", list(HEADLINE)), ("equivalence_p", list(SCORE_MEASURES))):
        cells = [(i, m) for i in table.index for m in family if column(m, suffix) in table]
        adjusted = stats.holm([table.loc[i, column(m, suffix)] for i, m in cells])
        target = "p_holm" if suffix == "p_value" else "equivalence_p_holm"
        columns: dict[str, dict] = {}
        for (i, m), value in zip(cells, adjusted):
            columns.setdefault(column(m, target), {})[i] = value
        table = pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)
    return table


def add_trends(table: pd.DataFrame, curves: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Per setting: the slope of the seeds' mean test_score per epoch over the last half of the evaluations (at
    least SLOPE_WINDOW) with its 95% CI; `score_trend` is rising / falling when the CI excludes 0, else flat."""
    table = table.copy()
    for index, setting in table.iterrows():
        rows = runs_of(curves, setting, swept)
        mean_curve = rows.groupby("epoch")["test_score"].mean().dropna()
        mean_curve = mean_curve.tail(max(SLOPE_WINDOW, len(mean_curve) // 2))
        if len(mean_curve) < 3:  # a line through two points has no interval
            table.loc[index, ["score_slope", "score_slope_ci95", "score_trend"]] = [math.nan, math.nan, "too short"]
            continue
        fit = stats.slope(mean_curve.index.to_numpy(float), mean_curve.to_numpy(float))
        low, high = fit.slope - fit.ci95, fit.slope + fit.ci95
        trend = "rising" if low > 0 else "falling" if high < 0 else "flat"
        table.loc[index, ["score_slope", "score_slope_ci95", "score_trend"]] = [fit.slope, fit.ci95, trend]
    table["still_rising"] = table["score_trend"] == "rising"
    return table


# ---------------------------------------------------------------- summary.md


def cell(row: pd.Series, measure: str, digits: int) -> str:
    """mean ± 95% CI half-width; with one value, the value and n (no ± for a spread that was never measured)."""
    mean, n = row.get(column(measure, "mean"), math.nan), row.get(column(measure, "n"), 0)
    if pd.isna(mean) or n == 0:
        return "not reached" if "target" in measure else "-"
    text = f"{mean:.{digits}f} ± {row[column(measure, 'ci95')]:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
    if "target" in measure and n < row["runs"]:
        return text + f" ({int(n)}/{row['runs']} runs)"
    return text if n > 1 else text + " (n=1)"


def shown_measures(table: pd.DataFrame) -> dict[str, tuple[str, int, tuple[str, str]]]:
    """The headline measures any setting has a value for (older runs lack the newer metrics)."""
    return {
        m: spec for m, spec in HEADLINE.items() if column(m, "mean") in table and table[column(m, "mean")].notna().any()
    }


def markdown_table(table: pd.DataFrame, swept: list[str]) -> str:
    measures = shown_measures(table)
    header = [
        "loss",
        *swept,
        "runs",
        "status",
        *(spec[0] for spec in measures.values()),
        "test_score trend (last half of the evals)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["loss"]), *(str(row[k]) for k in swept), str(row["runs"]), row["status"]]
        cells += [cell(row, measure, spec[1]) for measure, spec in measures.items()]
        slope = (
            "" if pd.isna(row["score_slope"]) else f" ({row['score_slope']:+.3f} ± {row['score_slope_ci95']:.3f}/epoch)"
        )
        cells.append(f"{row['score_trend']}{slope}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(row: pd.Series, measure: str, words: tuple[str, str], margin: float = math.nan) -> tuple[str, str]:
    """The paired comparison in words, and its numbers: a direction only where the Holm-adjusted p-value is below
    0.05; "tied" only where the equivalence test (scores only) shows the difference within +-margin; otherwise
    "no difference shown", which is not a tie."""
    pairs = row.get(column(measure, "pairs"), 0)
    pairs = 0 if pd.isna(pairs) else int(pairs)
    if "target" in measure and row.get(column(measure, "n"), 0) == 0:
        return "never reached", ""
    if pairs < 2:
        return "not tested", f"{pairs} paired seed{'' if pairs == 1 else 's'}"
    diff, half, p = (row[column(measure, part)] for part in ("diff", "diff_ci95", "p_value"))
    adjusted = row.get(column(measure, "p_holm"), p)
    equivalent = row.get(column(measure, "equivalence_p_holm"), math.nan)
    digits = HEADLINE[measure][1] + 1
    if adjusted < stats.ALPHA:
        word = words[0] if diff > 0 else words[1]
    elif pd.notna(equivalent) and equivalent < stats.ALPHA:
        word = f"tied within ±{margin:g}" if math.isfinite(margin) else "tied"
    else:
        word = "no difference shown"
    return word, f"{diff:+.{digits}f} ± {half:.{digits}f}, p = {p:.2g}, p_Holm = {adjusted:.2g}, {pairs} pairs"


def verdict_text(row: pd.Series, measure: str, margin: float = math.nan) -> str:
    word, numbers = verdict(row, measure, HEADLINE[measure][2], margin)
    return f"{word} ({numbers})" if numbers else word


TRENDS = {"rising": "still rising", "falling": "falling", "flat": "flat", "too short": "too few evaluations to tell"}


def comparison_section(chosen: pd.DataFrame, swept: list[str], margin: float = math.nan) -> list[str]:
    """The paired comparison with the reference loss: a table (rows: measures, columns: losses) and, for the
    two questions the tool exists for, one sentence per loss."""
    others = chosen[chosen["loss"] != REFERENCE]
    if REFERENCE not in set(chosen["loss"]) or others.empty:
        return [f"No paired comparison: the comparison has no {REFERENCE} runs or no other loss.", ""]
    if (others[column(final("test_score"), "pairs")].fillna(0) < 2).all():  # a table of "not tested" cells says nothing
        return [f"No paired comparison: no loss has 2 seeds paired with {REFERENCE}'s (run seeds=[0,1,2] or more).", ""]
    measures = shown_measures(chosen)
    labels = [setting_label(r["loss"], {k: r[k] for k in swept}) for _, r in others.iterrows()]
    lines = [
        f"Difference from {REFERENCE} (loss minus {REFERENCE}, each decided by the same rule), paired by seed: mean ± "
        "95% t-interval half-width, paired t-test p-value and p_Holm, the p-value adjusted by Holm's method over all "
        f"of this comparison's tests against {REFERENCE} (summary.csv: `*_p_value`, `*_p_holm`). A direction is "
        f'stated only where p_Holm < 0.05; "tied within ±{margin:g}" only where an equivalence test (two one-sided '
        't-tests, Holm-adjusted) shows it (scores only); "no difference shown" is not a tie.',
        "",
        "| measure | " + " | ".join(labels) + " |",
        "|" + "---|" * (len(labels) + 1),
    ]
    for measure, (heading, _, _) in measures.items():
        lines.append(
            f"| {heading} | " + " | ".join(verdict_text(r, measure, margin) for _, r in others.iterrows()) + " |"
        )
    lines.append("")
    for label, (_, row) in zip(labels, others.iterrows()):
        word, numbers = verdict(row, final("test_score"), HEADLINE[final("test_score")][2], margin)
        relation = "than" if word in ("higher", "lower") else "with" if word.startswith("tied") else "vs"
        score = f"{word} {relation} {REFERENCE}" + (f" ({numbers})" if numbers else "")
        lines.append(
            f"- **{label}**: final test_score {score}; epochs to the score target: "
            f"{verdict_text(row, to_target('epochs', 'score'), margin)}; test_score over the last half of the "
            f"evaluations: {TRENDS[row['score_trend']]}."
        )
    return lines + [""]


def provenance_line(runs: pd.DataFrame) -> str:
    def counted(column: str) -> str:
        return ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in runs[column].value_counts().items())

    line = f"Device: {counted('device')}. Precision: {counted('precision')}."
    return line + (f" Training: {counted('training')}." if (runs["training"] == "packed").any() else "")


def rescored_lines(runs: pd.DataFrame, predictions: dict[str, Predictions]) -> list[str]:
    """Which runs are scored on another table than the one they were trained with (lossbench rescore)."""
    other = [Path(d).name for d in runs["run_dir"] if d in predictions and predictions[d].rescored]
    if not other:
        return []
    shown = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
    note = next((Path(d) / RESCORE_FILE for d in runs["run_dir"] if (Path(d) / RESCORE_FILE).exists()), None)
    source = ""
    if note is not None:
        try:
            record = read_json(note)
            source = (
                f" They are scored on {record.get('scores_path', 'another table')}, rescored from the runs "
                f"of {Path(str(record.get('source'))).parent}."
            )
        except (OSError, ValueError, AttributeError):
            source = ""
    return [
        "## Rescored",
        "",
        f"{len(other)} of {len(runs)} runs were trained with another score table than the one they are scored "
        f"on here (`lossbench rescore`): {shown}.{source} Their final decisions and scores come from their saved "
        "predictions under this table; their curves hold this table's scores at the final epoch only, so "
        "their speed (AUC) and times to the score target are not known.",
        "",
    ]


def summary_markdown(
    runs: pd.DataFrame,
    table: pd.DataFrame,
    chosen: pd.DataFrame,
    swept: list[str],
    targets: Targets,
    selected_on: str,
    warnings: list[str],
    verdict: verdicts.Verdict | None = None,
    rescored: list[str] | None = None,
    margin: float = verdicts.DEFAULT_MARGIN,
) -> str:
    selection = (
        "validation score (final val_score)"
        if selected_on == final("val_score")
        else "final TEST score: these runs predate the validation split, so the choice is optimistic"
    )
    parts = ["# Summary", ""]
    if verdict is not None:
        parts += verdicts.markdown(verdict)
        parts += [*(rescored or [])]
        if verdict.candidates:
            parts += ["## At a glance", "", *verdicts.compact_markdown(verdict), ""]
    parts += [
        "## Details",
        "",
        provenance_line(runs),
        "",
        "Cells: mean ± 95% t-interval half-width over seeds (sample SD in summary.csv); a single value is shown "
        "with n=1 and no ±. "
        f"Score target: test_score {targets.score:.3f} ({targets.score_source}; it does not move when a loss is "
        f"added). Accuracy target: {targets.acc:.3f} ({TARGET_FRACTION:.0%} of the best mean accuracy of any "
        "setting; it moves when a better loss is added). Times to a target count the runs that reached it.",
        "",
        "test_score = mean S[y, argmax q]; Bayes decision k* = argmax_k sum_i q_i S[i,k]; calibrated Bayes: the "
        "same on temperature-scaled q (temperature fit on val); mistake severity = mean S[y,y] - S[y,pred] over "
        "mistakes; AUC = the mean of the metric over the evaluated epochs (1.0 = perfect from the first "
        f"evaluation); trend = slope of the seeds' mean test_score over the last half of the evaluations "
        f"(at least {SLOPE_WINDOW}): "
        "rising / falling when its 95% CI excludes 0 (still rising: more epochs would help).",
        "",
    ]
    if swept:
        parts += [
            f"## Each loss at its best {', '.join(swept)}, chosen on the {selection}",
            "",
            markdown_table(chosen, swept),
            "",
        ]
    else:
        parts += ["## Results", "", markdown_table(table, swept), ""]
    parts += [f"## Against {REFERENCE}", "", *comparison_section(chosen, swept, margin)]
    if swept:
        parts += ["## All settings", "", markdown_table(table, swept), ""]
    if warnings:
        parts += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- figures


def labelled(table: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    return table.assign(label=[setting_label(r["loss"], {k: r[k] for k in swept}) for _, r in table.iterrows()])


def summed_confusions(runs: pd.DataFrame, chosen: pd.DataFrame, swept: list[str], warnings: list[str]) -> list:
    """(label, loss, counts summed over the seeds) per chosen setting that has confusion.csv files."""
    matrices = []
    for _, setting in labelled(chosen, swept).iterrows():
        total = None
        for run_dir in runs_of(runs, setting, swept)["run_dir"]:
            counts, warning = read_confusion(Path(run_dir) / CONFUSION_FILE)
            if warning:
                warnings.append(f"{warning}; left out of confusion.png")
            elif counts is not None and total is not None and not counts.index.equals(total.index):
                warnings.append(f"{Path(run_dir) / CONFUSION_FILE}: other classes than its loss's other runs; left out")
            elif counts is not None:
                total = counts if total is None else total + counts
        if total is not None:
            matrices.append((setting["label"], setting["loss"], total))
    return matrices


def write_figures(
    root: Path,
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    table: pd.DataFrame,
    chosen: pd.DataFrame,
    swept: list[str],
    targets: Targets,
    warnings: list[str],
) -> None:
    chosen = labelled(chosen, swept)
    shown = [(r["label"], r["loss"], runs_of(curves, r, swept)) for _, r in chosen.iterrows()]
    plots.save_figure(plots.curve_figure(shown, "test_acc", "Test accuracy", "test accuracy"), root / "test_acc.png")
    plots.save_figure(
        plots.curve_figure(
            shown,
            "test_score",
            "Test score (solid: argmax, dashed: Bayes decision)",
            "mean score S[y, prediction]",
            dashed="test_score_bayes",
        ),
        root / "test_score.png",
    )
    plots.save_figure(
        plots.curve_figure(
            shown, "grad_norm", "Mean per-example logit-gradient norm", "||d loss / d logits||", log_y=True
        ),
        root / "grad_norm.png",
    )
    panels = [
        (to_target("epochs", "score"), f"Epochs until test_score first reaches {targets.score:.3f}"),
        (to_target("epochs", "acc"), f"Epochs until test accuracy first reaches {targets.acc:.3f}"),
    ]
    plots.save_figure(plots.target_figure(chosen, panels), root / "epochs_to_target.png")
    numeric = [k for k in swept if pd.to_numeric(table[k], errors="coerce").notna().all()]
    if len(swept) == 1 and numeric:
        figure = plots.sweep_figure(table, swept[0], final("test_score"), "final test_score")
        plots.save_figure(figure, root / f"sweep_{swept[0]}.png")
    pareto = [
        (m, label, lower)
        for m, label, lower in (
            (final("test_mistake_severity"), "mean mistake severity", True),
            (final("test_score"), "final test_score", False),
        )
        if table[column(m, "mean")].notna().any()
    ]
    if pareto:  # no setting has a final value yet (every run unfinished): no front to draw
        plots.save_figure(plots.pareto_figure(labelled(table, swept), pareto), root / "pareto.png")
    matrices = summed_confusions(runs, chosen, swept, warnings)
    if matrices:
        plots.save_figure(plots.confusion_figure(matrices), root / "confusion.png")
    trials = tuning_trials(root, warnings)
    if trials is not None:
        plots.save_figure(plots.tuning_figure(trials, "val_score"), root / "tuning.png")


# ---------------------------------------------------------------- the report


def choose_margin(runs: pd.DataFrame, margin: float | None) -> float:
    """The equivalence margin: `margin` when given, else the runs' common report.margin, else the default."""
    if margin is None:
        settings = runs["margin_setting"].dropna().unique() if "margin_setting" in runs else []
        require(
            len(settings) <= 1,
            f"the runs disagree on report.margin ({sorted(map(str, settings))}); choose one "
            "with `lossbench report DIR --margin X`",
        )
        margin = pd.to_numeric(settings[0], errors="coerce") if len(settings) else verdicts.DEFAULT_MARGIN
    require(
        pd.notna(margin) and math.isfinite(margin) and margin > 0,
        f"report.margin {margin!r}: must be a number > 0 (a test-score difference)",
    )
    return float(margin)


def load_predictions(runs: pd.DataFrame, warnings: list[str]) -> dict[str, Predictions]:
    """The predictions.npz of every finished run that has one (older runs have none)."""
    found = {}
    for run_dir, status in zip(runs["run_dir"], runs["status"]):
        if status != "finished":
            continue
        predictions, warning = read_predictions(Path(run_dir))
        if warning:
            warnings.append(f"{warning}; left out of the test-set intervals")
        if predictions is not None:
            found[run_dir] = predictions
    return found


FIGURES = [
    "test_score.png",
    "pareto.png",
    "confusion.png",
    "test_acc.png",
    "epochs_to_target.png",
    "grad_norm.png",
    "tuning.png",
]  # report.html shows them in this order, sweep figures after test_acc


def build_report(root: Path, target_score: float | None = None, margin: float | None = None) -> Report:
    """Write curves.csv, summary.csv, summary.md, report.html and the PNGs into root, from the run directories
    below it. target_score: the score target (default: the runs' report.target_score, else ce's final mean
    test_score); margin: the equivalence margin (default: the runs' report.margin, else DEFAULT_MARGIN)."""
    root = Path(root)
    loaded = load_runs(root)
    runs, curves, swept, warnings = loaded.runs, loaded.curves, loaded.swept, list(loaded.warnings)
    require(len(curves) > 0, f"{root}: no run has finished an epoch yet" + "".join(f"; {w}" for w in warnings))
    margin = choose_margin(runs, margin)
    predictions = load_predictions(runs, warnings)
    runs = run_measures(runs, curves)
    selected_on = selection_measure(runs)
    table = describe_settings(runs, swept, RUN_MEASURES)
    picked = select_settings(table, swept, selected_on)  # the one choice of each loss's setting
    targets = choose_targets(runs, table.loc[picked], table, target_score)
    runs = add_times_to_targets(runs, curves, targets)
    table = with_target_measures(table, runs, swept)
    table = add_trends(compare_with_reference(runs, table, table.loc[picked], swept, margin), curves, swept)
    chosen = table.loc[picked]
    label_of = lambda r: setting_label(r["loss"], {k: r[k] for k in swept})  # noqa: E731
    verdict = verdicts.build_verdict(runs, chosen, swept, predictions, margin, label_of)
    write_figures(root, runs, curves, table, chosen, swept, targets, warnings)
    rescored = rescored_lines(runs, predictions)
    tuned = tuned_note(root)
    markdown = (
        summary_markdown(runs, table, chosen, swept, targets, selected_on, warnings, verdict, rescored, margin) + tuned
    )
    columns = verdicts.summary_columns(verdict)
    for index, row in table.iterrows():
        for key, value in columns.get(label_of(row), {}).items() if index in chosen.index else ():
            table.loc[index, key] = value
    table.attrs.update(target_score=targets.score, target_acc=targets.acc, selected_on=selected_on, margin=margin)
    write_atomic(root / CURVES_FILE, curves.to_csv(index=False))
    write_atomic(root / "summary.csv", table.to_csv(index=False))
    write_atomic(root / "summary.md", markdown)
    figures = [root / name for name in FIGURES if (root / name).exists()]
    figures[3:3] = sorted(root.glob("sweep_*.png"))
    write_atomic(root / "report.html", html.page(root.name, verdict, markdown, figures))
    # the console: the verdict, the compact table, and for a tune the settings it chose
    return Report(
        curves, table, markdown, warnings, verdict, verdicts.console_text(verdict) + ("\n" + tuned if tuned else "")
    )
