"""Every figure lossbench draws, and their one style: a fixed colour per loss, the legend outside the axes (it
never hides a curve), integer epoch ticks, and atomic PNG saving. Each function draws the tables it is handed;
nothing here computes a statistic or knows where the tables came from."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from lossbench.atomic import atomic_path  # noqa: E402

# Fixed per name, so a loss keeps its colour in every figure, whatever else is in the comparison and whatever
# order the registry lists it in (the first six are the colours the committed results were drawn with).
COLOURS = {
    "ce": "tab:blue",
    "expected_score": "tab:orange",
    "renormalised_expected_score": "goldenrod",  # a variant of expected_score: a hue beside its orange
    "log_expected_score": "tab:green",
    "soft_label_ce": "tab:red",
    "ce_expected_score": "tab:purple",
    "power_expected_score": "tab:brown",
    "label_smoothing": "tab:pink",
}
SPARE = ["tab:olive", "tab:cyan", "tab:gray", "gold", "navy", "lime", "teal", "crimson", "indigo", "darkkhaki"]
DPI = 120


def loss_colour(name: str) -> str:
    """The loss's colour: fixed for the known losses (every one lossbench ships), and for any other name (a
    user's own loss) a spare colour picked by a hash of the name, the same in every figure and every process."""
    if name in COLOURS:
        return COLOURS[name]
    return SPARE[zlib.crc32(name.encode()) % len(SPARE)]


def save_figure(fig: Figure, path: Path, software: str | None = None) -> None:
    """Write fig as a PNG in one rename (a reader never sees half a file) and free it; `software` goes into the
    PNG's Software field (how lossbench later tells its own figure from a user's file of the same name)."""
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(
                tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": software} if software else None
            )
    finally:
        plt.close(fig)


