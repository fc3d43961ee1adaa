"""`lossbench tune`: a fair comparison, every loss at its own best learning rate and parameter.

Per loss of `losses`, trials search the learning rate (log-uniform) and the loss's own parameter (its range in
configs/tune.yaml) with Hydra's Optuna sweeper (TPE, seeded, --trials per loss), or a grid when that plugin is
absent. Each trial is an ordinary run under DIR/tuning/<loss>/trial_<n>; its objective is the final val_score, so
selection never looks at test data. Then the seeds run at each loss's chosen setting into DIR, named as a
comparison's runs (loss=<name>,seed=<s>), and the report is written as for a comparison. DIR/tune.json records
every trial (setting, status, val_score) and each loss's choice; DIR/tuned.md (appended to summary.md by the
report) states the choices.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from lossbench.atomic import write_atomic
from lossbench.components import CONFIG_MODULE
from lossbench.config import absolute_paths, prepare
from lossbench.errors import LossbenchError, one_line, require
from lossbench.launch import (
    checked_losses, checked_seeds, claim_comparison, claim_job_dir, compose_config, launch_hydra, new_directory,
    parse_overrides, pinned_scores, preflight, report_comparison, resolved_overrides,
)  # fmt: skip
from lossbench.lifeline import exit_if_orphaned, follow_launcher
from lossbench.rundir import (
    TUNE_FILE, TUNED_FILE, TUNING_DIR, final_metric, find_runs, locked, read_config, read_status, read_tune_record,
    write_tune_record,
)  # fmt: skip
from lossbench.train import train_run

log = logging.getLogger("lossbench")

OBJECTIVE = "val_score"  # maximised; the run's final value on the validation split
SETTINGS_FILE = "tune.yaml"
PREFIX = "tune."  # command-line overrides of configs/tune.yaml
LR = "optim.lr"
METHODS = ("auto", "tpe", "grid")
DEFAULT_TRIALS = 12
SOURCE_KEYS = ("args", "search", "sampler_seed", "trials_per_loss", "losses")  # what --from reads


@dataclass(frozen=True)
class Range:
    """A searched interval, uniform or log-uniform."""

    low: float
    high: float
    log: bool

    def __str__(self) -> str:
        return f"{'log-uniform' if self.log else 'uniform'} [{self.low:g}, {self.high:g}]"


# ---------------------------------------------------------------- one trial


@hydra.main(version_base="1.3", config_path="pkg://lossbench.configs", config_name="config")
def trial_job(cfg: DictConfig) -> float:
    """One trial: an ordinary run. It returns the objective to the sweeper: the final val_score, or -inf when the
    run failed or diverged (a finite number the sampler can learn from: this region is worse than any other)."""
    follow_launcher()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        claim_job_dir(HydraConfig.get())
        status = train_run(absolute_paths(cfg, Path(HydraConfig.get().runtime.cwd)), run_dir)
    except LossbenchError as err:  # e.g. a parameter value the loss rejects: a bad trial, not a bad sweep
        log.error("%s: %s", run_dir, err)
        status = "failed"
    finally:
        exit_if_orphaned()
    value = final_metric(run_dir, OBJECTIVE) if status == "finished" else math.nan
    return value if math.isfinite(value) else -math.inf


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


def optuna_installed() -> bool:
    return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None


def search_method(choice: str) -> str:
    """tpe or grid: auto means tpe when hydra-optuna-sweeper is installed, a grid otherwise."""
    require(choice in METHODS, f"tune.search must be one of {', '.join(METHODS)}, not '{choice}'")
    if choice == "auto":
        return "tpe" if optuna_installed() else "grid"
    require(choice == "grid" or optuna_installed(),
            "tune.search=tpe needs hydra-optuna-sweeper (pip install hydra-optuna-sweeper), "
            "or use tune.search=grid")  # fmt: skip
    return choice


def make_range(where: str, bounds: object, log: bool) -> Range:
    ok = isinstance(bounds, (list, tuple, ListConfig)) and len(bounds) == 2
    ok = ok and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
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
        require(isinstance(factors, ListConfig) and len(factors) == 2,
                f"tune.lr_factors must be [low, high], not {factors}")  # fmt: skip
        space = {LR: make_range(f"tune.lr_factors x optim.lr={lr:g}", [f * lr for f in factors], log=True)}
    name = str(loss.name)
    params = loss_params(loss)
    for param, node in (settings.params.get(name) or {}).items():
        where = f"tune.params.{name}.{param}"
        require(param in params,
                f"{where}: loss {name} has no parameter '{param}' (it has: {', '.join(params) or 'none'})")  # fmt: skip
        require(isinstance(node, DictConfig) and set(node) == {"low", "high", "log"},
                f"{where} must be {{low: L, high: H, log: true|false}}, not {node}")  # fmt: skip
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


def optuna_interval(rng: Range) -> str:
    """Hydra's sweep syntax for the Optuna sweeper: a (log-)uniform float interval."""
    interval = f"interval({rng.low!r},{rng.high!r})"
    return f"tag(log,{interval})" if rng.log else interval


