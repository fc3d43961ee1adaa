"""Launching runs through Hydra: `run` (one job, or a user's multirun), `compare` (a losses x seeds multirun,
then the report) and `resume` (a run or a comparison directory).

Typer parses nothing of the Hydra command line: the overrides, `-m` and `hydra/launcher=...` go to `@hydra.main`
untouched. Before launching, the overrides are composed once with the compose API so that bad input fails fast
with one clear line instead of one traceback per job.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
import warnings
from datetime import datetime
from pathlib import Path
from typing import Callable

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, OverrideType, QuotedString
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lossbench import multirun
from lossbench.components import CONFIG_MODULE, group_options
from lossbench.data import load_dataset
from lossbench.errors import EnvironmentFailure, LossbenchError, debug_enabled, one_line, require, require_int
from lossbench.report import build_report
from lossbench.rundir import (
    COMPARE_FILE, CONFIG_FILE, LAYOUT_VERSION, STATUS_FILE, TUNE_FILE, adopt_for_report, claim, find_runs, locked,
    read_config, read_record, read_status, write_record,
)  # fmt: skip
from lossbench.pack import train_packed
from lossbench.train import PATH_KEYS, absolute_path, absolute_paths, build_training, prepare, train_run

log = logging.getLogger("lossbench")

MULTIRUN_FLAGS = ("-m", "--multirun")
DEMO = "experiment=quick"  # what `lossbench compare` runs when given no arguments

# (run directory, status) of each job run in this process; jobs in other processes are read from disk.
finished_jobs: list[tuple[Path, str]] = []


@hydra.main(version_base="1.3", config_path="pkg://lossbench.configs", config_name="config")
def hydra_job(cfg: DictConfig) -> str:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if in_sweep:  # a `run -m` sweep directory becomes lossbench's too, so that `report` may write there
            claim(Path(hydra_cfg.sweep.dir), "comparison")
        claim_job_dir(hydra_cfg)
        status = train_run(cfg, run_dir, resume=bool(cfg.resume))
    except LossbenchError as err:
        if debug_enabled():
            raise
        if not in_sweep:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None  # passes through Hydra's error reporting (a traceback)
        log.error("%s: %s", run_dir, err)  # one bad job must not stop the sweep
        status = "failed"
    finished_jobs.append((run_dir, status))
    return status


def packed_job(cfg: DictConfig) -> tuple[DictConfig, Path] | None:
    """hydra/launcher=packed's task function, called by Hydra once per job: it claims the job's directory as
    hydra_job does and hands the job back (None when its directory is refused); train_jobs then trains them."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        claim(Path(hydra_cfg.sweep.dir), "comparison")
        return cfg, claim_job_dir(hydra_cfg)
    except LossbenchError as err:
        if debug_enabled():
            raise
        log.error("%s: %s", run_dir, err)
        finished_jobs.append((run_dir, "failed"))
        return None


def train_jobs(returns: list[JobReturn], size: int) -> None:
    """Train the jobs that packed_job handed back, packed `size` at a time, and make each job's return value its
    run's final status (failed for a job whose directory was refused)."""
    jobs = [ret.return_value for ret in returns if isinstance(ret.return_value, tuple)]
    statuses = iter(train_packed(jobs, size))
    for ret in returns:
        if isinstance(ret.return_value, tuple):
            run_dir = ret.return_value[1]
            ret.return_value = next(statuses)
            finished_jobs.append((run_dir, ret.return_value))
        else:
            ret.return_value = "failed"