def legend_outside(ax: Axes) -> None:
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _style(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def curve_figure(
    shown: Sequence[tuple[str, str, pd.DataFrame]],
    metric: str,
    title: str,
    ylabel: str,
    log_y: bool = False,
    dashed: str | None = None,
) -> Figure:
    """metric against epoch, one line per (label, loss, rows): the mean over the rows' seeds, and a band from
    their minimum to maximum; `dashed` draws a second metric of the same rows dashed, unlabelled."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, loss, rows in shown:
        for column, style in ((metric, "-"), (dashed, "--")):
            if column is None or rows.empty or column not in rows or rows[column].isna().all():
                continue
            stats = rows.groupby("epoch")[column].agg(["mean", "min", "max"])
            ax.plot(
                stats.index,
                stats["mean"],
                style,
                color=loss_colour(loss),
                label=label if style == "-" else None,
                lw=1.8,
            )
            ax.fill_between(stats.index, stats["min"], stats["max"], color=loss_colour(loss), alpha=0.15, lw=0)
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax, "epoch", ylabel, title)
    legend_outside(ax)
    return fig


def target_figure(table: pd.DataFrame, panels: Sequence[tuple[str, str]]) -> Figure:
    """Bars of the mean epochs to each target, one panel per (measure, title), error bars = the `_ci95` column
    (drawn only where n > 1); a loss that never got there is marked "not reached", one that got there in only
    some runs says in how many. table: one row per shown setting, columns label, loss, runs, <measure>_mean,
    <measure>_ci95, <measure>_n."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (measure, title) in zip(axes[0], panels):
        values = table[f"{measure}_mean"]
        errors = table[f"{measure}_ci95"].where(table[f"{measure}_n"] > 1).fillna(0)
        positions = np.arange(len(table))
        ax.bar(positions, values.fillna(0), yerr=errors, color=[loss_colour(n) for n in table["loss"]], capsize=3)
        top = max(1.0, float(values.max()) if values.notna().any() else 1.0)
        for i, (value, n, runs) in enumerate(zip(values, table[f"{measure}_n"], table["runs"])):
            if pd.isna(value):
                ax.text(i, top * 0.03, "not reached", rotation=90, ha="center", va="bottom", fontsize=9)
            elif n < runs:  # the mean covers only the runs that got there
                ax.text(i, value + errors.iloc[i] + top * 0.02, f"{n:g}/{runs} runs", ha="center", fontsize=8)
        ax.set_xticks(positions, table["label"], rotation=30, ha="right")
        ax.set_ylabel("epochs (mean over seeds, 95% CI)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def log_x(ax: Axes, values: Sequence[float]) -> None:
    """A log x axis with labels however narrow the data: with fewer than two powers of ten inside it the default
    labels at most one tick, so the 1-2-5 steps inside the data are labelled instead, or the data's two ends where
    even fewer than two of those are."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # matplotlib's own minor labels overlap on a narrow range
    data = np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=float)
    if not len(data):
        return
    low, high = data.min(), data.max()
    decades = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
    if sum(low <= 10.0**d <= high for d in decades) >= 2:  # the default labels these powers of ten
        return
    ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if low <= m * 10.0**d <= high]
    if len(ticks) < 2:
        ticks = sorted({low, high})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))


def sweep_figure(table: pd.DataFrame, key: str, measure: str, ylabel: str) -> Figure:
    """measure against one swept numeric parameter, one line per loss, error bars = `_ci95` where n > 1.
    table: one row per setting, columns loss, key, <measure>_mean, <measure>_ci95, <measure>_n."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss, group in table.groupby("loss", sort=False):
        group = group.assign(x=pd.to_numeric(group[key])).sort_values("x")
        errors = group[f"{measure}_ci95"].where(group[f"{measure}_n"] > 1)
        ax.errorbar(
            group["x"],
            group[f"{measure}_mean"],
            yerr=None if errors.isna().all() else errors.fillna(0),
            fmt="o-",
            color=loss_colour(loss),
            label=loss,
            capsize=3,
        )
    if (pd.to_numeric(table[key]) > 0).all():
        log_x(ax, pd.to_numeric(table[key]))
    seeds = int(table[f"{measure}_n"].max())
    _style(ax, key, ylabel, f"{ylabel} vs {key}" + (" (mean, 95% CI over seeds)" if seeds > 1 else " (one seed)"))
    legend_outside(ax)
    return fig


def confusion_figure(matrices: Sequence[tuple[str, str, pd.DataFrame]]) -> Figure:
    """One heatmap per (label, loss, counts): rows (true classes) normalised to sum to 1, class names on both
    axes; percentages written in the cells while they stay readable (up to 12 classes)."""
    classes = len(matrices[0][2])
    columns = min(3, len(matrices))
    rows = math.ceil(len(matrices) / columns)
    # Room for the percentages up to 12 classes; beyond, a class gets one line of its tick label. At 0.3 inch a
    # class, 7 panels of 100 classes made a 129-megapixel, 1.9 MB picture that image viewers refuse.
    label_size = 7 if classes <= 40 else 5
    per_class = 0.3 if classes <= 12 else 1.3 * label_size / 72
    side = max(3.6, per_class * classes + 1.5)
    fig, axes = plt.subplots(
        rows, columns, figsize=(side * columns + 1, side * rows), squeeze=False, layout="constrained"
    )
    image = None
    for ax, (label, loss, counts) in zip(axes.flat, matrices):
        totals = counts.sum(axis=1).to_numpy(float)[:, None]
        share = np.divide(counts.to_numpy(float), totals, out=np.zeros(counts.shape), where=totals > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(counts))
        ax.set_xticks(ticks, [str(c) for c in counts.columns], rotation=90, fontsize=label_size)
        ax.set_yticks(ticks, [str(c) for c in counts.index], fontsize=label_size)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(label, fontsize=10, color=loss_colour(loss))
        if classes <= 12:
            for (i, j), value in np.ndenumerate(share):
                ax.text(
                    j,
                    i,
                    f"{value:.0%}"[:-1],
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value > 0.5 else "black",
                )
    for ax in axes.flat[len(matrices) :]:
        ax.axis("off")
    in_cells = " (in %)" if classes <= 12 else ""
    fig.suptitle(f"Test confusion summed over seeds, each row normalised: share of the true class's examples{in_cells}")
    fig.colorbar(image, ax=axes, shrink=0.6, label="share of the true class")
    return fig


def tuning_figure(trials: pd.DataFrame, objective: str) -> Figure:
    """One panel per loss: each trial's objective against its learning rate (log x), coloured by the loss's own
    parameter where one was searched (a log colour scale where it was searched log-uniformly); the chosen trial
    ringed by a star; trials that were pruned, failed or diverged as grey crosses on the panel's floor (they have no
    objective). trials: columns loss, lr, param, value, log, objective, chosen."""
    losses = list(dict.fromkeys(trials["loss"]))
    columns = min(4, len(losses))
    rows = math.ceil(len(losses) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False, layout="constrained")
    for ax, loss in zip(axes.flat, losses):
        group = trials[trials["loss"] == loss]
        done = group[group[objective].notna()]
        if group["param"].notna().any():
            param, log = group["param"].dropna().iloc[0], bool(group["log"].dropna().iloc[0])
            norm = LogNorm() if log and (group["value"] > 0).all() else None
            points = ax.scatter(done["lr"], done[objective], c=done["value"], cmap="viridis", norm=norm, s=28, zorder=2)
            fig.colorbar(points, ax=ax, label=param.removeprefix("loss."), pad=0.01)
        else:
            ax.scatter(done["lr"], done[objective], color=loss_colour(loss), s=28, zorder=2)
        best = done[done["chosen"]]
        ax.scatter(best["lr"], best[objective], marker="*", s=220, facecolor="none", edgecolor="red", lw=1.4, zorder=3)
        failed = group[group[objective].isna()]
        floor = done[objective].min() if len(done) else 0.0
        ax.scatter(failed["lr"], [floor] * len(failed), marker="x", color="grey", zorder=1)
        log_x(ax, group["lr"])
        _style(ax, "learning rate", f"final {objective}", f"{loss} ({len(done)} of {len(group)} trials finished)")
        ax.title.set_color(loss_colour(loss))
        ax.title.set_fontsize(10)
    for ax in axes.flat[len(losses) :]:
        ax.axis("off")
    fig.suptitle(
        f"Tuning: each trial's final {objective} (validation split) against its learning rate\n"
        "red star: the chosen trial; grey cross: a trial pruned, failed or diverged (no final score)"
    )
    return fig


def pareto_front(x: Sequence[float], y: Sequence[float], lower_x_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y: higher is better), ordered along x."""
    points = [
        (i, xi if lower_x_better else -xi, yi)
        for i, (xi, yi) in enumerate(zip(x, y))
        if not (pd.isna(xi) or pd.isna(yi))
    ]
    front = [i for i, a, b in points if not any(c <= a and d >= b and (c < a or d > b) for _, c, d in points)]
    return sorted(front, key=lambda i: x[i])


def pareto_figure(table: pd.DataFrame, panels: Sequence[tuple[str, str, bool]]) -> Figure:
    """Final test accuracy (y) against each (measure, xlabel, lower_is_better) panel, a point per setting with
    95% CI error bars where n > 1 (a swept setting written beside it), and the Pareto front ringed and joined.
    table: one row per setting, columns label, loss, and <measure>_mean/_ci95/_n for final_test_acc and each."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    y = table["final_test_acc_mean"].to_numpy(float)
    yerr = table["final_test_acc_ci95"].where(table["final_test_acc_n"] > 1).fillna(0).to_numpy(float)
    for ax, (measure, xlabel, lower_better) in zip(axes[0], panels):
        x = table[f"{measure}_mean"].to_numpy(float)
        xerr = table[f"{measure}_ci95"].where(table[f"{measure}_n"] > 1).fillna(0).to_numpy(float)
        seen = set()
        for i, (label, loss) in enumerate(zip(table["label"], table["loss"])):
            # one legend entry per loss; a swept setting is written beside its point
            ax.errorbar(
                x[i],
                y[i],
                xerr=xerr[i],
                yerr=yerr[i],
                fmt="o",
                color=loss_colour(loss),
                capsize=3,
                ms=6,
                label=None if loss in seen else loss,
            )
            seen.add(loss)
            if label != loss:
                ax.annotate(
                    label.removeprefix(loss).strip(),
                    (x[i], y[i]),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=6,
                    color=loss_colour(loss),
                )
        front = pareto_front(list(x), list(y), lower_better)
        # rings, so that a front of one point shows too
        ax.plot(
            x[front], y[front], "--o", color="black", lw=1, alpha=0.6, ms=13, mfc="none", label="Pareto front", zorder=0
        )
        better = "lower is better" if lower_better else "higher is better"
        _style(ax, f"{xlabel} ({better})", "final test accuracy", f"Accuracy vs {xlabel}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def gradient_figure(
    curve_q: Sequence[float],
    curves: dict[str, dict[str, Sequence[float]]],
    panels: dict[str, str],
    num_classes: int,
    title: str,
) -> Figure:
    """`lossbench explain`: gradient norm against q_y per loss, log-log, one panel per way of placing the wrong
    probability (curves[panel][loss] = norms at curve_q); a dotted line marks q_y = 1/C."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True, squeeze=False)
    for ax, (panel, panel_title) in zip(axes[0], panels.items()):
        for name, norms in curves[panel].items():
            ax.plot(curve_q, norms, color=loss_colour(name), label=name, lw=1.8)
        ax.axvline(1 / num_classes, color="grey", ls=":", lw=1, label="q_y = 1/C (init)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("q_y: the model's probability on the true class")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("||d loss / d logits||, mean over true classes")
    # one legend below all panels, where it hides no curve
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.03), ncol=4, fontsize=9)
    fig.suptitle(title)
    return fig
