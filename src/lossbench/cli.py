"""The `lossbench` command line (Typer). Hydra overrides pass through `run`, `compare` untouched."""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from collections.abc import Callable

import typer

from lossbench.errors import LossbenchError, Terminated, debug_enabled, os_failure, raise_terminated

app = typer.Typer(
    help="Benchmark similarity-aware classification losses against cross-entropy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # Rich markup mode would swallow `[...]` in examples such as
    # losses=[ce,expected_score]
)
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them


def guarded(action: Callable[[], int]) -> None:
    """Run a command. Exit codes: 2 bad input (one `error:` line naming the culprit), 1 an environment failure
    (disk full, permission denied, a directory in use by another process), 130 Ctrl-C and 143 SIGTERM (the
    run or comparison has said how to resume). Set LOSSBENCH_DEBUG=1 to get the traceback instead."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A log line that cannot be written (a full disk under the run's log file) is dropped, not printed as a
    # traceback per line: the run's next write of its records fails and says so in one line.
    logging.raiseExceptions = False
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    signal.signal(signal.SIGTERM, raise_terminated)
    from lossbench.lifeline import mark_launcher

    mark_launcher(command=True)  # its jobs' worker processes stop when this command is gone
    try:
        code = action()
    except (LossbenchError, OSError) as err:
        if debug_enabled():
            raise
        err = os_failure(err) if isinstance(err, OSError) else err
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt as err:
        if debug_enabled():
            raise
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


@app.command(context_settings=HYDRA_ARGS)
def run(ctx: typer.Context) -> None:
    """One training run (one loss, one seed). Arguments are Hydra overrides, e.g. `loss=expected_score seed=1
    train.epochs=20 model.widths=[16,32,64]`; `-m` sweeps (`-m loss=ce,expected_score`), `hydra/launcher=joblib`
    runs jobs in parallel. With `-m`, the exit code is 1 when any job failed or diverged (each is named)."""
    from lossbench import launch

    guarded(lambda: launch.run(list(ctx.args)))


@app.command(context_settings=HYDRA_ARGS)
def compare(
    ctx: typer.Context,
    out: str | None = typer.Option(None, "--out", "-o", help="Comparison directory (default: comparisons/NAME_TIME)"),
) -> None:
    """Train every loss of `losses` for every seed of `seeds`, then write the report (curves.csv, summary.md,
    PNGs). With no arguments: the offline quick demo. Examples: `experiment=cifar10 seeds=[0,1,2]`,
    `losses=[ce,expected_score] optim.lr=0.01,0.1` (extra sweeps become report columns)."""
    from lossbench import launch

    guarded(lambda: launch.compare(list(ctx.args), out))


@app.command(context_settings=HYDRA_ARGS)
def tune(
    ctx: typer.Context,
    trials: int | None = typer.Option(
        None, "--trials", help="Trials per loss (default 12; a grid: floor(N^(1/d)) points per searched key)"
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Output directory (default: comparisons/NAME_tuned_TIME)"),
    source: str | None = typer.Option(
        None,
        "--from",
        help="Skip the search: run at the settings chosen in this tune.json of an earlier tune "
        "(e.g. tuned on a smaller budget)",
    ),
) -> None:
    """A fair comparison: per loss of `losses`, search the learning rate and the loss's own parameter (tau, lam,
    alpha, eps), selected on the validation split only (the final val_score; test is never looked at), then run
    `seeds` at each loss's best setting and write the report, as `compare` does. Arguments are Hydra overrides
    for every run, e.g. `losses=[ce,soft_label_ce] seeds=[0,1,2] train.epochs=6`, and `tune.KEY=VALUE` for the
    search (configs/tune.yaml): `tune.lr=[0.01,0.3]` (default: 0.1x to 10x the config's optim.lr,
    log-uniform), `tune.params.soft_label_ce.tau.high=0.5`, `tune.search=grid`, `tune.seed=1`. The search is
    Optuna's TPE (seeded; optuna 4 or newer) with per-epoch pruning (`tune.pruner=median|halving|none`), else a
    grid. `tune.storage=FILE.journal` or `sqlite:///FILE.db` lets several tune processes (or SLURM jobs) share one
    study each loss (`tune.search_only=true` for all but one). Trials run under OUT/tuning/LOSS/trial_N; OUT/tune.json
    lists every trial and each loss's choice, which summary.md states.
    Search on a small budget, then run the full one at the chosen settings:
    `lossbench tune data.train_size=5000 --out small`, then `lossbench tune --from small/tune.json seeds=[0,1,2]`."""
    from lossbench import tune as tuning

    guarded(lambda: tuning.tune(list(ctx.args), trials, out, source))


@app.command()
def report(
    directory: str = typer.Argument(..., help="A comparison (or any) directory holding run directories"),
    target_score: float | None = typer.Option(
        None,
        "--target-score",
        help="Score target for the time-to-target columns (default: the runs' "
        "report.target_score, else ce's final mean test_score)",
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Equivalence margin: the largest test-score difference that counts as a tie (default: "
        "the runs' report.margin, else 0.02)",
    ),
) -> None:
    """Rebuild the report (summary.md, summary.csv, report.html, figures) from the run directories under DIRECTORY
    (finished or partial)."""
    from lossbench import launch

    guarded(lambda: launch.report(directory, target_score, margin))


@app.command()
def rescore(
    directory: str = typer.Argument(..., help="A comparison (or any) directory holding finished runs"),
    scores: str = typer.Option(..., "--scores", help="The other score table, a CSV (the layout of scores=file)"),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Where the rescored runs and their report go (default: DIRECTORY_rescored_<csv name>)"
    ),
) -> None:
    """What if my table changes? Re-decide and re-score every finished run under DIRECTORY under another score
    table, from its saved predictions.npz, without training; then write the report there, which says which runs
    were trained with another table than the one they are scored on."""
    from lossbench.rescore import rescore as run_rescore

    guarded(lambda: run_rescore(directory, scores, out))


@app.command()
def export(
    directory: str = typer.Argument(..., help="A comparison (or any) directory holding run directories"),
    to: str = typer.Option(..., "--to", help="tensorboard or mlflow"),
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        help="The TensorBoard log directory, or the folder of "
        "the MLflow store (mlflow.db, artifacts/); default DIRECTORY/tensorboard or "
        "DIRECTORY/mlflow",
    ),
) -> None:
    """Replay the runs under DIRECTORY (finished or partial) from disk into TensorBoard event files (per-epoch
    scalars, hparams) or a local MLflow store (a parent run for the comparison, a child per loss and seed with its
    config, metrics and records; the report files on the parent). Exporting again updates the export in place.
    Needs `pip install 'lossbench[tensorboard]'` or `'lossbench[mlflow]'`."""
    from lossbench.export import export as run_export

    guarded(lambda: run_export(directory, to, out))


@app.command()
def resume(
    directory: str = typer.Argument(..., help="A run directory or a comparison directory"),
    trust: list[str] = typer.Option(
        [],
        "--trust",
        help="A component of your own that the recorded config names (e.g. mypkg.MyNet, or a Hydra "
        "key such as hydra.launcher.setup): only lossbench's own are built from a directory unless named here",
    ),
) -> None:
    """Continue an interrupted run from its last checkpoint, or the unfinished runs of a comparison (then
    rewrite its report)."""
    from lossbench import launch

    guarded(lambda: launch.resume(directory, trust))


@app.command()
def losses() -> None:
    """List the registered losses with their parameters."""
    from lossbench.losses import LOSSES, loss_parameters

    width = max(len(name) for name in LOSSES) + 1
    for name, cls in LOSSES.items():
        params = ", ".join(f"{k}={v}" for k, v in loss_parameters(name).items()) or "-"
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:<{width}} {params:<24} {summary}")


@app.command()
def explain(
    scores: str = typer.Option(
        ..., "--scores", help="A score CSV file or a built-in: identity, cifar10_groups, cifar100_superclass"
    ),
    tau: float | None = typer.Option(None, "--tau", help="soft_label_ce temperature (default: the loss's own default)"),
    out: str = typer.Option(".", "--out", "-o", help="Directory for explain_grad_norm.png"),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated class names to keep, in order (identity: or a count N)"
    ),
) -> None:
    """Explain what a score matrix asks of each loss: warnings, what each row rewards, gradient norms at three
    model states, a diagnosis, and a gradient-norm figure."""
    from lossbench.explain import main as explain_main

    guarded(lambda: explain_main(scores, tau, out, classes))


def main() -> None:
    app(prog_name="lossbench")


if __name__ == "__main__":
    sys.exit(main())
