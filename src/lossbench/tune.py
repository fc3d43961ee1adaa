"""`lossbench tune`: a fair comparison, every loss at its own best learning rate and parameter.

Per loss of `losses`, trials search the learning rate (log-uniform) and the loss's own parameter (its range in
configs/tune.yaml) with Optuna's TPE (seeded, --trials per loss, asked and told here; the study and the pruning in
lossbench.study), each epoch's val_score reported to a pruner that stops unpromising trials; or a grid when Optuna
is absent. Hydra composes each trial's config and launches it (any launcher). Each trial is an ordinary run under
DIR/tuning/<loss>/trial_<n>; its objective is the final val_score, so selection never looks at test data. Then the
seeds run at each loss's chosen setting into DIR, named as a comparison's runs (loss=<name>,seed=<s>), and the
report is written as for a comparison. DIR/tune.json records every trial (setting, status, val_score) and each
loss's choice; DIR/tuned.md (appended to summary.md by the report) states the choices.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from lossbench import study as studies
from lossbench.atomic import write_atomic
from lossbench.checks import is_finite_number
from lossbench.components import CONFIG_MODULE
from lossbench.config import absolute_paths, prepare
from lossbench.errors import LossbenchError, one_line, require
from lossbench.hydra_bridge import run_task, setting, sweep, sweep_command
from lossbench.launch import (
    checked_losses,
    checked_seeds,
    claim_comparison,
    claim_job_dir,
    compose_config,
    new_directory,
    parse_overrides,
    pinned_scores,
    preflight,
    report_comparison,
    resolved_overrides,
    run_job,
)
from lossbench.lifeline import exit_if_orphaned, follow_launcher
from lossbench.rundir import (
    TUNE_FILE,
    TUNED_FILE,
    TUNING_DIR,
    final_metric,
    find_runs,
    locked,
    read_config,
    read_status,
    read_tune_record,
    write_status,
    write_tune_record,
)
from lossbench.study import OBJECTIVE, PRUNED, PRUNERS, optuna_installed
from lossbench.train import train_run

log = logging.getLogger("lossbench")

SETTINGS_FILE = "tune.yaml"
PREFIX = "tune."  # command-line overrides of configs/tune.yaml
LR = "optim.lr"
METHODS = ("auto", "tpe", "grid")
DEFAULT_TRIALS = 12
SOURCE_KEYS = ("args", "search", "sampler_seed", "trials_per_loss", "losses")  # what --from reads
JOURNAL_FILE = "optuna.journal"  # DIR/tuning/: the studies of a tune that names no tune.storage


@dataclass(frozen=True)
class Range:
    """A searched interval, uniform or log-uniform."""

    low: float
    high: float
    log: bool

    def __str__(self) -> str:
        return f"{'log-uniform' if self.log else 'uniform'} [{self.low:g}, {self.high:g}]"


# ---------------------------------------------------------------- one trial


def trial_job(cfg: DictConfig) -> str:
    """One trial: an ordinary run. A trial of a study reports each epoch's val_score to it and is stopped when the
    pruner says so; its run directory then says pruned (status.json), with the epoch and the value. Returns the
    run's status."""
    follow_launcher()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    reporter = studies.reporter_from_environment(run_dir, int(cfg.train.epochs))
    try:
        claim_job_dir(hydra_cfg)
        cfg = absolute_paths(cfg, Path(hydra_cfg.runtime.cwd))
        if reporter is None:
            return train_run(cfg, run_dir)
        train_run(cfg, run_dir, after_epoch=reporter.after_epoch)
    except studies.Pruned:
        pass  # the run stopped between two of its records; the pruning is recorded below
    except LossbenchError as err:  # e.g. a parameter value the loss rejects: a bad trial, not a bad sweep
        log.error("%s: %s", run_dir, err)
        return "failed"
    finally:
        exit_if_orphaned()
    if reporter.feed():  # pruned, or a row it had not read (a resumed run's): the decision never depends on timing
        trained = final_metric(run_dir, "epoch")
        trained = int(trained) if math.isfinite(trained) else 0
        write_status(run_dir, PRUNED, trained, reporter.epochs, reporter.message(trained))
        log.info("%s: %s", run_dir, reporter.message(trained))
        return PRUNED
    return read_status(run_dir)["status"]


