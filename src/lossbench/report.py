"""Reports built only from run directories on disk, so they can be rebuilt at any time, over partial or remote
results: curves.csv, summary.csv, summary.md and PNG figures. Every file is written atomically."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lossbench.errors import require  # noqa: E402
from lossbench.losses import LOSSES  # noqa: E402
from lossbench.metrics import METRIC_COLUMNS, accuracy_auc, epochs_to_target  # noqa: E402
from lossbench.atomic import atomic_path, write_atomic  # noqa: E402
from lossbench.train import CONFIG_FILE, METRICS_FILE, STATUS_FILE, read_status  # noqa: E402

TARGET_FRACTION = 0.9  # target accuracy = this x the best mean (over seeds) accuracy of any setting
SELECT_BY = "final_test_score"  # with swept parameters, each loss is shown at the setting that maximises this
METRICS = ["test_acc", "test_score", "test_score_bayes", "test_expected_score"]
IGNORED_KEYS = {"seed", "resume", "seeds", "losses", "name"}
TUNING_DIR, TUNED_FILE = "tuning", "tuned.md"  # written by `lossbench tune` (tune.py): its trials, its choices


@dataclass
class Report:
    curves: pd.DataFrame
    summary: pd.DataFrame
    markdown: str


def find_runs(root: Path) -> list[Path]:
    """Run directories below root: those with a status.json (written when a run starts), except the trials of
    `lossbench tune` below root/.../tuning (selection runs, not part of the comparison)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob(STATUS_FILE)
                  if (p.parent / CONFIG_FILE).exists() and TUNING_DIR not in p.relative_to(root).parts[:-1])  # fmt: skip


def tuned_note(root: Path) -> str:
    """The settings `lossbench tune` chose (its tuned.md), for the end of summary.md; empty for a comparison."""
    path = Path(root) / TUNED_FILE
    return "\n" + path.read_text() if path.exists() else ""


