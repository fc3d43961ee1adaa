"""`lossbench export`: a comparison replayed into TensorBoard event files and an MLflow store, read back through
each library's own reader. Two tiny comparisons of the same runs: one straight, one interrupted after epoch 1 of
its second run and resumed (exported before and after the resume, into the same place)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY, lossbench

from lossbench import launch
from lossbench.errors import LossbenchError
from lossbench.export import export
from lossbench.metrics import TIMING_COLUMNS
from lossbench.rundir import find_runs

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

ARGS = [*TINY, "losses=[ce,expected_score]", "seeds=[0]"]
STOPPED = "loss=expected_score,seed=0"  # the run interrupted after its first epoch
KEYS = {"loss=ce,seed=0", STOPPED}


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):
    """(straight, resumed-after-an-interruption) comparisons, and the exports of the second taken while it was
    interrupted (tensorboard and mlflow outputs, and what the export printed)."""
    import lossbench.run as R

    base = tmp_path_factory.mktemp("export")
    stop = R.write_status

    def ctrl_c_after_epoch_1(run_dir, status, epoch, *args, **kwargs):
        stop(run_dir, status, epoch, *args, **kwargs)
        if Path(run_dir).name == STOPPED and status == "running" and epoch == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        assert launch.compare(ARGS, str(base / "straight")) == 0
        patch.setattr(R, "write_status", ctrl_c_after_epoch_1)
        with pytest.raises(KeyboardInterrupt):
            launch.compare(ARGS, str(base / "resumed"))
        patch.setattr(R, "write_status", stop)
        partial = {to: exported(base / "resumed", to, base / f"resumed-{to}") for to in ("tensorboard", "mlflow")}
        assert launch.resume(str(base / "resumed")) == 0
    return base, partial


def exported(comparison: Path, to: str, out: Path) -> str:
    """Export through the command's function; returns what it printed (stdout and stderr)."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert export(str(comparison), to, str(out)) == 0
    return printed.getvalue()


# ---------------------------------------------------------------- reading back through the libraries' readers


def tensorboard_runs(logdir: Path) -> dict[str, dict]:
    """run folder -> {"scalars": {tag: [(step, value)]}, "hparams": {name: value}, "files": event files}.
    Orphaned data is kept (purge off): a second event file with the same steps would show as repeated steps."""
    runs = {}
    for run_dir in sorted(p for p in logdir.iterdir() if p.is_dir()):
        reader = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        reader.Reload()
        scalars = {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}
        content = reader.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        started = HParamsPluginData.FromString(content).session_start_info.hparams
        hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in started.items()}
        runs[run_dir.name] = {
            "scalars": scalars,
            "hparams": hparams,
            "files": len(list(run_dir.glob("events.out.tfevents.*"))),
        }
    return runs


def mlflow_runs(out: Path, comparison: Path) -> dict[str, dict]:
    """run key ("" for the comparison's parent) -> its params (path-free), metric histories, status, artifacts."""
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lossbench")
    stored = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    root = str(comparison.resolve())
    runs = {}
    for run in stored:
        assert run.data.tags["lossbench.comparison"] == root
        key = run.data.tags.get("lossbench.run", "")
        assert key not in runs, f"{key or 'the parent'} exported twice"
        histories = {
            name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
            for name in run.data.metrics
        }
        runs[key] = {
            "params": {k: v for k, v in run.data.params.items() if root not in v},  # pinned inputs' copies
            "metrics": histories,
            "status": run.info.status,
            "parent": run.data.tags.get("mlflow.parentRunId"),
            "id": run.info.run_id,
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        }
    return runs


def untimed(runs: dict[str, dict], field: str) -> dict[str, dict]:
    """Everything but the wall times, which differ between any two trainings of a run."""
    return {
        key: {**run, field: {k: v for k, v in run[field].items() if k not in TIMING_COLUMNS}}
        for key, run in runs.items()
    }


def steps(history: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in history]


# ---------------------------------------------------------------- tests