# ---------------------------------------------------------------- settings and search space


def load_settings(lines: list[str]) -> DictConfig:
    """configs/tune.yaml with the command line's tune.KEY=VALUE overrides (new keys only under params)."""
    settings = OmegaConf.create(resources.files(CONFIG_MODULE).joinpath(SETTINGS_FILE).read_text())
    OmegaConf.set_struct(settings, True)
    OmegaConf.set_struct(settings.params, False)  # a user's own loss may get a range
    try:
        return OmegaConf.merge(settings, OmegaConf.from_dotlist([line[len(PREFIX) :] for line in lines]))
    except Exception as err:  # an unknown key, a malformed value
        raise LossbenchError(f"tune settings: {one_line(err)}") from None


def search_method(choice: str) -> str:
    """tpe or grid: auto means tpe when Optuna (4 or newer) is installed, a grid otherwise."""
    require(choice in METHODS, f"tune.search must be one of {', '.join(METHODS)}, not '{choice}'")
    if choice == "auto":
        return "tpe" if optuna_installed() else "grid"
    require(
        choice == "grid" or optuna_installed(),
        "tune.search=tpe needs optuna 4 or newer (pip install 'optuna>=4'), or use tune.search=grid",
    )
    return choice


def resolve_prune_after(settings: DictConfig, epochs: int) -> None:
    """tune.prune_after null means half the run's epochs, rounded up: a high learning rate starts slow and catches
    up, and a median taken after epoch 1 of 4 pruned one that would have been chosen (docs/tuning.md#pruning)."""
    if settings.prune_after is None:
        settings.prune_after = math.ceil(epochs / 2)


def pruner_spec(settings: DictConfig) -> dict:
    """tune.pruner, tune.prune_after and tune.pruner_startup, checked, as a study records them."""
    require(settings.pruner in PRUNERS, f"tune.pruner must be one of {', '.join(PRUNERS)}, not '{settings.pruner}'")
    for key in ("prune_after", "pruner_startup"):
        value = settings[key]
        require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"tune.{key} must be an integer >= 0, not {value}",
        )
    return {"name": str(settings.pruner), "after": int(settings.prune_after), "startup": int(settings.pruner_startup)}


def check_study_settings(settings: DictConfig, method: str) -> None:
    """tune.storage, tune.study, the pruner's settings and tune.search_only, before anything runs."""
    storage = settings.storage
    require(
        storage is None or (isinstance(storage, str) and storage.strip()),
        f"tune.storage must be a journal file's path or a database URL, not {storage!r}",
    )
    require(
        method == "tpe" or (storage is None and not settings.search_only),
        "tune.storage and tune.search_only are about Optuna's studies: they need tune.search=tpe",
    )
    require(
        isinstance(settings.study, str) and settings.study.strip() and ":" not in settings.study,
        f"tune.study must be a name without ':', not {settings.study!r}",
    )
    require(
        isinstance(settings.search_only, bool), f"tune.search_only must be true or false, not {settings.search_only}"
    )
    pruner_spec(settings)


def storage_spec(settings: DictConfig, directory: Path) -> str:
    """Where the studies live: tune.storage (a journal file's path or an SQLAlchemy URL), else this tune's own
    journal file under DIR/tuning/."""
    storage = settings.storage
    if storage is None:
        return str(directory / TUNING_DIR / JOURNAL_FILE)
    return storage if "://" in storage else str(Path(storage).expanduser())


def make_range(where: str, bounds: object, log: bool) -> Range:
    ok = isinstance(bounds, (list, tuple, ListConfig)) and len(bounds) == 2
    ok = ok and all(is_finite_number(b) for b in bounds)
    require(ok, f"{where} must be [low, high] (two finite numbers), not {bounds}")
    low, high = float(bounds[0]), float(bounds[1])
    require(low < high, f"{where}: low {low:g} must be below high {high:g}")
    require(not log or low > 0, f"{where}: a log-uniform range needs low > 0, not {low:g}")
    return Range(low, high, log)


def loss_params(loss: DictConfig) -> list[str]:
    """The loss's own parameters (tau, lam, ...): its config keys less the name and the target."""
    return [k for k in loss if k not in ("name", "_target_")]


