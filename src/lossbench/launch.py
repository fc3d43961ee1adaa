"""Launching runs through Hydra: `run` (one job, or a user's multirun), `compare` (a losses x seeds multirun,
then the report) and `resume` (a run or a comparison directory).

Typer parses nothing of the Hydra command line: the overrides, `-m` and `hydra/launcher=...` go to `@hydra.main`
untouched. Before launching, the overrides are composed once with the compose API so that bad input fails fast
with one clear line instead of one traceback per job.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lossbench import multirun
from lossbench.components import CONFIG_MODULE, group_options
from lossbench.data import load_dataset
from lossbench.errors import LossbenchError, require
from lossbench.report import build_report, find_runs
from lossbench.train import CONFIG_FILE, absolute_paths, build_training, prepare, read_status, train_run

log = logging.getLogger("lossbench")

COMPARE_FILE = "compare.json"
MULTIRUN_FLAGS = ("-m", "--multirun")
DEMO = "experiment=quick"  # what `lossbench compare` runs when given no arguments

# (run directory, status) of each job run in this process; jobs in other processes are read from disk.
finished_jobs: list[tuple[Path, str]] = []


@hydra.main(version_base="1.3", config_path="pkg://lossbench.configs", config_name="config")
def hydra_job(cfg: DictConfig) -> str:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        status = train_run(cfg, run_dir, resume=bool(cfg.resume))
    except LossbenchError as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None  # passes through Hydra's error reporting, which would add a traceback
        log.error("%s: %s", run_dir, err)  # one bad job must not stop the sweep
        status = "failed"
    finished_jobs.append((run_dir, status))
    return status


def launch_hydra(args: list[str], job: Callable[[], object] = hydra_job) -> None:
    """Call a @hydra.main job (by default a run's) with `args` as its command line."""
    saved = sys.argv
    sys.argv = ["lossbench", *args]
    try:
        job()
    finally:
        sys.argv = saved


# ---------------------------------------------------------------- overrides and preflight


def without_multirun_flag(args: list[str]) -> list[str]:
    return [a for a in args if a not in MULTIRUN_FLAGS]


def parse_overrides(args: list[str]) -> list[Override]:
    """The parsed key=value overrides (-m/--multirun ignored); other flags are refused."""
    words = without_multirun_flag(args)
    flags = [a for a in words if a.startswith("-")]
    require(not flags, f"unsupported option(s) {flags}: compare takes Hydra overrides (key=value) and -m")
    try:
        return OverridesParser.create().parse_overrides(words)
    except Exception as err:  # hydra's OverrideParseException: a malformed key=value
        raise LossbenchError(one_line(err)) from None


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def is_task_override(override: Override) -> bool:
    return not override.key_or_group.startswith("hydra")


def compose_config(overrides: list[Override]) -> DictConfig:
    """The job config for the plain (non-sweep, non-hydra) overrides, as a preflight check."""
    lines = [o.input_line for o in overrides if is_task_override(o) and not o.is_sweep_override()]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose("config", overrides=lines)
    except MissingConfigException as err:  # e.g. loss=nope: name the group and its options on one line
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        raise LossbenchError(f"unknown {group} '{option}'; known: {', '.join(err.options or [])}") from None
    except Exception as err:  # other composition errors (an unknown key ...) are user input errors too
        raise LossbenchError(one_line(err)) from None


def preflight(cfg: DictConfig) -> None:
    """Everything a job would reject, checked once before any job starts: config values, scores, the loss's
    parameters, the data itself (loaded once; jobs in this process reuse it), the model (with a forward pass),
    the optimiser and the schedule."""
    try:
        cfg = absolute_paths(cfg)  # as a job will see it, so that the job finds this load in the cache
        scores = prepare(cfg)
        data = load_dataset(cfg.data, scores.classes, scores.matrix)
        build_training(cfg, data, steps_per_epoch=1)
    except LossbenchError:
        raise
    except Exception as err:  # e.g. omegaconf's MissingMandatoryValue for scores.path=???
        raise LossbenchError(one_line(err)) from None


# ---------------------------------------------------------------- commands


def run(args: list[str]) -> int:
    """`lossbench run`: one job, or the user's own multirun with -m. Returns the exit code: 1 when any job
    failed or diverged (named on stderr), from this process or, with -m, from the sweep's run directories.
    Hydra's own flags (--cfg job, --info, -cd DIR ...) go to Hydra as they are, without the preflight."""
    sweep_dir = None
    if not any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        overrides = parse_overrides(args)
        preflight(compose_config(overrides))
        if any(a in MULTIRUN_FLAGS for a in args):  # jobs of other processes are read from disk afterwards
            sweep_dir = multirun.resolved_sweep_dir(overrides)
            args = [*args, multirun.pin_sweep_dir(sweep_dir)]
    finished_jobs.clear()
    started = time.time()
    launch_hydra(args)
    bad = {d.resolve(): s for d, s in finished_jobs if s != "finished"}
    bad.update(multirun.unsuccessful_runs(sweep_dir, started) if sweep_dir else {})
    for run_dir, status in bad.items():
        print(f"{run_dir}: {status}", file=sys.stderr)
    return 1 if bad else 0


def compare(args: list[str], out: str | None = None, resume: bool = False) -> int:
    """`lossbench compare`: every loss of `losses` x every seed of `seeds` (plus any sweeps in args) as one
    Hydra multirun into one comparison directory, then the report. Returns the exit code."""
    args = list(args) or [DEMO]
    overrides = parse_overrides(args)
    cfg = compose_config(overrides)
    preflight(cfg)
    keys = {o.key_or_group for o in overrides}
    sweep = []
    if "loss" not in keys:
        known = group_options("loss")
        unknown = [name for name in cfg.losses if name not in known]
        require(not unknown, f"losses: unknown loss(es) {unknown}; known: {', '.join(known)}")
        require(len(cfg.losses) > 0, "losses: the list is empty")
        sweep.append("loss=" + ",".join(cfg.losses))
    if "seed" not in keys:
        require(len(cfg.seeds) > 0, "seeds: the list is empty")
        sweep.append("seed=" + ",".join(str(int(s)) for s in cfg.seeds))

    user_args = without_multirun_flag(args)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    comparison = Path(out) if out else Path("comparisons") / f"{cfg.name}_{stamp}"
    if not resume:
        require(
            not find_runs(comparison) and not (comparison / COMPARE_FILE).exists(),
            f"comparison directory {comparison} already has runs; continue it with "
            f"`lossbench resume {comparison}` or choose another --out",
        )
        comparison.mkdir(parents=True, exist_ok=True)
        (comparison / COMPARE_FILE).write_text(json.dumps({"args": user_args, "created": stamp}, indent=2) + "\n")
    # Job directories are named by the swept keys only: loss=ce,seed=0 (constant overrides are left out).
    constant = sorted({o.key_or_group for o in overrides if is_task_override(o) and not o.is_sweep_override()})
    hydra_args = [
        "-m",
        *user_args,
        *sweep,
        f"hydra.sweep.dir={json.dumps(str(comparison))}",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(['resume', *constant])}]",
    ]
    if resume:
        hydra_args.append("resume=true")
    try:
        launch_hydra(hydra_args)
    except KeyboardInterrupt:
        print(f"interrupted; continue with `lossbench resume {comparison}`", file=sys.stderr)
        raise SystemExit(130) from None
    return report_comparison(comparison)


