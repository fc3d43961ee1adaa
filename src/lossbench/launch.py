"""Launching runs through Hydra: `run` (one job, or a user's multirun), `compare` (a losses x seeds multirun,
then the report) and `resume` (a run or a comparison directory).

Typer parses nothing of the Hydra command line: the overrides, `-m` and `hydra/launcher=...` go to Hydra (through
hydra_bridge) untouched. Before launching, the overrides are composed once with the compose API so that bad input
fails fast with one clear line instead of one traceback per job.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, OverrideType, QuotedString
from hydra.core.utils import JobReturn
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lossbench import multirun, trust
from lossbench.atomic import remove_stale_temporaries
from lossbench.checks import check_seed
from lossbench.components import CONFIG_MODULE, group_options
from lossbench.config import PATH_KEYS, absolute_path, absolute_paths, prepare
from lossbench.data.loading import load_dataset
from lossbench.errors import EnvironmentFailure, LossbenchError, debug_enabled, one_line, require, require_int
from lossbench.hydra_bridge import config_error, hydra_quote, hydra_value, run_command, run_task, sweep_command
from lossbench.inputs import SCORES_KEY, changed_inputs, check_pinned, pin_scores, scores_file
from lossbench.lifeline import exit_if_orphaned, follow_launcher
from lossbench.pack import train_packed
from lossbench.report import build_report, flatten
from lossbench.rundir import (
    COMPARE_FILE,
    CONFIG_FILE,
    LAYOUT_VERSION,
    STATUS_FILE,
    TUNE_FILE,
    adopt_for_report,
    check_comparisons_free,
    claim,
    find_runs,
    locked,
    read_config,
    read_record,
    read_status,
    require_writable,
    write_record,
)
from lossbench.step import build_training
from lossbench.train import train_run

log = logging.getLogger("lossbench")

MULTIRUN_FLAGS = ("-m", "--multirun")
DEMO = "experiment=quick"  # what `lossbench compare` runs when given no arguments

# (run directory, status) of each job run in this process; jobs in other processes are read from disk.
finished_jobs: list[tuple[Path, str]] = []


def run_job(cfg: DictConfig) -> str:
    """A run's job (`run`, `compare`, `resume`, a tune's final seeds): train one run into its Hydra directory."""
    follow_launcher()  # in a launcher's worker process: stop once the command that started it is gone
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if in_sweep:  # a `run -m` sweep directory becomes lossbench's too, so that `report` may write there
            claim(Path(hydra_cfg.sweep.dir), "comparison")
        claim_job_dir(hydra_cfg)
        # Relative paths mean what they meant where the command started (as the preflight read them), also when
        # hydra.job.chdir=true has moved the job into its run directory.
        cfg = absolute_paths(cfg, Path(hydra_cfg.runtime.cwd))
        status = train_run(cfg, run_dir, resume=bool(cfg.resume))
    except LossbenchError as err:
        if debug_enabled():
            raise
        if not in_sweep:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None  # passes through Hydra's error reporting (a traceback)
        log.error("%s: %s", run_dir, err)  # one bad job must not stop the sweep
        status = "failed"
    finally:
        exit_if_orphaned()
    finished_jobs.append((run_dir, status))
    return status


def packed_job(cfg: DictConfig) -> tuple[DictConfig, Path] | None:
    """hydra/launcher=packed's task function, called by Hydra once per job: it claims the job's directory as
    run_job does and hands the job back (None when its directory is refused); train_jobs then trains them."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        claim(Path(hydra_cfg.sweep.dir), "comparison")
        return absolute_paths(cfg, Path(hydra_cfg.runtime.cwd)), claim_job_dir(hydra_cfg)
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


def absolute_overrides(args: list[str], base: Path) -> list[str]:
    """`args` with the relative paths of PATH_KEYS (plain values and sweeps) resolved against `base`, so that
    the comparison records them once and a resume from another directory reads the same files."""
    prefixes = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}
    result = []
    for arg, override in zip(without_multirun_flag(args), parse_overrides(args)):
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        texts = [v.text if isinstance(v, QuotedString) else v for v in values]
        if (
            override.key_or_group not in PATH_KEYS
            or override.type not in (OverrideType.CHANGE, *prefixes)
            or not all(isinstance(t, str) and t and "${" not in t for t in texts)
        ):
            result.append(arg)
            continue
        quoted = ",".join(hydra_quote(absolute_path(t, base)) for t in texts)
        result.append(f"{prefixes.get(override.type, '')}{override.key_or_group}={quoted}")
    return result


