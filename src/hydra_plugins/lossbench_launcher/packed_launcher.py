"""lossbench's Hydra launcher `packed` (hydra/launcher=packed): the sweep's runs train in this process, and those
that differ only in loss and seed train together as one packed network (lossbench.pack), `size` at a time.

Hydra sets each job up as its basic launcher does (its directory, .hydra/ files); lossbench claims the directory as
it does for any job; then all of them train at once (lossbench.pack.train_packed), logging to the console and to
the sweep directory's log file. Each job's return value is its run's final status, as with the other launchers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


class PackedLauncher(Launcher):
    def __init__(self, size: int = 0) -> None:
        super().__init__()
        self.size = size
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.checked: dict[tuple[str, ...], DictConfig] = {}  # job overrides -> the config the sweeper composed

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context  # the task function is lossbench's, known
        self.keep_checked_configs(hydra_context)

    def keep_checked_configs(self, hydra_context: HydraContext) -> None:
        """Keep each job's config as the sweeper composes it to check the batch, so that launch() reuses it instead
        of composing it again in this same process: composing costs time per job, and a sweep has many."""
        loader = hydra_context.config_loader
        self.compose = loader.load_sweep_config

        def composed(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
            config = self.compose(master_config, sweep_overrides)
            self.checked[tuple(sweep_overrides)] = config
            return config

        loader.load_sweep_config = composed  # type: ignore[method-assign]  # this Hydra run's loader only

    def job_config(self, overrides: Sequence[str]) -> DictConfig:
        assert self.config is not None
        return self.checked.pop(tuple(overrides), None) or self.compose(self.config, list(overrides))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Imported here: Hydra imports every plugin whenever it starts, and lossbench imports torch.
        from lossbench.launch import packed_job, train_jobs

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Training {len(job_overrides)} jobs in this process, packed {self.size or 'all'} at a time")
        returns = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            sweep_config = self.job_config(overrides)
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=packed_job,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        # The runs' lines (each names its run) are logged as a job's are, to the console and to one file for the
        # pack, DIR/<job name>.log: one job's log file would hold the others' lines too.
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(Path(str(self.config.hydra.sweep.dir)).resolve())
        configure_log(sweep_config.hydra.job_logging, sweep_config.hydra.verbose)
        try:
            train_jobs(returns, self.size)
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns
