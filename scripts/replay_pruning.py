"""What would the median pruner have saved, and lost, on a search that ran unpruned? Replays Optuna's own
MedianPruner over an unpruned `lossbench tune` directory's trials (each trial's per-epoch val_score from its
metrics.csv, the trials in the order they ran), for each pruner setting asked for, and prints a markdown table:
per setting and loss, the trials it would have pruned, the epochs trained against the search's, and whether the
trial the search chose would have survived.

The replay keeps the trials the search drew. A pruned search draws its later trials from fewer finished ones, so
it can go elsewhere: this measures the pruner's decisions, not a whole pruned search (rerun that to be sure).

Usage: python scripts/replay_pruning.py TUNE_DIR [--setting AFTER:STARTUP ...]
(default settings 1:3, 2:3, 2:5 and 3:3: prune_after and pruner_startup, as tune.yaml names them)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna

from lossbench.errors import LossbenchError, require
from lossbench.rundir import TUNE_FILE, read_json, read_metrics

OBJECTIVE = "val_score"
DEFAULT_SETTINGS = ["1:3", "2:3", "2:5", "3:3"]


@dataclass
class Replay:
    loss: str
    after: int
    startup: int
    pruned: list[int]  # trial numbers
    epochs: int  # trained with pruning
    unpruned_epochs: int
    chosen: int  # the trial with the best final val_score
    chosen_kept: bool


def trial_curves(folder: Path) -> list[list[float]]:
    """Per trial, in trial-number order, its per-epoch val_score; refuses a trial that stopped early."""
    dirs = sorted(folder.glob("trial_*"), key=lambda d: int(d.name.split("_")[1]))
    require(dirs, f"{folder}: no trial_* folders")
    curves = [list(read_metrics(d)[0].get(OBJECTIVE, [])) for d in dirs]
    empty = [d.name for d, c in zip(dirs, curves) if not c]
    require(not empty, f"{folder}: {', '.join(empty)} has no {OBJECTIVE} row in its metrics.csv")
    longest = max(len(c) for c in curves)
    short = [d.name for d, c in zip(dirs, curves) if len(c) < longest]
    require(not short, f"{folder}: {', '.join(short)} stopped early: replay an unpruned search")
    return curves


def replay(loss: str, curves: list[list[float]], after: int, startup: int) -> Replay:
    """The trials in order through a MedianPruner(n_startup_trials=startup, n_warmup_steps=after), as tune's
    trial jobs report them (every epoch but the last may be pruned)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=after)
    )
    pruned, epochs = [], 0
    for number, curve in enumerate(curves):
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            epochs += 1
            if epoch < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned.append(number)
                break
        else:
            study.tell(trial, curve[-1])
    chosen = max(range(len(curves)), key=lambda i: curves[i][-1])
    return Replay(loss, after, startup, pruned, epochs, sum(map(len, curves)), chosen, chosen not in pruned)


def parse_setting(text: str) -> tuple[int, int]:
    after, _, startup = text.partition(":")
    require(
        after.isdigit() and startup.isdigit(),
        f"--setting {text}: write AFTER:STARTUP, two integers >= 0 (e.g. 2:5)",
    )
    return int(after), int(startup)


def table(replays: list[Replay]) -> str:
    lines = [
        "| prune_after | pruner_startup | loss | trials pruned | epochs trained | the chosen trial |",
        "|---|---|---|---|---|---|",
    ]
    for r in replays:
        kept = "kept" if r.chosen_kept else "**pruned: lost**"
        pruned = ", ".join(map(str, r.pruned)) or "none"
        lines.append(
            f"| {r.after} | {r.startup} | {r.loss} | {pruned} | {r.epochs} of {r.unpruned_epochs} | "
            f"trial {r.chosen}, {kept} |"
        )
    lines.append("")
    for after, startup in dict.fromkeys((r.after, r.startup) for r in replays):
        own = [r for r in replays if (r.after, r.startup) == (after, startup)]
        trained, total = sum(r.epochs for r in own), sum(r.unpruned_epochs for r in own)
        lost = [r.loss for r in own if not r.chosen_kept]
        lines.append(
            f"- prune_after {after}, pruner_startup {startup}: {trained} of {total} epochs "
            f"({1 - trained / total:.0%} fewer); the chosen trial lost for {', '.join(lost) if lost else 'no loss'}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tune_dir", type=Path)
    parser.add_argument("--setting", action="append", help="AFTER:STARTUP (repeatable)")
    args = parser.parse_args(argv)
    try:
        try:
            record = read_json(args.tune_dir / TUNE_FILE)
        except ValueError as err:
            raise LossbenchError(f"{args.tune_dir / TUNE_FILE}: damaged ({err})") from None
        require(
            isinstance(record, dict) and isinstance(record.get("losses"), dict),
            f"{args.tune_dir / TUNE_FILE}: not a tune record (no losses)",
        )
        settings = [parse_setting(s) for s in args.setting or DEFAULT_SETTINGS]
        curves = {loss: trial_curves(args.tune_dir / "tuning" / loss) for loss in record["losses"]}
        replays = [replay(loss, c, after, startup) for after, startup in settings for loss, c in curves.items()]
    except (LossbenchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(replays))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
