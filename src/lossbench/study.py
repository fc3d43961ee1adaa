"""The Optuna studies of `lossbench tune`, driven by ask and tell, and the pruning inside a trial's job.

One study per loss (named `<tune.study>/<loss>`) in `tune.storage`: a journal file or an SQLAlchemy URL
(`sqlite:///tune.db`), so that several tune processes, on one machine or as SLURM jobs on a shared file system,
add trials to the same study. Each such worker numbers itself in the storage and samples with seed
`tune.seed + its number`: a single process (worker 0) draws the same trials for the same seed, and two workers
never draw the same ones.

A trial runs as a Hydra job through whatever launcher is configured, possibly in another process or on another
machine: the job opens the study itself (the storage, the study and the trial's number reach it as environment
variables through hydra.job.env_set), reports each epoch's val_score once metrics.csv holds its row, and stops its
run there when the pruner says so. The training loop only calls the job back after each epoch: what is reported is
read from the run's own records.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from lossbench.errors import LossbenchError, one_line, require
from lossbench.rundir import read_metrics

log = logging.getLogger("lossbench")

STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "LOSSBENCH_TUNE_STORAGE", "LOSSBENCH_TUNE_STUDY", "LOSSBENCH_TUNE_TRIAL"
PRUNERS = ("none", "median", "halving")
HALVING_FACTOR = 3  # successive halving keeps the best third of the trials at each rung
WAIT_S = 5.0  # how often a worker looks whether the other workers' trials have ended
OBJECTIVE = "val_score"
PRUNED = "pruned"
RUN_DIR, SURPLUS = "run_dir", "surplus"  # a trial's user attributes


class Pruned(BaseException):
    """Raised in a trial's job to stop its run once the pruner decides: not an Exception, so that the run's own
    failure handling (which records failures) lets it pass, and the job records the run as pruned."""


def optuna_installed() -> bool:
    """Whether Optuna 4 or newer can be imported (its ask-and-tell interface and journal storage)."""
    try:
        import optuna
    except ImportError:
        return False
    return int(optuna.__version__.split(".")[0]) >= 4


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # lossbench logs each trial itself
    return optuna


def open_storage(spec: str):
    """An Optuna storage: an SQLAlchemy URL (`sqlite:///tune.db`, with '://') or a journal file's path."""
    optuna = _optuna()
    try:
        if "://" in spec:
            return optuna.storages.get_storage(spec)
        from optuna.storages.journal import JournalFileBackend

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(spec)))
    except Exception as err:  # an unknown database driver, a malformed URL, a folder that cannot be made
        raise LossbenchError(f"tune.storage {spec}: {one_line(err)}") from None


def make_pruner(spec: dict):
    """The pruner a study's attributes name: none, median (a trial whose best val_score so far is below the
    median of the finished trials' at the same epoch) or halving (successive halving, rungs from `after`)."""
    optuna = _optuna()
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup"], n_warmup_steps=spec["after"])
    if spec["name"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, spec["after"]), reduction_factor=HALVING_FACTOR
        )
    return optuna.pruners.NopPruner()


def join_study(storage, name: str, search: dict, seed: int, startup: int):
    """This worker's handle on study `name` (made when new), its number among the study's workers, and its
    sampler seed. `search` (the space and the pruner) must be the study's own: trials of two searches must not
    mix."""
    optuna = _optuna()
    workers = optuna.create_study(storage=storage, study_name=f"{name}:workers", load_if_exists=True)
    ticket = workers.ask()  # trial numbers are handed out one at a time by the storage: a counter for workers
    workers.tell(ticket, float(os.getpid()))
    worker = ticket.number
    sampler = optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=startup, constant_liar=True)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=make_pruner(search["pruner"]),
    )
    if not study.user_attrs:
        study.set_user_attr("search", search)
    require(
        study.user_attrs.get("search") == search,
        f"study {name} in tune.storage was made by another search ({study.user_attrs.get('search')}), not "
        f"{search}; name a new study with tune.study=NAME",
    )
    return study, worker, seed + worker


def budget_left(study, trials: int) -> bool:
    """Whether the study holds fewer than `trials` trials (any state, any worker's)."""
    return len(study.get_trials(deepcopy=False)) < trials


def wait_for_workers(study) -> None:
    """Return once no trial of the study is running (the other workers' trials have ended)."""
    optuna = _optuna()
    while True:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        log.info(
            "%s: waiting for %d trial(s) of other workers (%s)",
            study.study_name,
            len(running),
            ", ".join(str(t.number) for t in running),
        )
        time.sleep(WAIT_S)


def tell(study, trial, status: str, value: float | None) -> None:
    """The trial's outcome as its run directory records it: pruned as pruned, a finished run's final val_score,
    and -inf for a failed or diverged run (the sampler learns that this region is worse than any other)."""
    optuna = _optuna()
    if status == PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, value if status == "finished" and value is not None and math.isfinite(value) else -math.inf)


def fail(study, trial) -> None:
    """A trial whose job never reported back (the command was interrupted): failed, so no worker waits on it."""
    study.tell(trial, state=_optuna().trial.TrialState.FAIL)


def surplus(study, trial) -> None:
    """A trial asked after the study had its trials (two workers asked at once): failed, marked, never run."""
    trial.set_user_attr(SURPLUS, True)
    fail(study, trial)


def own_trials(study) -> list:
    """The study's trials that ran or run (not the surplus ones), by number."""
    return sorted(
        (t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)), key=lambda t: t.number
    )


def state_status(trial) -> str:
    """A run's status as its trial's state tells it (for a run directory out of sight)."""
    state = trial.state.name
    if state == "COMPLETE":
        return "finished" if trial.value is not None and math.isfinite(trial.value) else "failed"
    return {"PRUNED": PRUNED, "RUNNING": "running"}.get(state, "failed")


def trial_environment(storage: str, study: str, number: int) -> dict[str, str]:
    """What a trial's job needs to find its trial: hydra.job.env_set's entries."""
    return {STORAGE_ENV: storage, STUDY_ENV: study, TRIAL_ENV: str(number)}


# ---------------------------------------------------------------- inside a trial's job


class Reporter:
    """A trial's per-epoch val_score, reported from its run's metrics.csv to its study; `pruned_at` is the epoch
    after which the pruner stopped it (None while it runs on). Every row is reported in order, once, so the
    decision depends on the values only, never on when the rows were read."""

    def __init__(self, trial, run_dir: Path, epochs: int) -> None:
        self.trial, self.run_dir, self.epochs = trial, run_dir, epochs
        self.reported = 0  # epochs reported so far
        self.pruned_at: int | None = None
        self.value: float | None = None  # the val_score at pruned_at

    def feed(self) -> bool:
        """Report the rows not reported yet; True once the trial is pruned."""
        if self.pruned_at is not None:
            return True
        rows, _ = read_metrics(self.run_dir)
        if OBJECTIVE not in rows:  # no row yet
            return False
        for epoch, value in zip(rows["epoch"], rows[OBJECTIVE]):
            epoch = int(epoch)
            if epoch <= self.reported or not math.isfinite(value):
                continue
            self.trial.report(float(value), epoch)
            self.reported = epoch
            if epoch < self.epochs and self.trial.should_prune():
                self.pruned_at, self.value = epoch, float(value)
                return True
        return False

    def after_epoch(self) -> None:
        """Called by the run after each epoch's row is on disk: report it and, once pruned, stop the run by raising
        Pruned there, between two of its records (any OS, any launcher, the job's main thread or not)."""
        if self.feed():
            raise Pruned()

    def message(self, trained: int) -> str:
        """The pruned run's status message: the epoch, its val_score, the pruner, and how far it had trained."""
        after = (
            ""
            if trained <= self.pruned_at
            else f"; it had trained to epoch {trained} when it stopped, which the search does not use"
        )
        return (
            f"pruned by the search after epoch {self.pruned_at} of {self.epochs} ({OBJECTIVE} "
            f"{self.value:.4f}, below what the pruner keeps at that epoch){after}"
        )


def reporter_from_environment(run_dir: Path, epochs: int) -> Reporter | None:
    """The Reporter of the trial this job runs, when it runs one of a study's trials (the environment names it)."""
    spec, name, number = (os.environ.get(key) for key in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV))
    if not (spec and name and number):
        return None
    optuna = _optuna()
    storage = open_storage(spec)
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
    study = optuna.load_study(study_name=name, storage=storage)
    study.pruner = make_pruner(study.user_attrs["search"]["pruner"])
    return Reporter(optuna.trial.Trial(study, trial_id), run_dir, epochs)