@pytest.mark.slow
def test_a_partial_comparison_exports_what_is_on_disk_and_says_so(comparisons):
    base, partial = comparisons
    for printed in partial.values():
        assert f"warning: {STOPPED}: interrupted; exported epochs 1-1 of 2 as they are on disk (partial)" in printed
        assert "loss=ce,seed=0: finished" not in printed, printed
        assert f"exported 2 run(s) of {(base / 'resumed').resolve()}" in printed
        assert "127.0.0.1" in printed


@pytest.mark.slow
def test_tensorboard_export_after_the_resume_equals_the_straight_comparisons(comparisons, tmp_path):
    base, _ = comparisons
    exported(base / "straight", "tensorboard", tmp_path / "straight")
    killed = base / "resumed-tensorboard" / f".{STOPPED}.0123abcd.export-tmp"  # as an export killed midway left it
    killed.mkdir()
    exported(base / "resumed", "tensorboard", base / "resumed-tensorboard")  # over the partial export
    assert not killed.exists()
    straight, resumed = tensorboard_runs(tmp_path / "straight"), tensorboard_runs(base / "resumed-tensorboard")
    assert set(straight) == KEYS
    for run in [*straight.values(), *resumed.values()]:
        assert run["files"] == 1  # replaced, not added to
        assert set(run["scalars"]) >= {"test_score", "test_acc", "train_loss", "val_score", "elapsed_s"}
        assert all(steps(history) == [1, 2] for history in run["scalars"].values())  # each epoch once
    assert untimed(resumed, "scalars") == untimed(straight, "scalars")
    assert straight[STOPPED]["hparams"] == {"loss.name": "expected_score", "seed": 0.0, "status": "finished"}
    assert resumed["loss=ce,seed=0"]["hparams"]["loss.name"] == "ce"


@pytest.mark.slow
def test_tensorboard_scalars_are_the_metrics_csv_values(comparisons, tmp_path):
    from lossbench.rundir import read_metrics

    base, _ = comparisons
    exported(base / "straight", "tensorboard", tmp_path / "tb")
    rows, _ = read_metrics(base / "straight" / STOPPED)
    scalars = tensorboard_runs(tmp_path / "tb")[STOPPED]["scalars"]
    for name in ("test_score", "train_loss", "elapsed_s"):
        assert scalars[name] == [(e, pytest.approx(v, rel=1e-6)) for e, v in zip(rows["epoch"], rows[name])]


@pytest.mark.slow
def test_mlflow_export_after_the_resume_equals_the_straight_comparisons(comparisons, tmp_path):
    base, _ = comparisons
    before = mlflow_runs(base / "resumed-mlflow", base / "resumed")
    assert steps(before[STOPPED]["metrics"]["test_score"]) == [1] and before[STOPPED]["status"] == "KILLED"
    for _ in range(2):  # twice: a third export changes nothing either
        exported(base / "resumed", "mlflow", base / "resumed-mlflow")
    exported(base / "straight", "mlflow", tmp_path / "straight")
    straight = mlflow_runs(tmp_path / "straight", base / "straight")
    resumed = mlflow_runs(base / "resumed-mlflow", base / "resumed")
    assert set(straight) == set(resumed) == {"", *KEYS}
    # the same runs in the store: the parent and the finished run were updated, not created again
    assert {k: resumed[k]["id"] for k in ("", "loss=ce,seed=0")} == {k: before[k]["id"] for k in ("", "loss=ce,seed=0")}
    for runs in (straight, resumed):
        assert {runs[key]["parent"] for key in KEYS} == {runs[""]["id"]}
        assert {"summary.md", "report.html", "test_score.png"} <= set(runs[""]["artifacts"])
        for key in KEYS:
            run = runs[key]
            assert run["status"] == "FINISHED" and run["params"]["loss.name"] == key[5:].split(",")[0]
            assert {"config.yaml", "metrics.csv", "run.json"} <= set(run["artifacts"])
            assert all(steps(history) == [1, 2] for history in run["metrics"].values())  # each epoch once
    for runs in (straight, resumed):
        for run in runs.values():
            del run["id"], run["parent"]
    assert untimed(resumed, "metrics") == untimed(straight, "metrics")