def resolved_overrides(args: list[str]) -> list[str]:
    """`args` (without -m) with the interpolations in task overrides' values (`${oc.env:DATA}`, `${now:...}`, a
    reference to another key) resolved now, once, so that a record holds the values the runs use and a resume
    with another environment or from another directory cannot change them."""
    words = without_multirun_flag(args)
    overrides = parse_overrides(words)
    changing = (OverrideType.CHANGE, OverrideType.ADD, OverrideType.FORCE_ADD)
    todo = [i for i, o in enumerate(overrides) if is_task_override(o) and o.type in changing and "${" in words[i]]
    if not todo:
        return words
    context = OmegaConf.create(OmegaConf.to_container(compose_config(overrides)))
    result = list(words)
    prefixes = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}
    for i in todo:
        override = overrides[i]
        value = override.value()
        choices = value.list if isinstance(value, ChoiceSweep) else [value]
        texts = []
        for choice in choices:
            probe = context.copy()
            try:
                OmegaConf.update(
                    probe,
                    override.key_or_group,
                    choice.text if isinstance(choice, QuotedString) else choice,
                    force_add=True,
                    merge=False,
                )
                found = OmegaConf.select(probe, override.key_or_group, throw_on_resolution_failure=True)
                found = OmegaConf.to_container(found, resolve=True) if OmegaConf.is_config(found) else found
            except Exception as err:  # an unset variable, an unknown resolver
                raise LossbenchError(
                    f"{override.input_line}: cannot resolve its interpolation now "
                    f"({one_line(err)}); a record must hold the value the runs use"
                ) from None
            texts.append(hydra_value(found))
        result[i] = f"{prefixes.get(override.type, '')}{override.key_or_group}={','.join(texts)}"
    return result


def pinned_scores(args: list[str], directory: Path) -> list[str]:
    """`args` (absolute paths, no -m) with every score table file copied into directory/inputs/ and named by
    its copy, so that every run, now or resumed, reads the table as it was when the command started. A table
    that the config names without an override (an experiment's) gets an override naming its copy."""
    words = without_multirun_flag(args)
    overrides = parse_overrides(words)
    prefixes = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}
    result, named = [], False
    for arg, override in zip(words, overrides):
        if override.key_or_group != SCORES_KEY or override.type not in (OverrideType.CHANGE, *prefixes):
            result.append(arg)
            continue
        named = True
        value = override.value()
        choices = value.list if isinstance(value, ChoiceSweep) else [value]
        texts = [c.text if isinstance(c, QuotedString) else c for c in choices]
        copies = [str(pin_scores(Path(t), directory)) if isinstance(t, str) and Path(t).is_file() else t for t in texts]
        result.append(f"{prefixes.get(override.type, '')}{SCORES_KEY}={','.join(hydra_value(c) for c in copies)}")
    if not named:
        table = scores_file(absolute_paths(compose_config(overrides)))
        if table is not None and table.is_file():
            result.append(f"{SCORES_KEY}={hydra_quote(str(pin_scores(table, directory)))}")
    return result


def is_task_override(override: Override) -> bool:
    return not override.key_or_group.startswith("hydra")


def compose_config(overrides: list[Override]) -> DictConfig:
    """The job config for the plain (non-sweep, non-hydra) overrides, as a preflight check."""
    check_pack_size(overrides)
    check_sweeps(overrides)
    lines = [o.input_line for o in overrides if is_task_override(o) and not o.is_sweep_override()]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose("config", overrides=lines)
    except Exception as err:  # composition errors (an unknown key, an unknown option) are user input errors
        raise config_error(err) from None


def check_sweeps(overrides: list[Override]) -> None:
    """A value listed twice in a sweep (`seed=0,0`, `optim.lr=0.1,0.10`, `loss=ce,'ce'`) is refused: it would
    run the same jobs twice into one directory."""
    for override in overrides:
        value = override.value() if override.is_sweep_override() else None
        if not isinstance(value, ChoiceSweep):
            continue
        seen, twice = {}, []
        for choice in value.list:
            text = choice.text if isinstance(choice, QuotedString) else choice
            key = float(text) if isinstance(text, (int, float)) and not isinstance(text, bool) else repr(text)
            if key in seen and seen[key] not in twice:
                twice.append(seen[key])
            seen.setdefault(key, text)
        require(not twice, f"{override.key_or_group}: {', '.join(map(str, twice))} listed more than once in the sweep")


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


