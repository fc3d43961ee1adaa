"""The outcome of a user's own multirun (`lossbench run -m ...`), read from its run directories on disk.

Jobs run by an out-of-process launcher (hydra/launcher=joblib, SLURM through submitit) report nothing back to
this process, so their statuses are read from their run directories, as a comparison's are. The sweep directory
is resolved once before launching and passed to Hydra (hydra_bridge.sweep_command), so that a `${now:...}` in it
names the same directory afterwards.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.override_parser.types import Override

from lossbench.components import CONFIG_MODULE, one_line
from lossbench.errors import LossbenchError
from lossbench.rundir import STATUS_FILE, find_runs, read_status


def resolved_sweep_dir(overrides: list[Override], key: str = "sweep") -> Path:
    """hydra.sweep.dir (key="run": hydra.run.dir) as the multirun (the run) will use it: the user's or the
    config's, its interpolations resolved."""
    lines = [o.input_line for o in overrides if not o.is_sweep_override()]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose("config", overrides=lines, return_hydra_config=True)
        return Path(str(cfg.hydra[key].dir))
    except Exception as err:  # e.g. an unknown hydra/launcher option
        raise LossbenchError(one_line(err)) from None


def unsuccessful_runs(sweep_dir: Path, since: float) -> dict[Path, str]:
    """Run directories under sweep_dir whose status was written at or after `since` (a time.time(); older runs
    there belong to an earlier sweep) and is not `finished`: absolute run directory -> "status message"."""
    bad = {}
    for run_dir in find_runs(sweep_dir):
        if (run_dir / STATUS_FILE).stat().st_mtime < since:
            continue
        status = read_status(run_dir)
        if status["status"] != "finished":
            bad[run_dir.resolve()] = f"{status['status']} {status.get('message', '')}".rstrip()
    return bad