@pytest.mark.slow
def test_mlflow_replaces_a_run_whose_values_changed_on_disk(comparisons, tmp_path):
    """A resumed run may retrain an epoch with other values (a GPU does not repeat bit for bit): the store then
    holds the new values only, never two for one epoch."""
    base, _ = comparisons
    copy = tmp_path / "cmp"
    shutil.copytree(base / "straight", copy)
    exported(copy, "mlflow", tmp_path / "ml")
    metrics = copy / STOPPED / "metrics.csv"
    header, first, second = metrics.read_text().splitlines()
    column = header.split(",").index("test_score")
    values = second.split(",")
    values[column] = "0.125"
    metrics.write_text("\n".join([header, first, ",".join(values)]) + "\n")
    exported(copy, "mlflow", tmp_path / "ml")
    runs = mlflow_runs(tmp_path / "ml", copy)
    assert set(runs) == {"", *KEYS}
    assert runs[STOPPED]["metrics"]["test_score"][1] == (2, 0.125)
    assert steps(runs[STOPPED]["metrics"]["test_score"]) == [1, 2]


def test_a_value_longer_than_mlflow_takes_is_cut_and_says_so():
    from lossbench.export.to_mlflow import PARAM_LIMIT, fitted

    classes = str([f"class_{i}" for i in range(1000)])
    assert len(fitted(classes, PARAM_LIMIT)) == PARAM_LIMIT and fitted(classes, PARAM_LIMIT).endswith("…")
    assert fitted("[a, b]", PARAM_LIMIT) == "[a, b]"


@pytest.mark.slow
def test_an_export_writes_only_into_its_own_places(comparisons, tmp_path):
    base, _ = comparisons
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for to in ("tensorboard", "mlflow"):
        with pytest.raises(LossbenchError, match="mine: not empty"):
            export(str(base / "straight"), to, str(tmp_path / "mine"))
    exported(base / "straight", "tensorboard", tmp_path / "tb")
    with pytest.raises(LossbenchError, match=r"tb: holds the export of .*straight, not of .*resumed"):
        export(str(base / "resumed"), "tensorboard", str(tmp_path / "tb"))
    with pytest.raises(LossbenchError, match="--to must be one of tensorboard, mlflow, not 'wandb'"):
        export(str(base / "straight"), "wandb", None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("to", ["tensorboard", "mlflow"])
def test_a_missing_library_is_one_line_naming_the_extra(tmp_path, to):
    hidden = tmp_path / "hidden" / to
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(f"raise ImportError('No module named {to}')\n")
    result = lossbench("export", str(tmp_path), "--to", to, cwd=tmp_path, env={"PYTHONPATH": str(hidden.parent)})
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"error: --to {to} needs {to}, which is not installed: pip install 'lossbench[{to}]'"
    )
    assert not (tmp_path / to).exists()


@pytest.mark.slow
def test_the_cli_exports_into_the_comparison_by_default_where_nothing_looks_like_a_run(comparisons, tmp_path):
    base, _ = comparisons
    copy = tmp_path / "cmp"
    shutil.copytree(base / "straight", copy)
    shown = {
        "tensorboard": "tensorboard --logdir cmp/tensorboard --host 127.0.0.1",
        "mlflow": f"mlflow ui --backend-store-uri sqlite:///{copy.resolve()}/mlflow/mlflow.db --host 127.0.0.1",
    }
    for to, command in shown.items():
        result = lossbench("export", "cmp", "--to", to, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert command in result.stdout
    assert set(tensorboard_runs(copy / "tensorboard")) == KEYS
    assert set(mlflow_runs(copy / "mlflow", copy)) == {"", *KEYS}
    # the records copied into the store are not runs of the comparison (report and resume read find_runs)
    assert find_runs(copy) == [copy / key for key in sorted(KEYS)]


def test_a_second_export_into_the_same_place_is_refused_while_the_first_writes(tmp_path):
    """Two exports racing into one store (MLflow migrates its schema on first use) would crash or mix: the
    second is one line naming the place, and nothing is written."""
    import shutil

    from lossbench.errors import EnvironmentFailure
    from lossbench.rundir import locked

    comparison = tmp_path / "cmp"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "quick", comparison)
    out = tmp_path / "tb"
    with locked(tmp_path, ".tb.export.lock", what=out):
        with pytest.raises(EnvironmentFailure, match=r"tb is in use by another lossbench process"):
            export(str(comparison), "tensorboard", str(out))
    assert not out.exists()
