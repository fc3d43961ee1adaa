"""Does a setting chosen on a small budget carry over to the full one? Each loss's chosen learning rate (a
tune.json) is run at the full budget beside its neighbours (half and twice it, say); this prints, per loss, the final
val_score and test_score at each, and whether a neighbour beats the choice on the validation split by more than the
margin. Selection reads val only; test is shown beside it.

Usage:
  python scripts/carry_over.py sweep TUNE_JSON LOSS [--factors 0.5,1,2]   the overrides of one loss's compare
                                                                          (optim.lr=a,b,c, its chosen parameter)
  python scripts/carry_over.py table TUNE_JSON COMPARISON_DIR ... [--margin 0.02]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from lossbench.checks import is_finite_number
from lossbench.errors import LossbenchError, require
from lossbench.report import read_curves
from lossbench.stats import interval_text, summarise

LR = "optim.lr"
COLUMNS = ("loss", "seed", LR, "epoch", "val_score", "test_score")


def chosen_settings(path: Path) -> dict[str, dict[str, float]]:
    """Each loss's chosen setting in a tune.json: {loss: {key: value}} (losses without a finished trial left out)."""
    try:
        record = json.loads(path.read_text())
        settings = {loss: entry["chosen"]["setting"] for loss, entry in record["losses"].items() if entry["chosen"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise LossbenchError(f"{path}: not a tune.json with chosen settings ({type(err).__name__}: {err})") from None
    for loss, setting in settings.items():
        value = setting.get(LR) if isinstance(setting, dict) else None
        require(is_finite_number(value) and value > 0, f"{path}: {loss} has no positive chosen {LR}")
    return settings


def parse_factors(text: str) -> list[float]:
    try:
        factors = [float(f) for f in text.split(",")]
    except ValueError:
        factors = []
    require(
        factors and all(math.isfinite(f) and f > 0 for f in factors) and 1.0 in factors,
        f"--factors {text}: write positive numbers separated by commas, 1 among them (the choice itself)",
    )
    return sorted(set(factors))


def sweep_overrides(loss: str, setting: dict[str, float], factors: list[float]) -> list[str]:
    """One loss's compare: the learning rates to run (the choice times each factor) as one sweep, and its other
    chosen keys (loss= as well as losses=, so that its own parameter can be set)."""
    lrs = ",".join(repr(setting[LR] * f) for f in factors)
    others = [f"{key}={value!r}" for key, value in setting.items() if key != LR]
    return [f"losses=[{loss}]", f"loss={loss}", f"{LR}={lrs}", *others]


def read_finals(directory: Path) -> pd.DataFrame:
    """The last epoch's row of every run in a comparison's curves.csv (a comparison that sweeps optim.lr)."""
    curves = read_curves(directory, COLUMNS).dropna(subset=["epoch"])
    return curves.loc[curves.groupby(["loss", "seed", LR])["epoch"].idxmax()]


def factor_of(lr: float, chosen: float, factors: list[float]) -> float | None:
    """The factor whose learning rate this run used (to 0.1%), or None."""
    return next((f for f in factors if math.isclose(lr, chosen * f, rel_tol=1e-3)), None)


def loss_row(loss: str, chosen_lr: float, finals: pd.DataFrame, factors: list[float], margin: float) -> list[str]:
    """One loss's cells: the chosen lr, val and test score per factor (mean over seeds), and the carry-over line."""
    by_factor = finals.assign(factor=[factor_of(lr, chosen_lr, factors) for lr in finals[LR]])
    val, test = {}, {}
    for factor in factors:
        runs = by_factor[by_factor["factor"] == factor]
        val[factor], test[factor] = list(runs["val_score"].dropna()), list(runs["test_score"].dropna())
    ran = [f for f in factors if val[f]]
    require(1.0 in ran, f"{loss}: no finished run at the chosen {LR} {chosen_lr:.4g}")
    mean = {f: summarise(val[f]).mean for f in ran}
    best = max(ran, key=mean.__getitem__)
    gain = mean[best] - mean[1.0]
    if best == 1.0:
        verdict = "yes: the choice is the best on val"
    elif gain <= margin:
        verdict = f"yes: {best:g}x is within {margin:g} on val (+{gain:.3f})"
    else:
        verdict = f"no: {best:g}x is better on val by {gain:.3f}"
    cells = [interval_text(val[f]) if val[f] else "-" for f in factors]
    cells += [interval_text(test[f]) if test[f] else "-" for f in factors]
    return [loss, f"{chosen_lr:.3g}", *cells, verdict]


def table(settings: dict[str, dict[str, float]], finals: pd.DataFrame, factors: list[float], margin: float) -> str:
    names = [f"{f:g}x" for f in factors]
    header = ["loss", "chosen lr", *(f"val_score {n}" for n in names), *(f"test_score {n}" for n in names)]
    lines = ["| " + " | ".join([*header, "carries over?"]) + " |", "|" + "---|" * (len(header) + 1)]
    for loss in sorted(set(finals["loss"])):
        require(loss in settings, f"{loss}: no chosen setting in the tune.json")
        row = loss_row(loss, settings[loss][LR], finals[finals["loss"] == loss], factors, margin)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="one loss's overrides")
    sweep.add_argument("tune_json", type=Path)
    sweep.add_argument("loss")
    sweep.add_argument("--factors", default="0.5,1,2")
    show = commands.add_parser("table", help="the carry-over table of the comparisons")
    show.add_argument("tune_json", type=Path)
    show.add_argument("directories", type=Path, nargs="+")
    show.add_argument("--factors", default="0.5,1,2")
    show.add_argument("--margin", type=float, default=0.02, help="a neighbour better on val by more is a miss")
    args = parser.parse_args(argv)
    try:
        factors = parse_factors(args.factors)
        settings = chosen_settings(args.tune_json)
        if args.command == "sweep":
            require(args.loss in settings, f"{args.tune_json}: no chosen setting for {args.loss}")
            print(" ".join(sweep_overrides(args.loss, settings[args.loss], factors)))
        else:
            require(
                math.isfinite(args.margin) and args.margin >= 0,
                f"--margin {args.margin:g}: write a number of 0 or more (how much better on val a neighbour must be)",
            )
            finals = pd.concat([read_finals(d) for d in args.directories], ignore_index=True)
            print(table(settings, finals, factors, args.margin))
    except (LossbenchError, OSError, pd.errors.ParserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