# ---------------------------------------------------------------- the command


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(tune.KEY=VALUE overrides, the run's Hydra overrides)."""
    return [a for a in args if a.startswith(PREFIX)], [a for a in args if not a.startswith(PREFIX)]


def trial_args(loss: str, space: dict[str, Range], method: str, trials: int, settings: DictConfig,
               user: list[str], folder: Path) -> list[str]:  # fmt: skip
    """The Hydra command line of one loss's trials. The user's overrides come after the sweeper's defaults (so
    hydra.sweeper.n_jobs=4 wins) and before the layout (loss, where the trials go)."""
    if method == "grid":
        sweeper, searched = [], [f"{key}={','.join(map(repr, values))}" for key, values in grid(space, trials).items()]
    else:
        sweeper = ["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", f"hydra.sweeper.n_trials={trials}",
                   "hydra.sweeper.n_jobs=1", f"hydra.sweeper.sampler.seed={int(settings.seed)}",
                   f"hydra.sweeper.sampler.n_startup_trials={min(int(settings.startup_trials), trials)}"]  # fmt: skip
        searched = [f"{key}={optuna_interval(rng)}" for key, rng in space.items()]
    layout = [f"loss={loss}", f"hydra.sweep.dir={json.dumps(str(folder))}", "hydra.sweep.subdir=trial_${hydra.job.num}"]
    return ["-m", *sweeper, *user, *searched, *layout]


def read_trials(folder: Path, space: dict[str, Range]) -> list[dict]:
    """Every trial of one loss from its run directory: its number, setting, status and final val_score."""
    trials = []
    for run_dir in find_runs(folder):
        cfg = read_config(run_dir)
        status = read_status(run_dir)["status"]
        value = final_metric(run_dir, OBJECTIVE) if status == "finished" else math.nan
        trials.append({"trial": int(run_dir.name.rpartition("_")[2]), "run_dir": str(run_dir), "status": status,
                       "setting": {key: OmegaConf.select(cfg, key) for key in space},
                       OBJECTIVE: value if math.isfinite(value) else None})  # fmt: skip
    return sorted(trials, key=lambda t: t["trial"])


def best_trial(trials: list[dict]) -> dict | None:
    """The finished trial with the highest final val_score (the first of equals), or None."""
    done = [t for t in trials if t["status"] == "finished" and t[OBJECTIVE] is not None]
    return max(done, key=lambda t: t[OBJECTIVE]) if done else None


def final_args(loss: str, setting: dict[str, float], seeds: list[int], user: list[str], out: Path) -> list[str]:
    """The Hydra command line of one loss's seeds at its chosen setting, into `out` like a comparison: run
    directories are named by loss and seed only (loss=ce,seed=0)."""
    constant = sorted({line.partition("=")[0].lstrip("+~") for line in user if not line.startswith("hydra")})
    exclude = ["resume", *constant, *setting]
    return ["-m", *user, f"loss={loss}", "seed=" + ",".join(map(str, seeds)),
            *(f"{key}={value!r}" for key, value in setting.items()), f"hydra.sweep.dir={json.dumps(str(out))}",
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]"]  # fmt: skip


def tuned_markdown(record: dict) -> str:
    """The note on each loss's chosen setting that the report appends to summary.md."""
    method = "TPE (Hydra's Optuna sweeper, seed %d)" % record["sampler_seed"] if record["search"] == "tpe" else "a grid"
    where = f"Every trial is in {TUNE_FILE}, its run under {TUNING_DIR}/<loss>/."
    if "from" in record:  # --from: the trials ran under another budget, in another directory
        where = (f"The settings were chosen by an earlier `lossbench tune` ({record['from']}, its trials under its "
                 f"{TUNING_DIR}/<loss>/) with the arguments `{' '.join(record['source_args'])}`, and are reused here; "
                 f"its trials are copied into {TUNE_FILE}.")  # fmt: skip
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
        setting = " ".join(f"{k}={v:.4g}" for k, v in chosen["setting"].items()) if chosen else "none finished"
        value = f"{chosen[OBJECTIVE]:.4f}" if chosen else "-"
        finished = sum(t["status"] == "finished" for t in entry["trials"])
        searched = "; ".join(f"{k} {Range(**r)}" for k, r in entry["space"].items())
        lines.append(f"| {loss} | {setting} | {value} | {finished}/{len(entry['trials'])} | {searched} |")
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


def reused_choice(path: Path, record: dict, cfg: DictConfig) -> dict:
    """One loss's entry of the --from record, its chosen setting checked: keys the search could have set, finite
    numbers, values the loss and the optimiser accept."""
    name = str(cfg.loss.name)
    entry = record["losses"].get(name)
    ok = isinstance(entry, dict) and isinstance(entry.get("trials"), list) and isinstance(entry.get("space"), dict)
    chosen = entry.get("chosen") if ok else None
    require(isinstance(chosen, dict) and isinstance(chosen.get("setting"), dict),
            f"--from {path}: no chosen setting for loss {name} "
            f"(it has: {', '.join(record['losses']) or 'none'})")  # fmt: skip
    params = [f"loss.{k}" for k in loss_params(cfg.loss)]
    for key, value in chosen["setting"].items():
        where = f"--from {path}: {name} {key}={value}"
        require(key in (LR, *params), f"{where}: not a searched key ({', '.join((LR, *params))})")
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                f"{where}: not a finite number")  # fmt: skip
        check_value(cfg, key, value, where)
    return entry