def search_space(loss: DictConfig, lr: float, settings: DictConfig) -> dict[str, Range]:
    """The ranges searched for one loss: optim.lr, then the loss's own parameters listed in tune.params."""
    if settings.lr is not None:
        space = {LR: make_range("tune.lr", settings.lr, log=True)}
    else:
        factors = settings.lr_factors
        require(
            isinstance(factors, ListConfig) and len(factors) == 2, f"tune.lr_factors must be [low, high], not {factors}"
        )
        space = {LR: make_range(f"tune.lr_factors x optim.lr={lr:g}", [f * lr for f in factors], log=True)}
    name = str(loss.name)
    params = loss_params(loss)
    for param, node in (settings.params.get(name) or {}).items():
        where = f"tune.params.{name}.{param}"
        require(
            param in params, f"{where}: loss {name} has no parameter '{param}' (it has: {', '.join(params) or 'none'})"
        )
        require(
            isinstance(node, DictConfig) and set(node) == {"low", "high", "log"},
            f"{where} must be {{low: L, high: H, log: true|false}}, not {node}",
        )
        space[f"loss.{param}"] = make_range(where, [node.low, node.high], bool(node.log))
    return space


def check_value(cfg: DictConfig, key: str, value: float, where: str) -> None:
    """cfg with key=value must be a run the loss and the optimiser accept: a bad value fails here, not as a sweep
    of failed runs."""
    edited = absolute_paths(cfg)
    OmegaConf.update(edited, key, value)
    try:
        prepare(edited, warn=False)
    except LossbenchError as err:
        raise LossbenchError(f"{where}: {err}") from None


def check_range_ends(cfg: DictConfig, space: dict[str, Range]) -> None:
    for key, rng in space.items():
        for value in (rng.low, rng.high):
            check_value(cfg, key, value, f"tune range {key} {rng} for loss {cfg.loss.name}")


def grid(space: dict[str, Range], trials: int) -> dict[str, list[float]]:
    """floor(trials^(1/d)) points per searched key (d keys, so at most `trials` runs): the centres of equal
    cells of the (log) range, so no point sits on an edge, rounded to 3 significant digits."""
    k = max(1, int(trials ** (1 / len(space)) + 1e-9))

    def point(rng: Range, t: float) -> float:
        value = rng.low * (rng.high / rng.low) ** t if rng.log else rng.low + (rng.high - rng.low) * t
        return float(f"{value:.3g}")

    return {key: [point(rng, (i + 0.5) / k) for i in range(k)] for key, rng in space.items()}