def claim_job_dir(hydra_cfg: DictConfig) -> Path:
    """Claim a Hydra job's output directory as a run. Hydra has already written its own files there (.hydra/,
    the job log): they do not make it foreign."""
    run_dir = Path(hydra_cfg.runtime.output_dir)
    hydra_files = [name for name in (hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log") if name]
    claim(run_dir, "run", ignore=hydra_files)
    return run_dir


HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"  # set to 1, Hydra raises an error that escapes a job instead of printing it


def launch_hydra(args: list[str], job: Callable[[], object] = hydra_job) -> None:
    """Call a @hydra.main job (by default a run's) with `args` as its command line. Hydra prints an error that
    escapes the job function (with a traceback) and exits 1; here it is raised instead, so that the CLI says in
    one line what the user can fix: Hydra's own writes failing (its .hydra/ files on a full disk: exit 1) and
    Hydra's config errors in a sweep's values (exit 2). Anything else (a launcher's failure) is printed with its
    traceback, as Hydra did, and exits 1. LOSSBENCH_DEBUG=1 or HYDRA_FULL_ERROR=1 raise everything."""
    saved_argv, full_error = sys.argv, os.environ.get(HYDRA_FULL_ERROR)
    sys.argv = ["lossbench", *args]
    os.environ[HYDRA_FULL_ERROR] = "1"
    try:
        job()
    except LossbenchError:
        raise
    except Exception as err:
        if debug_enabled() or full_error == "1":
            raise
        if isinstance(err, (HydraException, OmegaConfBaseException)):  # before OSError: a missing config is both
            raise config_error(err) from None
        if isinstance(err, OSError):
            if err.filename is None:  # lossbench's writes name their file (atomic.naming): this was one of Hydra's
                err.filename = "Hydra's files in the run directory (.hydra/, the job log)"
            raise
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        sys.argv = saved_argv
        if full_error is None:
            del os.environ[HYDRA_FULL_ERROR]
        else:
            os.environ[HYDRA_FULL_ERROR] = full_error


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


def hydra_quote(text: str) -> str:
    """`text` as a Hydra override value that reads back exactly: single-quoted (commas, spaces, non-ASCII
    survive), quotes escaped as Hydra's grammar wants, and `${` escaped so that OmegaConf does not interpolate."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("${", "\\${") + "'"


def absolute_overrides(args: list[str], base: Path) -> list[str]:
    """`args` with the relative paths of PATH_KEYS (plain values and sweeps) resolved against `base`, so that
    the comparison records them once and a resume from another directory reads the same files."""
    prefixes = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}
    result = []
    for arg, override in zip(without_multirun_flag(args), parse_overrides(args)):
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        texts = [v.text if isinstance(v, QuotedString) else v for v in values]
        if override.key_or_group not in PATH_KEYS or override.type not in (OverrideType.CHANGE, *prefixes) or not all(
            isinstance(t, str) and t and "${" not in t for t in texts
        ):
            result.append(arg)
            continue
        quoted = ",".join(hydra_quote(absolute_path(t, base)) for t in texts)
        result.append(f"{prefixes.get(override.type, '')}{override.key_or_group}={quoted}")
    return result


def is_task_override(override: Override) -> bool:
    return not override.key_or_group.startswith("hydra")


def compose_config(overrides: list[Override]) -> DictConfig:
    """The job config for the plain (non-sweep, non-hydra) overrides, as a preflight check."""
    check_pack_size(overrides)
    lines = [o.input_line for o in overrides if is_task_override(o) and not o.is_sweep_override()]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose("config", overrides=lines)
    except Exception as err:  # composition errors (an unknown key, an unknown option) are user input errors
        raise config_error(err) from None


def config_error(err: Exception) -> LossbenchError:
    """A config composition error in one line; a missing option (loss=nope) names its group and the options."""
    if isinstance(err, MissingConfigException):
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        return LossbenchError(f"unknown {group} '{option}'; known: {', '.join(err.options or [])}")
    return LossbenchError(one_line(err))


def check_pack_size(overrides: list[Override]) -> None:
    """hydra/launcher=packed's size, which Hydra passes on unchecked: an integer >= 0."""
    for override in overrides:
        if override.key_or_group == "hydra.launcher.size":
            size = override.value()
            require_int(size, "hydra.launcher.size", note=" (0: all runs that can pack together)")
            require(size >= 0, f"hydra.launcher.size must be >= 0 (0: all runs that can pack together), not {size}")


def preflight(cfg: DictConfig) -> None:
    """Everything a job would reject, checked once before any job starts: config values, scores, the loss's
    parameters, the data itself (loaded once; jobs in this process reuse it), the model (with a forward pass),
    the optimiser and the schedule."""
    try:
        cfg = absolute_paths(cfg)  # as a job will see it, so that the job finds this load in the cache
        scores = prepare(cfg)
        data = load_dataset(cfg.data, scores.classes, scores.matrix)
        build_training(cfg, data, steps_per_epoch=1)
    except (LossbenchError, OSError):
        raise
    except Exception as err:  # e.g. omegaconf's MissingMandatoryValue for scores.path=???
        raise LossbenchError(one_line(err)) from None


def claim_output_dirs(overrides: list[Override]) -> None:
    """A `run` into a directory the user named (hydra.run.dir / hydra.sweep.dir) is refused before Hydra writes
    anything there, unless the directory is new, empty or lossbench's."""
    for override in overrides:
        value = override.value()
        kind = {"hydra.run.dir": "run", "hydra.sweep.dir": "comparison"}.get(override.key_or_group)
        if kind and isinstance(value, str) and "${" not in value:
            claim(Path(value), kind)


def checked_losses(cfg: DictConfig) -> list[str]:
    """`losses`: a non-empty list of known losses, each once."""
    require(OmegaConf.is_list(cfg.losses), f"losses must be a list, e.g. losses=[ce,expected_score], not {cfg.losses}")
    names = [str(n) for n in cfg.losses]
    require(len(names) > 0, "losses: the list is empty")
    known = group_options("loss")
    unknown = [name for name in names if name not in known]
    require(not unknown, f"losses: unknown loss(es) {unknown}; known: {', '.join(known)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    require(not twice, f"losses: {twice} listed more than once")
    return names


def checked_seeds(cfg: DictConfig) -> list[int]:
    """`seeds`: a non-empty list of integers, each once."""
    require(OmegaConf.is_list(cfg.seeds), f"seeds must be a list, e.g. seeds=[0,1,2], not {cfg.seeds}")
    seeds = list(cfg.seeds)
    require(len(seeds) > 0, "seeds: the list is empty")
    for seed in seeds:
        require_int(seed, "seeds: each seed")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    require(not twice, f"seeds: {twice} listed more than once")
    return seeds


def comparison_sweep(cfg: DictConfig, overrides: list[Override]) -> list[str]:
    """The seed and loss sweeps of a comparison (unless the user swept `seed` or `loss` directly). Seeds first, so
    the jobs of one seed run one after another: each seed draws its own training subset (data.train_subset_seed),
    which a process then loads once per seed rather than once per job."""
    keys = {o.key_or_group for o in overrides}
    sweep = []
    if "seed" not in keys:
        sweep.append("seed=" + ",".join(str(s) for s in checked_seeds(cfg)))
    if "loss" not in keys:
        sweep.append("loss=" + ",".join(checked_losses(cfg)))
    return sweep


# ---------------------------------------------------------------- commands


def run(args: list[str]) -> int:
    """`lossbench run`: one job, or the user's own multirun with -m. Returns the exit code: 1 when any job
    failed or diverged (named on stderr), from this process or, with -m, from the sweep's run directories.
    Hydra's own flags (--cfg job, --info, -cd DIR ...) go to Hydra as they are, without the preflight."""
    sweep_dir = None
    if not any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        overrides = parse_overrides(args)
        preflight(compose_config(overrides))
        claim_output_dirs(overrides)
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


def compare(args: list[str], out: str | None = None) -> int:
    """`lossbench compare`: every loss of `losses` x every seed of `seeds` (plus any sweeps in args) as one
    Hydra multirun into one comparison directory, then the report. Returns the exit code."""
    cwd = Path.cwd()
    args = absolute_overrides(list(args) or [DEMO], cwd)
    overrides = parse_overrides(args)
    cfg = compose_config(overrides)
    preflight(cfg)
    sweep = comparison_sweep(cfg, overrides)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    comparison = Path(out) if out is not None else Path("comparisons") / f"{cfg.name}_{stamp}"
    claim_comparison(comparison)
    with locked(comparison):
        require(
            not find_runs(comparison) and not (comparison / COMPARE_FILE).exists(),
            f"comparison directory {comparison} already has runs; continue it with "
            f"`lossbench resume {comparison}` or choose another --out",
        )
        record = {"version": LAYOUT_VERSION, "args": without_multirun_flag(args), "cwd": str(cwd), "created": stamp}
        write_record(comparison, record)
        return launch_comparison(comparison, record["args"], overrides, sweep, resume=False)


def claim_comparison(comparison: Path) -> None:
    """Make `comparison` lossbench's comparison directory (new, empty or its own; never a user's folder)."""
    # Hydra resolves a job's output directory twice (its log file's name interpolates it again), so no
    # escaping carries a literal '${' through: refuse it rather than let Hydra interpolate the user's name.
    require("${" not in str(comparison), f"--out {comparison}: a directory name with '${{' cannot pass through "
                                         "Hydra, which would interpolate it; choose another name")  # fmt: skip
    claim(comparison, "comparison")


def launch_comparison(comparison: Path, args: list[str], overrides: list[Override], sweep: list[str],
                      resume: bool) -> int:  # fmt: skip
    """The comparison's multirun (the caller holds its lock), then its report."""
    # Job directories are named by the swept keys only: loss=ce,seed=0 (constant overrides are left out).
    constant = sorted({o.key_or_group for o in overrides if is_task_override(o) and not o.is_sweep_override()})
    hydra_args = [
        "-m",
        *args,
        *sweep,
        f"hydra.sweep.dir={hydra_quote(str(comparison.resolve()))}",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(['resume', *constant])}]",
    ]
    if resume:
        hydra_args.append("resume=true")
    try:
        launch_hydra(hydra_args)
    except KeyboardInterrupt:
        print(f"interrupted; continue with `lossbench resume {comparison}`", file=sys.stderr)
        raise
    except SystemExit as err:
        if not err.code:
            raise
        # Hydra has printed the launcher's error, e.g. a submitit job killed (OOM, preemption) before it returned.
        # The runs that finished stand, the others continue from their checkpoints.
        if find_runs(comparison):
            report_comparison(comparison, partial_ok=True)
        print(f"a job did not finish; continue with `lossbench resume {comparison}`", file=sys.stderr)
        return 1
    return report_comparison(comparison)


def report_comparison(comparison: Path, partial_ok: bool = False, target_score: float | None = None,
                      margin: float | None = None) -> int:  # fmt: skip
    """Write the report and say which runs did not finish. Exit code: 0 when any run finished (or partial_ok),
    2 when every run failed on bad input, 1 otherwise (all diverged, say, or the disk is full). target_score: see
    build_report."""
    statuses = {run_dir: read_status(run_dir) for run_dir in find_runs(comparison)}
    if not statuses:  # jobs ran, and none could write even its first status.json: a full or read-only disk
        raise EnvironmentFailure(f"{comparison}: no run could record its start ({STATUS_FILE}); the errors above "
                                 "say why")  # fmt: skip
    failed = {d: s for d, s in statuses.items() if s["status"] != "finished"}
    if len(failed) < len(statuses) or any(s["epoch"] > 0 for s in statuses.values()):
        report = build_report(comparison, target_score, margin)
        print(report.console)
        for warning in report.warnings:  # also in summary.md; repeated here where the user is looking
            print(f"warning: {warning}", file=sys.stderr)
        print(f"report: {comparison} (summary.md, report.html)")
    for run_dir, status in failed.items():
        print(f"{run_dir}: {status['status']} {status.get('message', '')}".rstrip(), file=sys.stderr)
    if len(failed) < len(statuses) or partial_ok:
        return 0
    print(f"error: no run of {comparison} finished", file=sys.stderr)
    return 2 if all(s["status"] == "failed" and not s.get("environment") for s in failed.values()) else 1


def report(directory: str, target_score: float | None = None, margin: float | None = None) -> int:
    """`lossbench report DIR`: rebuild the report of a comparison (or of any lossbench directory of runs)
    while holding its lock, so that it never races a run, a resume or another report."""
    path = Path(directory)
    require(path.is_dir(), f"{path}: directory not found")
    adopt_for_report(path)
    with locked(path):
        return report_comparison(path, partial_ok=True, target_score=target_score, margin=margin)


def resume(directory: str) -> int:
    """Continue a run directory from its checkpoint, or the unfinished runs of a comparison directory."""
    path = Path(directory)
    require(path.is_dir(), f"{path}: directory not found")
    if (path / COMPARE_FILE).exists():
        return resume_comparison(path)
    # A tune's seeds are several sweeps (one per loss at its own setting), which compare.json cannot replay.
    require(not (path / TUNE_FILE).exists(),
            f"{path} was made by `lossbench tune`, which cannot be resumed as a whole: resume each interrupted run "
            f"(`lossbench resume {path}/<run>`) and rebuild the report (`lossbench report {path}`); runs that never "
            f"started need a new `lossbench tune --from {path / TUNE_FILE} ... --out NEW`")  # fmt: skip
    require((path / CONFIG_FILE).exists(),
            f"{path}: neither a run directory ({CONFIG_FILE}) nor a comparison ({COMPARE_FILE})")  # fmt: skip
    status = train_run(read_config(path), path, resume=True)
    return 0 if status == "finished" else 1


def resume_comparison(comparison: Path) -> int:
    """Continue the unfinished runs of a comparison with the overrides compare.json recorded: its paths are
    absolute, so nothing depends on the directory resume is started from."""
    claim(comparison, "comparison")
    with locked(comparison):
        record = read_record(comparison)
        args = record["args"]
        if "cwd" not in record:  # written before paths were recorded absolute: the best guess is here
            args = absolute_overrides(args, Path.cwd())
            if args != record["args"]:
                warnings.warn(f"{comparison / COMPARE_FILE} records relative paths (an older lossbench); "
                              f"reading them from {Path.cwd()}")  # fmt: skip
        overrides = parse_overrides(args)
        cfg = compose_config(overrides)
        preflight(cfg)
        return launch_comparison(comparison, args, overrides, comparison_sweep(cfg, overrides), resume=True)