def claimed_output_dir(args: list[str], overrides: list[Override]) -> tuple[list[str], Path]:
    """A `run`'s output directory (hydra.run.dir, or hydra.sweep.dir with -m), its interpolations resolved now,
    claimed before Hydra writes anything there (new, empty or lossbench's: never a user's folder; not inside a
    comparison that another process works on). Returns the args pinned to that directory (with -m, the score
    table pinned in it too: every job of the sweep reads one copy), and the directory."""
    sweep = any(a in MULTIRUN_FLAGS for a in args)
    directory = multirun.resolved_sweep_dir(overrides, "sweep" if sweep else "run")
    require(
        "${" not in str(directory),
        f"hydra.{'sweep' if sweep else 'run'}.dir {directory}: a directory name "
        "with '${' cannot pass through Hydra, which would interpolate it",
    )
    check_comparisons_free(directory, itself=sweep)
    claim(directory, "comparison" if sweep else "run")
    if not sweep:
        return run_command(args, directory), directory
    return sweep_command(pinned_scores(args, directory), directory), directory


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
        check_seed(seed, "seeds: each seed")
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
        multirun_flag = any(a in MULTIRUN_FLAGS for a in args)
        args, directory = claimed_output_dir(args, overrides)
        sweep_dir = directory if multirun_flag else None  # jobs of other processes are read from disk afterwards
    finished_jobs.clear()
    started = time.time()
    run_task(run_job, args)
    bad = {d.resolve(): s for d, s in finished_jobs if s != "finished"}
    bad.update(multirun.unsuccessful_runs(sweep_dir, started) if sweep_dir else {})
    for run_dir, status in bad.items():
        print(f"{run_dir}: {status}", file=sys.stderr)
    return 1 if bad else 0


def compare(args: list[str], out: str | None = None) -> int:
    """`lossbench compare`: every loss of `losses` x every seed of `seeds` (plus any sweeps in args) as one
    Hydra multirun into one comparison directory, then the report. Returns the exit code."""
    cwd = Path.cwd()
    args = absolute_overrides(resolved_overrides(list(args) or [DEMO]), cwd)
    overrides = parse_overrides(args)
    cfg = compose_config(overrides)
    preflight(cfg)
    sweep = comparison_sweep(cfg, overrides)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    comparison = (
        Path(out).expanduser() if out is not None else new_directory(Path("comparisons"), f"{cfg.name}_{stamp}")
    )
    claim_comparison(comparison)
    with locked(comparison):
        require(
            not find_runs(comparison) and not (comparison / COMPARE_FILE).exists(),
            f"comparison directory {comparison} already has runs; continue it with "
            f"`lossbench resume {comparison}` or choose another --out",
        )
        args = pinned_scores(args, comparison)
        record = {"version": LAYOUT_VERSION, "args": args, "cwd": str(cwd), "created": stamp}
        write_record(comparison, record)
        return launch_comparison(comparison, record["args"], parse_overrides(args), sweep, resume=False)


