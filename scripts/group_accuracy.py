"""Accuracy over groups of classes (Q3 beside Q8 for protein secondary structure) and the recall of chosen
classes, per loss of a comparison, from each run's test confusion.csv (the argmax decision) or, with `--rule bayes`
or `--rule bayes_cal`, from the answers that decision rule gives on its predictions.npz: the Q8 and Q3 a user gets
who follows a verdict that advises the Bayes rule.

Group accuracy is the share of test examples whose predicted class lies in the true class's group: with DSSP's
8 states in 3 groups (helix H/G/I, strand E/B, coil T/S/C) it is Q3, the share of residues in the right 3-state
group, while plain accuracy is Q8. The grouping comes from `--groups` (GROUP=CLASS,CLASS ... per group) or else
from the `class_groups` array of the run's data file (data.path: one group name per class, in the order of its
`classes`; scripts/prepare_ss8.py writes it). Recall (the share of a class's test examples predicted as that
class) is shown for the classes named by `--recall`, by default those with under 5% of the test examples: the
rare states a model can give up on while its accuracy barely moves.
Printed as a markdown table: mean ± 95% t-interval over seeds, and the paired difference with ce.

Usage: python scripts/group_accuracy.py COMPARISON_DIR [--groups H=H,G,I E=E,B C=T,S,C] [--recall I,B,G]
                                      [--rule argmax|bayes|bayes_cal]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf.errors import OmegaConfBaseException

from lossbench.atomic import NPZ_READ_ERRORS
from lossbench.errors import LossbenchError, one_line, printed_warnings, require
from lossbench.predictions import PREDICTIONS_FILE, RULES, read_predictions, rule_confusion
from lossbench.rundir import confusions_by_run, nothing_counted
from lossbench.stats import interval_text, paired_column_text

RARE = 0.05  # a class with under this share of the test examples has its recall shown by default


def parse_groups(specs: list[str]) -> dict[str, str]:
    """{class: group} from GROUP=CLASS,CLASS ... specs."""
    mapping = {}
    for spec in specs:
        group, sep, members = spec.partition("=")
        require(bool(sep and group and members), f"--groups: '{spec}' is not GROUP=CLASS,CLASS,...")
        for name in members.split(","):
            require(name not in mapping, f"--groups: class '{name}' is in two groups")
            mapping[name] = group
    return mapping


def file_groups(data_path: str) -> dict[str, str]:
    """{class: group} from the class_groups array of a data=arrays file."""
    try:
        with np.load(data_path, allow_pickle=False) as npz:
            require(
                "class_groups" in npz.files and "classes" in npz.files,
                f"{data_path}: no class_groups (and classes) array; name the groups with --groups",
            )
            classes, groups = npz["classes"].tolist(), npz["class_groups"].tolist()
    except NPZ_READ_ERRORS as err:
        raise LossbenchError(
            f"{data_path}: not a readable .npz file ({one_line(err)}); name the groups with --groups"
        ) from None
    require(
        len(classes) == len(groups), f"{data_path}: class_groups has {len(groups)} names for {len(classes)} classes"
    )
    return dict(zip(classes, groups))


def run_measures(counts: pd.DataFrame, groups: dict[str, str], recall: list[str]) -> dict[str, float]:
    """Accuracy, group accuracy and the recall of each class in `recall`, from one confusion table."""
    classes = list(counts.columns)
    absent = [c for c in classes if c not in groups]
    require(not absent, f"the grouping leaves out class(es) {absent}")
    n = counts.to_numpy(float)
    same_group = np.array([[groups[t] == groups[p] for p in classes] for t in classes])
    measures = {"accuracy": np.trace(n) / n.sum(), "group_accuracy": (n * same_group).sum() / n.sum()}
    for name in recall:
        i = classes.index(name)
        measures[f"recall_{name}"] = n[i, i] / n[i].sum() if n[i].sum() > 0 else np.nan
    return measures


def rare_classes(counts: pd.DataFrame) -> list[str]:
    totals = counts.sum(axis=1)
    return [c for c in counts.index if totals[c] < RARE * totals.sum()]


def rule_counts(run_dir: Path, rule: str, warnings: list[str]) -> pd.DataFrame | None:
    """The run's test counts under a Bayes rule, from its predictions.npz; None, with a warning, when it has none
    (a run of an older lossbench), a damaged one, or no temperature for calibrated Bayes (no validation split)."""
    found, warning = read_predictions(run_dir)
    if found is None:
        warnings.append(f"{warning or f'{run_dir}: no {PREDICTIONS_FILE} (made by an older lossbench)'}; run left out")
        return None
    if rule == "bayes_cal" and not math.isfinite(found.temperature):
        warnings.append(f"{run_dir}: no temperature for calibrated Bayes (no validation split); run left out")
        return None
    return pd.DataFrame(rule_confusion(found, rule).astype(float), index=found.classes, columns=found.classes)


def collect(root: Path, groups: dict[str, str] | None, recall: list[str] | None, rule: str = "argmax") -> pd.DataFrame:
    """One row per run with a confusion.csv: loss, seed and its measures, of the answers `rule` gives. A damaged
    run is left out with a warning, as the report does."""
    rows = []
    with printed_warnings() as warnings:  # also when an unreadable grouping stops the loop
        for run_dir, counts, cfg, loss, seed in confusions_by_run(root, warnings):
            if rule != "argmax":
                counts = rule_counts(run_dir, rule, warnings)
                if counts is None:
                    continue
            if groups is None:
                try:
                    data_path = str(cfg.data.path)
                except OmegaConfBaseException as err:  # a run of data that is not data=arrays
                    warnings.append(f"{run_dir}: {one_line(err)}; run left out (name the groups with --groups)")
                    continue
            mapping = groups if groups is not None else file_groups(data_path)
            chosen = recall if recall is not None else rare_classes(counts)
            unknown = [c for c in chosen if c not in counts.columns]
            require(not unknown, f"--recall: {unknown} not among the classes {list(counts.columns)}")
            rows.append({"loss": loss, "seed": seed, **run_measures(counts, mapping, chosen)})
    return pd.DataFrame(rows)


def markdown(measures: pd.DataFrame, rule: str = "argmax") -> str:
    reference = measures[measures["loss"] == "ce"]
    recalls = [c for c in measures.columns if c.startswith("recall_")]
    header = [
        "loss",
        "accuracy (Q8)",
        "vs ce",
        "group accuracy (Q3)",
        "vs ce",
        *(f"recall {c.removeprefix('recall_')}" for c in recalls),
        "seeds",
    ]
    source = "confusion.csv" if rule == "argmax" else PREDICTIONS_FILE
    lines = [
        f"Test answers decided by {RULES[rule][0]} (each run's {source}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for loss, group in measures.groupby("loss", sort=False):
        compare = loss != "ce" and len(reference) > 0
        acc_vs, group_vs = (
            (paired_column_text(group, reference, c) for c in ("accuracy", "group_accuracy")) if compare else ("-", "-")
        )
        cells = [
            loss,
            interval_text(group["accuracy"]),
            acc_vs,
            interval_text(group["group_accuracy"]),
            group_vs,
            *(interval_text(group[c]) for c in recalls),
            str(len(group)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a comparison directory (compare's or tune's --out)")
    parser.add_argument("--groups", nargs="+", help="GROUP=CLASS,CLASS ... (default: the data file's class_groups)")
    parser.add_argument("--recall", help="classes whose recall to show, comma-separated (default: the rare ones)")
    parser.add_argument(
        "--rule", choices=list(RULES), default="argmax", help="the decision rule whose answers are counted"
    )
    args = parser.parse_args(argv)
    try:
        groups = parse_groups(args.groups) if args.groups else None
        measures = collect(args.root, groups, args.recall.split(",") if args.recall else None, args.rule)
        require(not measures.empty, nothing_counted(args.root))
    except LossbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(measures, args.rule))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