# ---------------------------------------------------------------- the command


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(tune.KEY=VALUE overrides, the run's Hydra overrides)."""
    return [a for a in args if a.startswith(PREFIX)], [a for a in args if not a.startswith(PREFIX)]


def grid_command(loss: str, space: dict[str, Range], trials: int, user: list[str], folder: Path) -> list[str]:
    """The Hydra command line of one loss's grid: one multirun, every point a job in folder/trial_<n>."""
    points = [sweep(key, values) for key, values in grid(space, trials).items()]
    return sweep_command([*user, *points, f"loss={loss}"], folder, subdir="trial_${hydra.job.num}")


def trial_command(
    loss: str, values: dict[str, float], environment: dict[str, str], user: list[str], run_dir: Path
) -> list[str]:
    """The Hydra command line of one asked trial: one job into run_dir (folder/trial_<its number>), told by
    hydra.job.env_set which trial of which study it runs."""
    env = [setting(f"++hydra.job.env_set.{key}", value) for key, value in environment.items()]
    chosen = [setting(key, value) for key, value in values.items()]
    return sweep_command([*user, *chosen, f"loss={loss}", *env], run_dir.parent, subdir=run_dir.name)


def read_trials(folder: Path, space: dict[str, Range]) -> list[dict]:
    """Every trial of one loss from its run directory: its number, setting, status and final val_score."""
    trials = []
    for run_dir in find_runs(folder):
        cfg = read_config(run_dir)
        status = read_status(run_dir)["status"]
        value = final_metric(run_dir, OBJECTIVE) if status == "finished" else math.nan
        trials.append(
            {
                "trial": int(run_dir.name.rpartition("_")[2]),
                "run_dir": str(run_dir),
                "status": status,
                "setting": {key: OmegaConf.select(cfg, key) for key in space},
                OBJECTIVE: value if math.isfinite(value) else None,
            }
        )
    return sorted(trials, key=lambda t: t["trial"])


def best_trial(trials: list[dict]) -> dict | None:
    """The finished trial with the highest final val_score (the first of equals), or None."""
    done = [t for t in trials if t["status"] == "finished" and t[OBJECTIVE] is not None]
    return max(done, key=lambda t: t[OBJECTIVE]) if done else None


def final_command(loss: str, chosen: dict[str, float], seeds: list[int], user: list[str], out: Path) -> list[str]:
    """The Hydra command line of one loss's seeds at its chosen setting, into `out` like a comparison: run
    directories are named by loss and seed only (loss=ce,seed=0)."""
    constant = sorted({line.partition("=")[0].lstrip("+~") for line in user if not line.startswith("hydra")})
    values = [setting(key, value) for key, value in chosen.items()]
    return sweep_command(
        [*user, *values], out, [f"loss={loss}", sweep("seed", seeds)], name_by=["resume", *constant, *chosen]
    )


def search_description(record: dict) -> str:
    """How a tune.json's trials were drawn, in words (records before Optuna 4 name no pruner)."""
    if record["search"] != "tpe":
        return "a grid"
    pruner = record.get("pruner") or {"name": "none"}
    pruned = {
        "median": "below the median of the finished trials at the same epoch",
        "halving": "outside the best third at its rung (successive halving)",
    }.get(pruner["name"])
    stops = (
        f"; a trial whose val_score is {pruned} after epoch {max(1, pruner['after'])} or later is pruned"
        if pruned
        else ""
    )
    return f"Optuna's TPE (seed {record['sampler_seed']}{stops})"


def setting_shown(chosen: dict, key: str) -> str:
    """key=value of a chosen setting, with the search's own choice beside a value the user set instead (not where
    the user set the very value chosen: the control pair's shared rate is one loss's own choice)."""
    replaced = chosen.get("replaced", {})
    differs = key in replaced and replaced[key] != chosen["setting"][key]
    instead = f" (chosen {replaced[key]:.4g})" if differs else ""
    return f"{key}={chosen['setting'][key]:.4g}{instead}"


def tuned_markdown(record: dict) -> str:
    """The note on each loss's chosen setting that the report appends to summary.md."""
    method = search_description(record)
    where = f"Every trial is in {TUNE_FILE}, its run under {TUNING_DIR}/<loss>/."
    if "from" in record:  # --from: the trials ran under another budget, in another directory
        where = (
            f"The settings were chosen by an earlier `lossbench tune` ({record['from']}, its trials under its "
            f"{TUNING_DIR}/<loss>/) with the arguments `{' '.join(record['source_args'])}`, and are reused here; "
            f"its trials are copied into {TUNE_FILE}."
        )
    if any(entry["chosen"] and "replaced" in entry["chosen"] for entry in record["losses"].values()):
        where += (
            " A value marked (chosen X) was set on the command line instead of the search's choice X; its "
            f"{OBJECTIVE} is still that of the chosen trial."
        )
    lines = [
        "## Tuned settings",
        "",
        f"`lossbench tune`: each loss runs at the setting with the highest final {OBJECTIVE} (the validation split; "
        f"test data were not looked at) among {record['trials_per_loss']} trials per loss searched by {method}. "
        + where,
        "",
        f"| loss | chosen setting | {OBJECTIVE} | trials finished | searched |",
        "|---|---|---|---|---|",
    ]
    for loss, entry in record["losses"].items():
        chosen = entry["chosen"]
        shown = " ".join(setting_shown(chosen, key) for key in chosen["setting"]) if chosen else "none finished"
        value = f"{chosen[OBJECTIVE]:.4f}" if chosen else "-"
        finished = sum(t["status"] == "finished" for t in entry["trials"])
        pruned = sum(t["status"] == PRUNED for t in entry["trials"])
        count = f"{finished}/{len(entry['trials'])}" + (f" ({pruned} pruned)" if pruned else "")
        searched = "; ".join(f"{k} {Range(**r)}" for k, r in entry["space"].items())
        lines.append(f"| {loss} | {shown} | {value} | {count} | {searched} |")
    return "\n".join(lines) + "\n"


def read_source(path: Path) -> dict:
    """The tune.json of an earlier `lossbench tune`, for --from."""
    try:
        record = read_tune_record(path)
        ok = isinstance(record, dict) and all(key in record for key in SOURCE_KEYS)
        ok = ok and isinstance(record["losses"], dict) and isinstance(record["args"], list)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LossbenchError(f"--from {path}: not a readable {TUNE_FILE} ({one_line(err)})") from None
    require(ok, f"--from {path}: not a {TUNE_FILE} written by lossbench tune (it needs {', '.join(SOURCE_KEYS)})")
    return record


def is_range(bounds: object) -> bool:
    """Whether a tune.json's searched range reads back as a Range: finite low and high, log true or false."""
    if not (isinstance(bounds, dict) and set(bounds) == {"low", "high", "log"}):
        return False
    return is_finite_number(bounds["low"]) and is_finite_number(bounds["high"]) and isinstance(bounds["log"], bool)


def reused_choice(path: Path, record: dict, cfg: DictConfig) -> dict:
    """One loss's entry of the --from record, its chosen setting checked: keys the search could have set, finite
    numbers, values the loss and the optimiser accept."""
    name = str(cfg.loss.name)
    entry = record["losses"].get(name)
    ok = isinstance(entry, dict) and isinstance(entry.get("trials"), list) and isinstance(entry.get("space"), dict)
    chosen = entry.get("chosen") if ok else None
    require(
        isinstance(chosen, dict) and isinstance(chosen.get("setting"), dict),
        f"--from {path}: no chosen setting for loss {name} (it has: {', '.join(record['losses']) or 'none'})",
    )
    for key, bounds in entry["space"].items():
        require(is_range(bounds), f"--from {path}: {name}'s searched range {key}={bounds}: not a range")
    params = [f"loss.{k}" for k in loss_params(cfg.loss)]
    for key, value in chosen["setting"].items():
        where = f"--from {path}: {name} {key}={value}"
        require(key in (LR, *params), f"{where}: not a searched key ({', '.join((LR, *params))})")
        require(
            is_finite_number(value),
            f"{where}: not a finite number",
        )
        check_value(cfg, key, value, where)
    return entry


def with_fixed(entry: dict, named: set[str], cfg: DictConfig) -> dict:
    """A reused loss entry (of --from) whose chosen setting takes, for each searched key the user named on the
    command line (optim.lr=0.08), the user's value from the loss's composed `cfg`. What the search chose stays
    under "replaced", so that the record still says it."""
    chosen = entry["chosen"]
    keys = sorted(named & set(chosen["setting"]))
    if not keys:
        return entry
    replaced = {**{key: chosen["setting"][key] for key in keys}, **chosen.get("replaced", {})}
    setting = {**chosen["setting"], **{key: OmegaConf.select(cfg, key) for key in keys}}
    return {**entry, "chosen": {**chosen, "setting": setting, "replaced": replaced}}


def search(
    names: list[str],
    spaces: dict[str, dict[str, Range]],
    method: str,
    settings: DictConfig,
    trials: int,
    args: list[str],
    user: list[str],
    directory: Path,
) -> dict:
    """Each loss's trials into directory/tuning/<loss>/, recorded in directory/tune.json as each loss finishes."""
    record = {
        "args": args,
        "search": method,
        "sampler_seed": int(settings.seed),
        "trials_per_loss": trials,
        "objective": f"final {OBJECTIVE} (maximised)",
        "losses": {},
    }
    storage = storage_spec(settings, directory)
    if method == "tpe":
        record.update(pruner=pruner_spec(settings), storage=storage)
    for name in names:
        folder = directory / TUNING_DIR / name
        searched = ", ".join(f"{key} {rng}" for key, rng in spaces[name].items())
        log.info("tuning %s: %d trials (%s) over %s", name, trials, method, searched)
        if method == "grid":
            run_task(trial_job, grid_command(name, spaces[name], trials, user, folder))
            found, worker = read_trials(folder, spaces[name]), {}
        else:
            found, worker = search_study(name, spaces[name], settings, trials, user, folder, storage)
        chosen = best_trial(found)
        record["losses"][name] = {
            "space": {k: asdict(r) for k, r in spaces[name].items()},
            **worker,
            "trials": found,
            "chosen": chosen and {"trial": chosen["trial"], "setting": chosen["setting"], OBJECTIVE: chosen[OBJECTIVE]},
        }
        write_tune_record(directory, record)
    return record


def search_study(
    name: str, space: dict[str, Range], settings: DictConfig, trials: int, user: list[str], folder: Path, storage: str
) -> tuple[list[dict], dict]:
    """One loss's study: ask a trial, run it (one Hydra job into folder/trial_<its number>), tell its outcome, until
    the study holds `trials` trials (this worker's and the others'); then wait for the others' to end. Returns
    every trial of the study, and this worker's part (the study, its number, its sampler seed)."""
    study_name = f"{settings.study}/{name}"
    searched = {"space": {k: asdict(r) for k, r in space.items()}, "pruner": pruner_spec(settings)}
    study, worker, seed = studies.join_study(
        studies.open_storage(storage),
        study_name,
        searched,
        int(settings.seed),
        min(int(settings.startup_trials), trials),
    )
    while studies.budget_left(study, trials):
        trial = study.ask()
        if trial.number >= trials:  # another worker asked the last one first
            studies.surplus(study, trial)
            break
        values = {key: trial.suggest_float(key, rng.low, rng.high, log=rng.log) for key, rng in space.items()}
        run_dir = folder / f"trial_{trial.number}"
        trial.set_user_attr(studies.RUN_DIR, str(run_dir))
        environment = studies.trial_environment(storage, study_name, trial.number)
        try:
            run_task(trial_job, trial_command(name, values, environment, user, run_dir))
        except BaseException:  # interrupted, or the launcher failed: no worker may wait for this trial
            studies.fail(study, trial)
            raise
        status, value = read_status(run_dir)["status"], final_metric(run_dir, OBJECTIVE)
        studies.tell(study, trial, status, value)
        log.info(
            "%s trial %d: %s%s",
            name,
            trial.number,
            status,
            f", {OBJECTIVE} {value:.4f}" if status == "finished" else "",
        )
    studies.wait_for_workers(study)
    part = {"study": study_name, "worker": worker, "worker_sampler_seed": seed}
    return [trial_entry(t, space) for t in studies.own_trials(study)], part


def trial_entry(trial, space: dict[str, Range]) -> dict:
    """A study's trial as tune.json records it: number, run directory, status (its run directory's, where this
    machine sees it), setting and final val_score (finished trials only); a pruned trial also the epoch."""
    run_dir = Path(trial.user_attrs[studies.RUN_DIR])
    status = read_status(run_dir)["status"]
    if status == "unknown":  # a run directory this machine does not see (another worker's, elsewhere)
        status = studies.state_status(trial)
    value = trial.value if status == "finished" and trial.value is not None and math.isfinite(trial.value) else None
    entry = {
        "trial": trial.number,
        "run_dir": str(run_dir),
        "status": status,
        "setting": {key: trial.params.get(key) for key in space},
        OBJECTIVE: value,
    }
    if status == PRUNED and trial.intermediate_values:
        entry["pruned_at"] = max(trial.intermediate_values)
    return entry


def tune(args: list[str], trials: int | None, out: str | None, source: str | None = None) -> int:
    """`lossbench tune`: trials per loss on val (or, with source, the settings an earlier tune chose), then the
    seeds at each loss's setting and the report. Returns the exit code: that of the report, or 1 when a loss had
    no finished trial (it is left out)."""
    require(trials is None or trials >= 1, f"--trials must be >= 1, not {trials}")
    require(not any(a in ("-m", "--multirun") for a in args), "tune runs its own sweeps: drop -m")
    tune_lines, user = split_args(list(args))
    require(
        source is None or (trials is None and not tune_lines),
        f"--from reuses the settings chosen in {source}: it takes no --trials and no tune.* settings",
    )
    settings = load_settings(tune_lines)
    overrides = parse_overrides(user)
    sweeps = [o.input_line for o in overrides if o.is_sweep_override()]
    require(not sweeps, f"tune takes no sweeps (it searches optim.lr and each loss's parameter itself): {sweeps}")
    require(not any(o.key_or_group == "loss" for o in overrides), "tune: name the losses with losses=[...], not loss=")
    require(
        not any(o.key_or_group.startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides),
        "tune asks Optuna for its trials itself, through no Hydra sweeper: drop hydra.sweeper (for parallel "
        "trials, run several tune processes on one tune.storage)",
    )
    require(
        not any(o.key_or_group == "hydra/launcher" and o.value() == "packed" for o in overrides),
        "tune: hydra/launcher=packed trains a comparison's runs, not tuning trials (which report their score "
        "to the search); use compare for it, or another launcher",
    )
    cfg = compose_config(overrides)
    resolve_prune_after(settings, int(cfg.train.epochs))
    names = checked_losses(cfg)
    checked_seeds(cfg)
    require(
        source is not None or cfg.data.get("val_size") not in (None, 0),
        "tune selects on the validation split: set data.val_size (it is null)",
    )
    preflight(cfg)
    loss_cfgs = {name: compose_config(parse_overrides([*user, f"loss={name}"])) for name in names}
    if source is None:
        method = search_method(str(settings.search))  # a missing Optuna fails before anything runs
        check_study_settings(settings, method)
        spaces = {name: search_space(c.loss, float(cfg.optim.lr), settings) for name, c in loss_cfgs.items()}
        for name, loss_cfg in loss_cfgs.items():
            check_range_ends(loss_cfg, spaces[name])
    else:
        path = Path(source)
        earlier = read_source(path)
        reused = {name: reused_choice(path, earlier, loss_cfg) for name, loss_cfg in loss_cfgs.items()}
        # A searched key the user sets (one shared optim.lr=0.08) replaces the choice, rather than being lost.
        named = {o.key_or_group.lstrip("+~") for o in overrides}
        reused = {name: with_fixed(entry, named, loss_cfgs[name]) for name, entry in reused.items()}

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    directory = Path(out).expanduser() if out else new_directory(Path("comparisons"), f"{cfg.name}_tuned_{stamp}")
    claim_comparison(directory)  # as compare: never a user's folder, and one process at a time
    with locked(directory):
        require(
            not find_runs(directory) and not (directory / TUNE_FILE).exists() and not (directory / TUNING_DIR).exists(),
            f"{directory} already holds runs or trials; choose another --out",
        )
        # Every trial and final run uses the same values and one copy of the score table, whenever it starts.
        user = pinned_scores(resolved_overrides(user), directory)
        if source is None:
            record = search(
                names, spaces, method, settings, trials or DEFAULT_TRIALS, [*tune_lines, *user], user, directory
            )
        else:
            # The trials' own directory and arguments, also when `earlier` itself reused another tune's settings.
            record = {
                **earlier,
                "args": [*tune_lines, *user],
                "from": earlier.get("from", str(path)),
                "source_args": earlier.get("source_args", earlier["args"]),
                "losses": reused,
            }
            write_tune_record(directory, record)
        write_atomic(directory / TUNED_FILE, tuned_markdown(record))
        if source is None and settings.search_only:
            print(
                f"search done: {directory / TUNE_FILE}; run the seeds with `lossbench tune --from "
                f"{directory / TUNE_FILE} ...`"
            )
            return 0

        final_user = [line for line in user if line.partition("=")[0] != "seed"]
        untuned = [name for name, entry in record["losses"].items() if entry["chosen"] is None]
        for name, entry in record["losses"].items():
            if entry["chosen"] is not None:
                run_task(
                    run_job,
                    final_command(name, entry["chosen"]["setting"], [int(s) for s in cfg.seeds], final_user, directory),
                )
        for name in untuned:
            print(
                f"error: no trial of {name} finished (see {directory / TUNING_DIR / name}); it is left out",
                file=sys.stderr,
            )
        require(len(untuned) < len(names), f"no trial of any loss finished; see {directory / TUNING_DIR}")
        return max(report_comparison(directory), 1 if untuned else 0)