def new_directory(parent: Path, name: str) -> Path:
    """A directory made now under parent, named `name` or, when that exists (another command started in the same
    second), `name_2`, `name_3` ...: made with one mkdir each, so two processes never get the same one."""
    parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 1000):
        path = parent / (name if number == 1 else f"{name}_{number}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise EnvironmentFailure(f"{parent}: {name} and 998 more names are taken; choose --out")


def claim_comparison(comparison: Path) -> None:
    """Make `comparison` lossbench's comparison directory (new, empty or its own; never a user's folder)."""
    # Hydra resolves a job's output directory twice (its log file's name interpolates it again), so no
    # escaping carries a literal '${' through: refuse it rather than let Hydra interpolate the user's name.
    require(
        "${" not in str(comparison),
        f"--out {comparison}: a directory name with '${{' cannot pass through "
        "Hydra, which would interpolate it; choose another name",
    )
    claim(comparison, "comparison")


def launch_comparison(
    comparison: Path, args: list[str], overrides: list[Override], sweep: list[str], resume: bool
) -> int:
    """The comparison's multirun (the caller holds its lock), then its report."""
    # Job directories are named by the swept keys only: loss=ce,seed=0 (constant overrides are left out).
    constant = sorted({o.key_or_group for o in overrides if is_task_override(o) and not o.is_sweep_override()})
    hydra_args = sweep_command(args, comparison.resolve(), sweep, name_by=["resume", *constant])
    if resume:
        hydra_args.append("resume=true")
    try:
        run_task(run_job, hydra_args)
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


def report_comparison(
    comparison: Path, partial_ok: bool = False, target_score: float | None = None, margin: float | None = None
) -> int:
    """Write the report and say which runs did not finish. Exit code: 0 when any run finished (or partial_ok),
    2 when every run failed on bad input, 1 otherwise (all diverged, say, or the disk is full). target_score: see
    build_report."""
    remove_stale_temporaries(comparison)  # a report killed while writing a figure left its temporary file
    statuses = {run_dir: read_status(run_dir) for run_dir in find_runs(comparison)}
    if not statuses:  # jobs ran, and none could write even its first status.json: a full or read-only disk
        raise EnvironmentFailure(
            f"{comparison}: no run could record its start ({STATUS_FILE}); the errors above say why"
        )
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


def resume(directory: str, trusted: list[str] | tuple[str, ...] = ()) -> int:
    """Continue a run directory from its checkpoint, or the unfinished runs of a comparison directory. Only
    lossbench's own components, and those named in `trusted` (`--trust`), are built from the recorded config."""
    path = Path(directory)
    require(path.is_dir(), f"{path}: directory not found")
    if (path / COMPARE_FILE).exists():
        return resume_comparison(path, trusted)
    # A tune's seeds are several sweeps (one per loss at its own setting), which compare.json cannot replay.
    require(
        not (path / TUNE_FILE).exists(),
        f"{path} was made by `lossbench tune`, which cannot be resumed as a whole: resume each interrupted run "
        f"(`lossbench resume {path}/<run>`) and rebuild the report (`lossbench report {path}`); runs that never "
        f"started need a new `lossbench tune --from {path / TUNE_FILE} ... --out NEW`",
    )
    require(
        (path / CONFIG_FILE).exists(),
        f"{path}: neither a run directory ({CONFIG_FILE}) nor a comparison ({COMPARE_FILE})",
    )
    cfg = read_config(path)
    trust.check_config(cfg, str(path / CONFIG_FILE), trusted, resume_command(path))
    check_comparisons_free(path)  # not while its comparison is being run, resumed or reported
    if read_status(path)["status"] not in ("finished", "diverged"):
        require_writable(path)
    status = train_run(cfg, path, resume=True)
    return 0 if status == "finished" else 1


def resume_command(path: Path) -> str:
    return f"lossbench resume {shlex.quote(str(path))}"


def check_recorded_overrides(
    overrides: list[Override], source: str, trusted: list[str] | tuple[str, ...], command: str
) -> None:
    """Refuse recorded overrides (compare.json's) that would make lossbench call what is not its own, unless the
    user names it again (`trusted`): a `_target_` set by value, one a composed config holds that no config group
    of lossbench's or of an installed Hydra plugin names, and the Hydra settings that run commands. Checked
    before anything is composed into a job or launched."""
    trusted = set(trusted)
    for override in overrides:
        key = override.key_or_group
        if trust.is_code_key(key) and key not in trusted:
            raise LossbenchError(
                f"{source} sets {key}, which makes Hydra run code or commands of its own; a "
                f"record read from disk is resumed with it only when you name it again: "
                f"`{command} --trust {key}` (only if you trust it)"
            )
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        found = {}
        for index, item in enumerate(values):
            item = item.text if isinstance(item, QuotedString) else item
            if key == trust.TARGET or key.endswith("." + trust.TARGET):
                found[key if len(values) == 1 else f"{key}[{index}]"] = str(item)
            found.update(trust.targets(item, key + "."))
        bad = trust.untrusted(found, trusted)
        if bad:
            raise trust.refusal(source, *next(iter(bad.items())), command)
    # What the groups the record chooses name (lossbench's, an installed launcher's): its own, as it were.
    choices = [
        o.input_line
        for o in overrides
        if "." not in o.key_or_group
        and not o.is_sweep_override()
        and isinstance(o.value(), str)
        and "${" not in o.value()
    ]
    lines = [o.input_line for o in overrides if not o.is_sweep_override()]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            own = trust.targets(compose("config", overrides=choices, return_hydra_config=True)).values()
            found = trust.targets(compose("config", overrides=lines, return_hydra_config=True))
    except Exception as err:
        raise config_error(err) from None
    bad = trust.untrusted(found, trusted, own)
    if bad:
        raise trust.refusal(source, *next(iter(bad.items())), command)


@contextmanager
def started_in(comparison: Path, cwd: object) -> Iterator[Path]:
    """Work in the directory a comparison was started in (when it still exists), yielding the comparison's path
    as seen from there; the current directory is restored afterwards."""
    if not isinstance(cwd, str) or not Path(cwd).is_dir() or Path(cwd).resolve() == Path.cwd().resolve():
        yield comparison
        return
    here = Path.cwd()
    absolute = comparison.resolve()
    os.chdir(cwd)
    try:
        yield absolute
    finally:
        os.chdir(here)


def swept_keys(overrides: list[Override], cfg: DictConfig) -> set[str]:
    """The flattened config keys a comparison's sweeps set (a group's: every key its options change)."""
    lines = [o.input_line for o in overrides if is_task_override(o) and not o.is_sweep_override()]
    swept = {"seed", "resume", "loss"}  # a comparison's own sweep (comparison_sweep)
    base = flatten_config(cfg)
    for override in overrides:
        if not (is_task_override(override) and override.is_sweep_override()):
            continue
        key = override.key_or_group
        swept.add(key)
        if "." in key:
            continue
        choices = override.value().list if override.is_sweep_override() else [override.value()]
        for choice in choices:
            try:
                with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
                    other = flatten_config(compose("config", overrides=[*lines, f"{key}={choice}"]))
            except Exception:  # a choice that does not compose alone: its group's keys all count as swept
                continue
            swept |= {k for k in set(base) | set(other) if base.get(k, None) != other.get(k, None)}
    return swept


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    return {k: str(v) for k, v in flatten(OmegaConf.to_container(absolute_paths(cfg))).items()}


def check_unchanged(comparison: Path, overrides: list[Override], cfg: DictConfig) -> None:
    """Refuse to resume a comparison whose inputs changed since its runs started: a pinned score table edited, a
    data file or folder changed, or a value its recorded overrides now compose to differently (an interpolation
    recorded by an older lossbench, a relative default path read from another directory). Its finished runs and
    the runs this resume would start would otherwise use two different inputs."""
    for override in overrides:
        if override.key_or_group == SCORES_KEY:
            value = override.value()
            for choice in value.list if isinstance(value, ChoiceSweep) else [value]:
                check_pinned(Path(str(choice.text if isinstance(choice, QuotedString) else choice)))
    problems = []
    swept = {k for k in swept_keys(overrides, cfg)}
    now = flatten_config(cfg)
    for run_dir in find_runs(comparison):
        problems += [f"{run_dir.name}: {problem}" for problem in changed_inputs(run_dir)]
        try:
            recorded = {k: str(v) for k, v in flatten_config(read_config(run_dir)).items()}
        except LossbenchError:
            continue  # a damaged config.yaml: its job says so
        differ = [
            k
            for k in sorted(set(now) & set(recorded))
            if now[k] != recorded[k] and not any(k == s or k.startswith(s + ".") for s in swept)
        ]
        problems += [
            f"{run_dir.name}/{CONFIG_FILE} records {k}={recorded[k]}, the record now gives {now[k]}" for k in differ[:2]
        ]
    require(
        not problems,
        f"{comparison}: an input changed since its runs started ({'; '.join(problems[:3])}"
        f"{' ...' if len(problems) > 3 else ''}); resuming would mix two inputs in one comparison: "
        "restore them, or start a new comparison",
    )


def resume_comparison(comparison: Path, trusted: list[str] | tuple[str, ...] = ()) -> int:
    """Continue the unfinished runs of a comparison with the overrides compare.json recorded: its paths are
    absolute, and a relative default path (an experiment's data.root) is read from the directory the comparison
    started in, so nothing depends on the directory resume is started from."""
    claim(comparison, "comparison")
    with locked(comparison), started_in(comparison, read_record(comparison).get("cwd")) as comparison:
        record = read_record(comparison)
        args = record["args"]
        if "cwd" not in record:  # written before paths were recorded absolute: the best guess is here
            args = absolute_overrides(args, Path.cwd())
            if args != record["args"]:
                warnings.warn(
                    f"{comparison / COMPARE_FILE} records relative paths (an older lossbench); "
                    f"reading them from {Path.cwd()}",
                    stacklevel=2,
                )
        overrides = parse_overrides(args)
        check_recorded_overrides(overrides, str(comparison / COMPARE_FILE), trusted, resume_command(comparison))
        cfg = compose_config(overrides)
        check_unchanged(comparison, overrides, cfg)
        for run_dir in find_runs(comparison):  # Hydra writes into a run's folder before any of lossbench's code
            if read_status(run_dir)["status"] not in ("finished", "diverged"):
                require_writable(run_dir)
        preflight(cfg)
        return launch_comparison(comparison, args, overrides, comparison_sweep(cfg, overrides), resume=True)