def report_comparison(comparison: Path, partial_ok: bool = False) -> int:
    """Write the report and say which runs did not finish. Exit code: 0 when any run finished (or partial_ok),
    2 when every run failed on bad input, 1 otherwise (all diverged, say)."""
    statuses = {run_dir: read_status(run_dir) for run_dir in find_runs(comparison)}
    require(statuses, f"{comparison}: no run directories found")
    failed = {d: s for d, s in statuses.items() if s["status"] != "finished"}
    if len(failed) < len(statuses) or any(s["epoch"] > 0 for s in statuses.values()):
        print(build_report(comparison).markdown)
        print(f"report: {comparison}")
    for run_dir, status in failed.items():
        print(f"{run_dir}: {status['status']} {status.get('message', '')}".rstrip(), file=sys.stderr)
    if len(failed) < len(statuses) or partial_ok:
        return 0
    print(f"error: no run of {comparison} finished", file=sys.stderr)
    return 2 if all(s["status"] == "failed" for s in failed.values()) else 1


def resume(directory: str) -> int:
    """Continue a run directory from its checkpoint, or the unfinished runs of a comparison directory."""
    path = Path(directory)
    require(path.is_dir(), f"{path}: directory not found")
    if (path / COMPARE_FILE).exists():
        saved = json.loads((path / COMPARE_FILE).read_text())
        return compare(saved["args"], out=str(path), resume=True)
    require((path / CONFIG_FILE).exists(), f"{path}: neither a run directory ({CONFIG_FILE}) nor a comparison ({COMPARE_FILE})")
    status = train_run(OmegaConf.load(path / CONFIG_FILE), path, resume=True)
    return 0 if status == "finished" else 1