def search(names: list[str], spaces: dict[str, dict[str, Range]], method: str, settings: DictConfig, trials: int,
           args: list[str], user: list[str], directory: Path) -> dict:  # fmt: skip
    """Each loss's trials into directory/tuning/<loss>/, recorded in directory/tune.json as each loss finishes."""
    record = {"args": args, "search": method, "sampler_seed": int(settings.seed), "trials_per_loss": trials,
              "objective": f"final {OBJECTIVE} (maximised)", "losses": {}}  # fmt: skip
    for name in names:
        folder = directory / TUNING_DIR / name
        searched = ", ".join(f"{key} {rng}" for key, rng in spaces[name].items())
        log.info("tuning %s: %d trials (%s) over %s", name, trials, method, searched)
        launch_hydra(trial_args(name, spaces[name], method, trials, settings, user, folder), job=trial_job)
        found = read_trials(folder, spaces[name])
        chosen = best_trial(found)
        record["losses"][name] = {"space": {k: asdict(r) for k, r in spaces[name].items()}, "trials": found,
                                  "chosen": chosen and {"trial": chosen["trial"], "setting": chosen["setting"],
                                                        OBJECTIVE: chosen[OBJECTIVE]}}  # fmt: skip
        write_tune_record(directory, record)
    return record


def tune(args: list[str], trials: int | None, out: str | None, source: str | None = None) -> int:
    """`lossbench tune`: trials per loss on val (or, with source, the settings an earlier tune chose), then the
    seeds at each loss's setting and the report. Returns the exit code: that of the report, or 1 when a loss had
    no finished trial (it is left out)."""
    require(trials is None or trials >= 1, f"--trials must be >= 1, not {trials}")
    require(not any(a in ("-m", "--multirun") for a in args), "tune runs its own sweeps: drop -m")
    tune_lines, user = split_args(list(args))
    require(source is None or (trials is None and not tune_lines),
            f"--from reuses the settings chosen in {source}: it takes no --trials and no tune.* settings")  # fmt: skip
    settings = load_settings(tune_lines)
    overrides = parse_overrides(user)
    sweeps = [o.input_line for o in overrides if o.is_sweep_override()]
    require(not sweeps, f"tune takes no sweeps (it searches optim.lr and each loss's parameter itself): {sweeps}")
    require(not any(o.key_or_group == "loss" for o in overrides), "tune: name the losses with losses=[...], not loss=")
    require(not any(o.key_or_group == "hydra/launcher" and o.value() == "packed" for o in overrides),
            "tune: hydra/launcher=packed trains a comparison's runs, not tuning trials (which report their score "
            "to the search); use compare for it, or another launcher")  # fmt: skip
    cfg = compose_config(overrides)
    names = checked_losses(cfg)
    checked_seeds(cfg)
    require(source is not None or cfg.data.get("val_size") not in (None, 0),
            "tune selects on the validation split: set data.val_size (it is null)")  # fmt: skip
    preflight(cfg)
    loss_cfgs = {name: compose_config(parse_overrides([*user, f"loss={name}"])) for name in names}
    if source is None:
        method = search_method(str(settings.search))  # a missing plugin fails before anything runs
        spaces = {name: search_space(c.loss, float(cfg.optim.lr), settings) for name, c in loss_cfgs.items()}
        for name, loss_cfg in loss_cfgs.items():
            check_range_ends(loss_cfg, spaces[name])
    else:
        path = Path(source)
        earlier = read_source(path)
        reused = {name: reused_choice(path, earlier, loss_cfg) for name, loss_cfg in loss_cfgs.items()}

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    directory = Path(out).expanduser() if out else new_directory(Path("comparisons"), f"{cfg.name}_tuned_{stamp}")
    claim_comparison(directory)  # as compare: never a user's folder, and one process at a time
    with locked(directory):
        require(not find_runs(directory) and not (directory / TUNE_FILE).exists()
                and not (directory / TUNING_DIR).exists(),
                f"{directory} already holds runs or trials; choose another --out")  # fmt: skip
        # Every trial and final run uses the same values and one copy of the score table, whenever it starts.
        user = pinned_scores(resolved_overrides(user), directory)
        if source is None:
            record = search(names, spaces, method, settings, trials or DEFAULT_TRIALS, [*tune_lines, *user], user,
                            directory)  # fmt: skip
        else:
            # The trials' own directory and arguments, also when `earlier` itself reused another tune's settings.
            record = {**earlier, "args": [*tune_lines, *user], "from": earlier.get("from", str(path)),
                      "source_args": earlier.get("source_args", earlier["args"]), "losses": reused}  # fmt: skip
            write_tune_record(directory, record)
        write_atomic(directory / TUNED_FILE, tuned_markdown(record))

        final_user = [line for line in user
                      if not line.startswith("hydra.sweeper") and line.partition("=")[0] != "seed"]  # fmt: skip
        untuned = [name for name, entry in record["losses"].items() if entry["chosen"] is None]
        for name, entry in record["losses"].items():
            if entry["chosen"] is not None:
                launch_hydra(final_args(name, entry["chosen"]["setting"], [int(s) for s in cfg.seeds], final_user,
                                        directory))  # fmt: skip
        for name in untuned:
            print(f"error: no trial of {name} finished (see {directory / TUNING_DIR / name}); it is left out",
                  file=sys.stderr)  # fmt: skip
        require(len(untuned) < len(names), f"no trial of any loss finished; see {directory / TUNING_DIR}")
        return max(report_comparison(directory), 1 if untuned else 0)