def loss_colour(name: str) -> tuple[float, float, float, float]:
    """One fixed colour per loss across all figures."""
    names = list(LOSSES)
    index = names.index(name) if name in names else len(names) + sum(map(ord, name)) % 4
    return plt.get_cmap("tab10")(index % 10)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def load_runs(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(runs, curves, swept): one row per run (loss, seed, swept parameters, status, run_dir); all runs' metrics
    rows with those columns in front; and the swept parameters.

    A parameter counts as swept when it takes more than one value among the runs of one loss (so loss.tau is
    not swept just because only soft_label_ce has it, but optim.lr=0.01,0.1 is)."""
    run_dirs = find_runs(root)
    require(run_dirs, f"{root}: no run directories found (directories with {STATUS_FILE} and {CONFIG_FILE})")
    configs = [flatten(OmegaConf.to_container(OmegaConf.load(d / CONFIG_FILE))) for d in run_dirs]
    table = pd.DataFrame(configs)
    candidates = [k for k in table.columns if k not in IGNORED_KEYS | {"loss.name"}]
    by_loss = table.astype({k: str for k in candidates}).groupby("loss.name")
    swept = [k for k in candidates if (by_loss[k].nunique() > 1).any()]
    runs = table[["loss.name", "seed", *swept]].rename(columns={"loss.name": "loss"})
    runs["status"] = [read_status(d)["status"] for d in run_dirs]
    runs["run_dir"] = [str(d) for d in run_dirs]
    frames = []
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / METRICS_FILE
        if path.exists() and path.stat().st_size > 0:
            rows = pd.read_csv(path)
            frames.append(rows.assign(**run.to_dict())[[*runs.columns, *METRIC_COLUMNS]])
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*runs.columns, *METRIC_COLUMNS])
    return runs, curves, swept


def setting_label(loss: str, params: dict[str, object]) -> str:
    return " ".join([loss, *(f"{k}={v}" for k, v in params.items())])


def summarise(runs: pd.DataFrame, curves: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """One row per setting (loss x swept parameters): mean and std over seeds of the convergence measures.
    Runs without metrics (diverged in the first epoch, say) count in `runs` and `status` only."""
    runs = runs.copy()
    by_run = dict(tuple(curves.groupby("run_dir", sort=False)))
    empty = pd.DataFrame(columns=METRIC_COLUMNS)
    curve_of = [by_run.get(d, empty) for d in runs["run_dir"]]
    for metric in METRICS:
        runs[f"final_{metric}"] = [c[metric].iloc[-1] if len(c) else math.nan for c in curve_of]
        runs[f"best_{metric}"] = [c[metric].max() if len(c) else math.nan for c in curve_of]
    runs["auc_test_acc"] = [accuracy_auc(c) if len(c) else math.nan for c in curve_of]
    keys = ["loss", *swept]
    target = TARGET_FRACTION * runs.groupby(keys, dropna=False)["best_test_acc"].mean().max()
    hits = [epochs_to_target(c, target) if len(c) else (math.nan, math.nan) for c in curve_of]
    runs["epochs_to_target"] = [h[0] for h in hits]
    runs["seconds_to_target"] = [h[1] for h in hits]

    measures = [c for c in runs.columns if c.startswith(("final_", "best_", "auc_"))] + [
        "epochs_to_target", "seconds_to_target"]  # fmt: skip
    rows = []
    for setting, group in runs.groupby(keys, dropna=False, sort=False):
        setting = setting if isinstance(setting, tuple) else (setting,)
        row = dict(zip(keys, setting))
        row["runs"] = len(group)
        row["status"] = ", ".join(f"{n} {s}" for s, n in group["status"].value_counts().items())
        row["reached_target"] = int(group["epochs_to_target"].notna().sum())
        for measure in measures:
            row[f"{measure}_mean"] = group[measure].mean()
            row[f"{measure}_std"] = group[measure].std(ddof=0) if len(group) > 1 else 0.0
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary.attrs["target"] = target
    order = {name: i for i, name in enumerate(LOSSES)}
    return summary.sort_values(by="loss", key=lambda s: s.map(lambda n: order.get(n, len(order))), kind="stable")


def best_settings(summary: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Each loss at its best setting of the swept parameters (by mean SELECT_BY)."""
    if not swept:
        return summary
    best = summary.loc[summary.groupby("loss", sort=False)[f"{SELECT_BY}_mean"].idxmax().dropna()]
    return best


def _pm(row: pd.Series, measure: str, digits: int = 3) -> str:
    mean, std = row[f"{measure}_mean"], row[f"{measure}_std"]
    if pd.isna(mean):
        return "not reached" if "target" in measure else "-"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    if "target" in measure and row["reached_target"] < row["runs"]:
        text += f" ({row['reached_target']}/{row['runs']} runs)"
    return text


def markdown_table(summary: pd.DataFrame, swept: list[str]) -> str:
    columns = {
        "final test_acc": ("final_test_acc", 3), "best test_acc": ("best_test_acc", 3),
        "final test_score": ("final_test_score", 3), "final test_score_bayes": ("final_test_score_bayes", 3),
        "final test_expected_score": ("final_test_expected_score", 3),
        "epochs to target": ("epochs_to_target", 1), "seconds to target": ("seconds_to_target", 1),
        "AUC test_acc": ("auc_test_acc", 3),
    }  # fmt: skip
    header = ["loss", *swept, "runs", "status", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(row["loss"]), *(str(row[k]) for k in swept), str(row["runs"]), row["status"]]
        cells += [_pm(row, measure, digits) for measure, digits in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame, swept: list[str]) -> str:
    target = summary.attrs["target"]
    parts = [
        "# Summary",
        "",
        f"Mean ± std over seeds. Target accuracy: {target:.3f} ({TARGET_FRACTION:.0%} of the best mean accuracy). "
        "test_score = mean S[y, argmax q]; test_score_bayes = mean S[y, k*] with the Bayes decision "
        "k* = argmax_k sum_i q_i S[i,k]; AUC = mean test accuracy over epochs.",
        "",
    ]
    if swept:
        parts += [f"## Each loss at its best {', '.join(swept)} (by {SELECT_BY})", "",
                  markdown_table(best_settings(summary, swept), swept), "", "## All settings", ""]  # fmt: skip
    parts.append(markdown_table(summary, swept))
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- figures


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def shown_curves(curves: pd.DataFrame, summary: pd.DataFrame, swept: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per loss, at its best setting when parameters were swept."""
    shown = []
    for _, row in best_settings(summary, swept).iterrows():
        mask = curves["loss"] == row["loss"]
        for key in swept:
            mask &= curves[key].astype(str) == str(row[key])
        params = {k: row[k] for k in swept}
        shown.append((setting_label(row["loss"], params), curves[mask]))
    return shown


def plot_metric(shown, metric: str, title: str, ylabel: str, log_y: bool = False, dashed: str | None = None):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, rows in shown:
        if rows.empty:
            continue
        colour = loss_colour(label.split()[0])
        for column, style in ((metric, "-"), (dashed, "--")):
            if column is None:
                continue
            stats = rows.groupby("epoch")[column].agg(["mean", "min", "max"])
            name = label if style == "-" else None
            ax.plot(stats.index, stats["mean"], style, color=colour, label=name, lw=1.8)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, lw=0)
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: it never hides a curve
    return fig


def plot_epochs_to_target(best: pd.DataFrame, target: float):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = list(best["loss"])
    values = best["epochs_to_target_mean"].fillna(0)
    errors = best["epochs_to_target_std"].fillna(0)
    ax.bar(labels, values, yerr=errors, color=[loss_colour(n) for n in labels], capsize=3)
    top = max(1.0, float(values.max()))
    for i, (_, row) in enumerate(best.iterrows()):
        if pd.isna(row["epochs_to_target_mean"]):
            ax.text(i, top * 0.03, "not reached", rotation=90, ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("epochs (mean over seeds)")
    ax.set_title(f"Epochs until test accuracy first reaches {target:.3f}")
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_sweep(summary: pd.DataFrame, key: str):
    """Final test score against one swept numeric parameter (e.g. the learning rate), one line per loss."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss, group in summary.groupby("loss", sort=False):
        group = group.assign(x=pd.to_numeric(group[key])).sort_values("x")
        ax.plot(group["x"], group["final_test_score_mean"], "o-", color=loss_colour(loss), label=loss)
    ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("final test_score (mean over seeds)")
    ax.set_title(f"Final test score vs {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: it never hides a curve
    return fig


def build_report(root: Path) -> Report:
    """Write curves.csv, summary.csv, summary.md and the PNGs into root, from the run directories below it."""
    root = Path(root)
    runs, curves, swept = load_runs(root)
    require(len(curves) > 0, f"{root}: no run has finished an epoch yet")
    summary = summarise(runs, curves, swept)
    markdown = summary_markdown(summary, swept) + tuned_note(root)
    write_atomic(root / "curves.csv", curves.to_csv(index=False))
    write_atomic(root / "summary.csv", summary.to_csv(index=False))
    write_atomic(root / "summary.md", markdown)
    shown = shown_curves(curves, summary, swept)
    save_figure(plot_metric(shown, "test_acc", "Test accuracy", "test accuracy"), root / "test_acc.png")
    save_figure(plot_metric(shown, "test_score", "Test score (solid: argmax, dashed: Bayes decision)",
                            "mean score S[y, prediction]", dashed="test_score_bayes"), root / "test_score.png")  # fmt: skip
    save_figure(plot_metric(shown, "grad_norm", "Mean per-example logit-gradient norm", "||d loss / d logits||",
                            log_y=True), root / "grad_norm.png")  # fmt: skip
    save_figure(plot_epochs_to_target(best_settings(summary, swept), summary.attrs["target"]),
                root / "epochs_to_target.png")
    numeric = [k for k in swept if pd.to_numeric(summary[k], errors="coerce").notna().all()]
    if len(swept) == 1 and numeric:
        save_figure(plot_sweep(summary, swept[0]), root / f"sweep_{swept[0]}.png")
    return Report(curves, summary, markdown)
