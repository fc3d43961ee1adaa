"""A comparison in a local MLflow tracking store (`sqlite:///OUT/mlflow.db`, artifacts in OUT/artifacts): one
parent run per comparison, one child run per loss and seed, with the run's flattened config as params, its
metrics per epoch (the epoch as step) and its records as artifacts; the parent holds the report files.

MLflow appends every logged value to a metric's history and never changes a param, so exporting again looks its
runs up by their tags (the comparison's path, the run's key) and logs only what the store lacks. A run whose
stored values disagree with the disk (a resumed run retrained an epoch after its last checkpoint, a config was
changed) is replaced by a new one, so the store never holds two values for one epoch."""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

from mlflow.entities import Metric, Param, ViewType
from mlflow.entities import Run as StoredRun
from mlflow.tracking import MlflowClient

from lossbench.errors import require
from lossbench.export.replay import Comparison, Run

EXPERIMENT = "lossbench"
DATABASE, ARTIFACTS = "mlflow.db", "artifacts"
COMPARISON_TAG, KEY_TAG, STATUS_TAG, OVERRIDES_TAG = (
    "lossbench.comparison",
    "lossbench.run",
    "lossbench.status",
    "lossbench.overrides",
)
KIND_TAG = "mlflow.experimentKind"  # MLflow's own: training runs, so its UI opens on the runs (not on traces)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a child under its parent
STATES = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "running": "RUNNING"}  # else KILLED
BATCH, PARAMS_BATCH = 1000, 100  # the most metrics, and params, one log_batch call takes
PARAM_LIMIT, TAG_LIMIT = 6000, 8000  # the longest param and tag values MLflow stores (a list of 1000 class names)


def write(comparison: Comparison, out: Path) -> None:
    for name in ("alembic", "mlflow"):  # the store's set-up (schema migrations), not news to the user
        logging.getLogger(name).setLevel(logging.WARNING)
    require(
        not out.exists() or out.is_dir() and ((out / DATABASE).is_file() or not any(out.iterdir())),
        f"{out}: not empty and holds no {DATABASE}; choose a new or empty --out, or an earlier export's",
    )
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri(out))
    experiment = experiment_id(client, out)
    stored = stored_runs(client, experiment, str(comparison.root))
    parent = stored.pop(None, None)
    parent_id = (
        parent.info.run_id
        if parent
        else client.create_run(
            experiment, run_name=comparison.name, tags={COMPARISON_TAG: str(comparison.root)}
        ).info.run_id
    )
    client.set_tag(parent_id, OVERRIDES_TAG, fitted(" ".join(comparison.overrides), TAG_LIMIT))
    for path in comparison.report_files:
        client.log_artifact(parent_id, str(path))
    for run in comparison.runs:
        sync_run(client, experiment, parent_id, stored.get(run.key), run, str(comparison.root))
    states = {STATES.get(run.status, "KILLED") for run in comparison.runs}
    mark(client, parent_id, states.pop() if len(states) == 1 else "KILLED")


def tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / DATABASE).resolve()}"


def experiment_id(client: MlflowClient, out: Path) -> str:
    """lossbench's experiment, its artifacts beside the database (MLflow's default is ./mlruns, wherever the
    export happens to be started)."""
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return client.create_experiment(
            EXPERIMENT,
            artifact_location=(out / ARTIFACTS).resolve().as_uri(),
            tags={KIND_TAG: "custom_model_development"},
        )
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def stored_runs(client: MlflowClient, experiment: str, root: str) -> dict[str | None, StoredRun]:
    """The comparison's runs already in the store, by key (None: the parent). Tags are compared here, not in a
    filter string, so that any path (quotes included) matches itself."""
    found, token = {}, None
    while True:
        page = client.search_runs([experiment], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for stored in page:
            if stored.data.tags.get(COMPARISON_TAG) == root:
                found[stored.data.tags.get(KEY_TAG)] = stored
        token = page.token
        if not token:
            return found


def sync_run(
    client: MlflowClient, experiment: str, parent_id: str, stored: StoredRun | None, run: Run, root: str
) -> None:
    params = {key: fitted(str(value), PARAM_LIMIT) for key, value in run.config.items()}
    scalars = run.scalars()
    held = logged_steps(client, stored) if stored is not None else {}
    if stored is not None and not extendable(stored.data.params, held, params, scalars):
        client.delete_run(stored.info.run_id)
        stored, held = None, {}
    if stored is None:
        tags = {COMPARISON_TAG: root, KEY_TAG: run.key, PARENT_TAG: parent_id}
        stored = client.create_run(experiment, run_name=run.key, tags=tags)
    run_id = stored.info.run_id
    new_params = [Param(k, v) for k, v in params.items() if k not in stored.data.params]
    for start in range(0, len(new_params), PARAMS_BATCH):
        client.log_batch(run_id, params=new_params[start : start + PARAMS_BATCH])
    now = int(time.time() * 1000)
    new = [Metric(name, value, now, epoch) for epoch, name, value in scalars if (name, epoch) not in held]
    for start in range(0, len(new), BATCH):
        client.log_batch(run_id, metrics=new[start : start + BATCH])
    client.set_tag(run_id, STATUS_TAG, run.status)
    for path in run.files:
        client.log_artifact(run_id, str(path))
    mark(client, run_id, STATES.get(run.status, "KILLED"))


def fitted(text: str, limit: int) -> str:
    """text, cut to MLflow's limit with a mark that says so (the same cut on every export)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mark(client: MlflowClient, run_id: str, state: str) -> None:
    """A run still training stays RUNNING (with no end time); any other state ends it."""
    if state == "RUNNING":
        client.update_run(run_id, status=state)
    else:
        client.set_terminated(run_id, state)


def logged_steps(client: MlflowClient, stored: StoredRun) -> dict[tuple[str, int], list[float]]:
    """(metric, epoch) -> the values the store holds for it."""
    held: dict[tuple[str, int], list[float]] = {}
    for name in stored.data.metrics:
        for metric in client.get_metric_history(stored.info.run_id, name):
            held.setdefault((name, metric.step), []).append(metric.value)
    return held


def extendable(
    stored_params: dict[str, str],
    held: dict[tuple[str, int], list[float]],
    params: dict[str, str],
    scalars: list[tuple[int, str, float]],
) -> bool:
    """Whether a stored run is a beginning of what is on disk: its params and every value it holds agree."""
    if any(params.get(k) != v for k, v in stored_params.items()):
        return False
    wanted = {(name, epoch): value for epoch, name, value in scalars}
    return all(values == [wanted.get(step)] for step, values in held.items())


def ui_command(out: Path) -> str:
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri(out))} --host 127.0.0.1"
