"""Reliability v3 (issue 26): results folders that were shared, copied or edited, inputs that changed under a run,
folders that are not lossbench's, and numbers at the edges. Each test names the kind of hostile case it covers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import HANG_S, TINY, lossbench, make_cfg
from omegaconf import OmegaConf

from lossbench import hydra_bridge, launch, trust
from lossbench.errors import LossbenchError
from lossbench.rundir import CONFIG_FILE, LAYOUT_VERSION, MARKER_FILE, claim, write_record, write_status


def one_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def interrupted_run(run_dir: Path, **edits: object) -> Path:
    """A run directory as a killed run leaves it before its first epoch, its config.yaml edited with `edits`
    (dotted key -> value, merged in)."""
    claim(run_dir, "run")
    cfg = OmegaConf.create(OmegaConf.to_container(make_cfg(*TINY), resolve=True))
    for key, value in edits.items():
        OmegaConf.update(cfg, key, value, force_add=True, merge=False)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    write_status(run_dir, "interrupted", 0, 2)
    return run_dir


# ---------------------------------------------------------------- 1. no code from a run directory

COPY = {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": "victim.txt"}


@pytest.mark.parametrize(
    "key, value",
    [
        ("data", COPY),  # the case
        ("model", {**COPY}),
        ("loss.reduction", COPY),  # nested: Hydra instantiates it recursively
        ("optim.extra", [1, COPY]),  # inside a list
        ("scores", {"_target_": "lossbench.atomic.write_atomic", "path": "victim.txt", "text": "x"}),  # lossbench's,
        # but not a component
        ("model", {"_target_": "${oc.env:EVIL}", "num_classes": 2}),  # an interpolated target
    ],
)
def test_resume_never_calls_a_target_that_is_not_lossbenchs(tmp_path, key, value):
    run_dir = interrupted_run(tmp_path / "run", **{key: value})
    (tmp_path / "victim.txt").write_text("mine")
    result = lossbench("resume", str(run_dir), cwd=tmp_path, env={"EVIL": "shutil.copyfile"})
    error = one_error(result)
    assert "not one of lossbench's own components" in error and "--trust" in error, error
    assert (tmp_path / "victim.txt").read_text() == "mine"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"  # nothing ran


def test_a_target_named_again_on_the_command_line_is_built(tmp_path):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "def Net(num_classes, in_channels):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))\n"
    )
    run_dir = interrupted_run(tmp_path / "run", **{"model": {"_target_": "mynets.Net"}, "train.epochs": 1})
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    refused = lossbench("resume", str(run_dir), cwd=tmp_path, env=env)
    assert "model._target_=mynets.Net" in one_error(refused)
    trusted = lossbench("resume", str(run_dir), "--trust", "mynets.Net", cwd=tmp_path, env=env)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def comparison_record(path: Path, *args: str) -> Path:
    claim(path, "comparison")
    write_record(
        path,
        {
            "version": LAYOUT_VERSION,
            "args": [*TINY, "losses=[ce]", *args],
            "cwd": str(path),
            "created": "2026-01-01_00-00-00",
        },
    )
    return path


@pytest.mark.parametrize(
    "args, named",
    [
        (["model=custom", "model._target_=shutil.copyfile"], "model._target_=shutil.copyfile"),
        (["model=custom", "model._target_=lossbench.models.SmallCNN,shutil.copyfile"], "shutil.copyfile"),  # a sweep
        (["+data.extra={_target_:shutil.copyfile,src:a,dst:b}"], "shutil.copyfile"),
        (["hydra.launcher._target_=shutil.copyfile"], "hydra.launcher._target_=shutil.copyfile"),
        (["hydra/launcher=submitit_local", "+hydra.launcher.setup=[touch victim]"], "hydra.launcher.setup"),
        (["+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so"], "hydra.job.env_set"),
        (["hydra.searchpath=[file:///tmp/evil]"], "hydra.searchpath"),
        (["hydra.job_logging.handlers.console.class=shutil.rmtree"], "hydra.job_logging"),
    ],
)
def test_resume_of_a_comparison_never_calls_what_its_record_names(tmp_path, args, named):
    cmp = comparison_record(tmp_path / "cmp", *args)
    with pytest.raises(LossbenchError, match="--trust") as err:
        launch.resume(str(cmp))
    assert named in str(err.value)
    assert not (cmp / "loss=ce,seed=0").exists()


def test_resume_of_a_comparison_refuses_a_run_whose_config_was_edited(tmp_path, monkeypatch):
    from lossbench.train import train_run

    monkeypatch.chdir(tmp_path)
    cmp = comparison_record(tmp_path / "cmp", "train.epochs=1")
    run_dir = interrupted_run(cmp / "loss=ce,seed=0", data=COPY)
    (tmp_path / "victim.txt").write_text("mine")
    with pytest.raises(LossbenchError, match="records data._target_=shutil.copyfile"):
        launch.resume(str(cmp))  # the comparison: before any job
    # A job resuming it (`run hydra.run.dir=RUN resume=true`, a comparison's job) checks the recorded copy too.
    with pytest.raises(LossbenchError, match="data._target_=shutil.copyfile"):
        train_run(make_cfg(*TINY), run_dir, resume=True)
    assert (tmp_path / "victim.txt").read_text() == "mine"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "data._target_=shutil.copyfile" in status["message"]


def test_lossbench_components_and_installed_launchers_pass(tmp_path):
    assert {"lossbench.models.SmallCNN", "torch.optim.SGD", "lossbench.scores.load_scores"} <= trust.own_targets()
    cmp = comparison_record(tmp_path / "cmp", "hydra/launcher=joblib", "model=resnet18", "optim=adamw")
    launch.check_recorded_overrides(
        launch.parse_overrides([*TINY, "hydra/launcher=joblib", "optim=adamw"]), str(cmp), (), "lossbench resume cmp"
    )


# ---------------------------------------------------------------- 2. records pin what they used


def test_recorded_overrides_hold_resolved_values(monkeypatch):
    monkeypatch.setenv("H3DATA", "/data/h3")
    monkeypatch.setenv("LR", "0.05")
    got = launch.resolved_overrides(
        [
            "-m",
            "data=imagefolder",
            "data.root=${oc.env:H3DATA}",
            "data.cache_dir='${oc.env:H3DATA}/c'",
            "+data.extra=[${oc.env:H3DATA},b]",
            "optim.lr='${oc.decode:${oc.env:LR}}'",
            "name=n${seed}",
            "data.subset_seed=1,${seed}",
            "train.epochs=2",
        ]
    )
    assert got == [
        "data=imagefolder",
        "data.root='/data/h3'",
        "data.cache_dir='/data/h3/c'",
        "+data.extra=['/data/h3','b']",
        "optim.lr=0.05",
        "name='n0'",
        "data.subset_seed=1,0",
        "train.epochs=2",
    ]
    assert launch.resolved_overrides(["name='\\${literal}'"]) == ["name='\\${literal}'"]
    monkeypatch.delenv("H3DATA")
    with pytest.raises(LossbenchError, match="data.root=.*cannot resolve its interpolation now"):
        launch.resolved_overrides(["data=imagefolder", "data.root=${oc.env:H3DATA}"])


def score_csv(path: Path, near: float) -> Path:
    path.write_text(f",class_000,class_001\nclass_000,2,{near}\nclass_001,{near},2\n")
    return path


TWO = ["data.names=generic", "data.num_classes=2", "data.classes=null", "train.epochs=1", "losses=[ce]"]


def test_a_comparison_pins_its_score_table_and_interpolations(tmp_path):
    table = score_csv(tmp_path / "s.csv", 1)
    env = {"TABLE_DIR": str(tmp_path)}
    args = [
        *TINY,
        "data.names=generic",
        "data.num_classes=2",
        "scores=file",
        "scores.path=${oc.env:TABLE_DIR}/s.csv",
        "train.epochs=1",
        "losses=[ce,expected_score]",
    ]
    done = lossbench("compare", *args, "--out", "cmp", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert not any("${" in a for a in record["args"]), record["args"]
    copies = list((tmp_path / "cmp" / "inputs").glob("scores-*.csv"))
    assert len(copies) == 1 and copies[0].read_text() == table.read_text()
    for run in ("loss=ce,seed=0", "loss=expected_score,seed=0"):
        assert OmegaConf.load(tmp_path / "cmp" / run / CONFIG_FILE).scores.path == str(copies[0])
    # The user's file replaced, the variable changed: a resume (of a run that never started) uses the copy.
    score_csv(table, -5)
    shutil.rmtree(tmp_path / "cmp" / "loss=expected_score,seed=0")
    again = lossbench("resume", "cmp", cwd=tmp_path, env={"TABLE_DIR": "/nowhere"})
    assert again.returncode == 0, again.stderr
    resumed = OmegaConf.load(tmp_path / "cmp" / "loss=expected_score,seed=0" / CONFIG_FILE)
    assert resumed.scores.path == str(copies[0])
    # The copy itself edited: refused before any job.
    copies[0].write_text(table.read_text())
    shutil.rmtree(tmp_path / "cmp" / "loss=expected_score,seed=0")
    refused = lossbench("resume", "cmp", cwd=tmp_path)
    assert "was changed after lossbench copied it" in one_error(refused)
    assert not (tmp_path / "cmp" / "loss=expected_score,seed=0").exists()


def npz(path: Path, permute: bool = False) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(256) % 3, np.arange(96) % 3
    x_train = rng.normal(size=(256, 5)) + y_train[:, None]
    x_test = rng.normal(size=(96, 5)) + y_test[:, None]
    if permute:
        y_train = (y_train + 1) % 3
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


ARRAYS = [
    "data=arrays",
    "model=mlp",
    "model.hidden=[8]",
    "scores=identity",
    "device=cpu",
    "train.progress=false",
    "train.batch_size=64",
]


@pytest.mark.parametrize("change", ["replace", "remove", "folder"])
def test_a_resume_refuses_data_that_changed_since_the_run_started(tmp_path, change):
    from lossbench.train import train_run

    if change == "folder":
        from PIL import Image

        for split in ("train", "test"):
            for name in ("cat", "dog"):
                (tmp_path / "img" / split / name).mkdir(parents=True)
                for j in range(4):
                    Image.new("RGB", (8, 8), (j * 50, 0, 0)).save(tmp_path / "img" / split / name / f"{j}.png")
        args = [
            "data=imagefolder",
            f"data.root={tmp_path / 'img'}",
            "data.image_size=8",
            "data.val_size=null",
            "model.widths=[4]",
            "scores=identity",
            "device=cpu",
            "train.progress=false",
        ]
    else:
        args = [*ARRAYS, f"data.path={npz(tmp_path / 'x.npz')}"]
    cfg = make_cfg(*args, "train.epochs=2", f"data.cache_dir={tmp_path / 'cache'}" if change == "folder" else "seed=0")
    run_dir = tmp_path / "run"
    assert train_run(cfg, run_dir) == "finished"
    write_status(run_dir, "interrupted", 1, 2)  # as a kill after epoch 1 leaves it
    if change == "replace":
        npz(tmp_path / "x.npz", permute=True)
    elif change == "remove":
        (tmp_path / "x.npz").unlink()
    else:
        (tmp_path / "img" / "train" / "cat" / "0.png").rename(tmp_path / "img" / "train" / "dog" / "9.png")
    with pytest.raises(LossbenchError, match="resuming would train one run on two inputs"):
        train_run(cfg, run_dir, resume=True)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_a_comparison_resume_refuses_a_value_that_composes_differently_now(tmp_path, monkeypatch):
    """An older record kept `${oc.env:...}` unresolved: resumed with the variable changed, its new runs would use
    another value than its finished ones."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUBSET", "1")
    cmp = comparison_record(tmp_path / "cmp", "data.subset_seed=${oc.env:SUBSET}", "losses=[ce,expected_score]")
    interrupted_run(cmp / "loss=ce,seed=0", **{"data.subset_seed": "1", "losses": ["ce", "expected_score"]})
    monkeypatch.setenv("SUBSET", "2")
    with pytest.raises(LossbenchError, match="records data.subset_seed=1, the record now gives 2"):
        launch.resume(str(cmp))
    assert not (cmp / "loss=expected_score,seed=0").exists()


# ---------------------------------------------------------------- 3. only lossbench's folders are lossbench's


def users_folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


FOREIGN = [
    {"multirun.yaml": "hydra:\n  job:\n    name: my_app\n"},  # any Hydra app's sweep
    {"multirun.yaml": "hydra:\n  job:\n    name: lossbench\n"},  # lossbench's name, but no run of lossbench's
    {"compare.json": "{not json"},
    {"compare.json": '{"runs": 3}'},
    {"status.json": '{"status": "done"}', "config.yaml": "model: resnet\n"},  # a run-like folder, no loss
]


@pytest.mark.parametrize("files", FOREIGN)
def test_a_file_name_alone_does_not_make_a_folder_lossbenchs(tmp_path, files):
    folder = users_folder(tmp_path / "mine", **files, **{"summary.md": "my notes"})
    for kind in ("comparison", "run"):
        with pytest.raises(LossbenchError, match="not empty and not made by lossbench"):
            claim(folder, kind)
    with pytest.raises(LossbenchError):
        launch.report(str(folder))
    assert (folder / "summary.md").read_text() == "my notes" and not (folder / MARKER_FILE).exists()


def test_compare_refuses_a_hydra_apps_sweep_folder(tmp_path):
    folder = users_folder(tmp_path / "mine", **FOREIGN[0], **{"summary.md": "my notes"})
    result = lossbench("compare", *TINY, "losses=[ce]", "--out", str(folder), cwd=tmp_path)
    assert "not empty and not made by lossbench" in one_error(result)
    assert (folder / "summary.md").read_text() == "my notes"


def test_version_1_folders_are_still_recognised_by_their_contents(tmp_path):
    run = users_folder(
        tmp_path / "sweep" / "0", **{"status.json": '{"status": "finished"}', "config.yaml": "loss:\n  name: ce\n"}
    )
    claim(run, "run")
    users_folder(tmp_path / "sweep2", **{"multirun.yaml": "hydra:\n  job:\n    name: lossbench\n"})
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra:\n  job:\n    name: lossbench\n")
    (run / MARKER_FILE).unlink()
    claim(tmp_path / "sweep", "comparison")
    cmp = users_folder(tmp_path / "cmp", **{"compare.json": '{"args": ["losses=[ce]"]}'})
    claim(cmp, "comparison")


def test_run_resolves_an_interpolated_output_directory_before_claiming_it(tmp_path):
    folder = tmp_path / "mine"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("mine")
    result = lossbench("run", *TINY, "hydra.run.dir=${oc.env:MYOUT}", cwd=tmp_path, env={"MYOUT": str(folder)})
    assert "not empty and not made by lossbench" in one_error(result)
    assert (folder / ".hydra" / "config.yaml").read_text() == "mine"
    sweep = lossbench(
        "run", "-m", *TINY, "seed=0,1", "hydra.sweep.dir=${oc.env:MYOUT}", cwd=tmp_path, env={"MYOUT": str(folder)}
    )
    assert "not empty and not made by lossbench" in one_error(sweep)


def test_run_into_a_comparison_is_refused_while_the_comparison_is_in_use(tmp_path):
    from lossbench.rundir import locked

    cmp = tmp_path / "cmp"
    claim(cmp, "comparison")
    with locked(cmp):
        result = lossbench("run", *TINY, f"hydra.run.dir='{cmp / 'loss=expected_score,seed=0'}'", cwd=tmp_path)
        assert "is in use by another lossbench process" in one_error(result, code=1)
        nested = lossbench("run", *TINY, f"hydra.run.dir={cmp / 'a' / 'b'}", cwd=tmp_path)
        assert "is in use by another lossbench process" in one_error(nested, code=1)
    assert not (cmp / "loss=expected_score,seed=0" / "metrics.csv").exists()
    # Once it is free, runs started side by side in it do not stop each other.
    import sys

    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "lossbench.cli", "run", *TINY, "train.epochs=1", f"hydra.run.dir={cmp / name}"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in "ab"
    ]
    assert all(run.wait(timeout=HANG_S) == 0 for run in runs), [run.stderr.read() for run in runs]


def test_explain_replaces_only_its_own_figure(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "explain_grad_norm.png")
    before = (tmp_path / "explain_grad_norm.png").read_bytes()
    refused = lossbench("explain", "--scores", "identity", "--out", str(tmp_path), cwd=tmp_path)
    assert "was not written by lossbench explain" in one_error(refused)
    assert (tmp_path / "explain_grad_norm.png").read_bytes() == before
    (tmp_path / "explain_grad_norm.png").unlink()
    for _ in range(2):  # its own figure is replaced
        done = lossbench("explain", "--scores", "identity", "--out", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- 4. the report takes the comparison's own runs


def test_report_leaves_out_a_nested_comparison_and_copied_runs_and_names_them(tmp_path):
    base = tmp_path / "base"
    done = lossbench("compare", *TINY, "train.epochs=1", "losses=[ce,expected_score]", "--out", str(base), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    inner = lossbench(
        "compare", *TINY, "train.epochs=1", "losses=[ce]", "data.noise=9", "--out", str(base / "inner"), cwd=tmp_path
    )
    assert inner.returncode == 0, inner.stderr
    shutil.copytree(base / "loss=ce,seed=0", base / "loss=ce,seed=0 (copy)")
    report = lossbench("report", str(base), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr
    summary = (base / "summary.md").read_text()
    assert "data.noise" not in summary  # the inner comparison's data is no swept parameter
    assert f"{base / 'inner'}: a comparison of its own" in summary
    assert "loss=ce,seed=0 (copy): a copy of" in summary
    curves = __import__("pandas").read_csv(base / "curves.csv")
    assert sorted(set(curves["run_dir"])) == [str(base / "loss=ce,seed=0"), str(base / "loss=expected_score,seed=0")]
    # A copy whose marker cannot tell (an older version's): the same loss, seed and setting, left out.
    for marker in base.glob("*/" + MARKER_FILE):
        marker.write_text(json.dumps({"kind": "run", "version": LAYOUT_VERSION}))
    assert launch.report(str(base)) == 0
    assert "the same loss, seed and setting as" in (base / "summary.md").read_text()


# ---------------------------------------------------------------- 5. lost rows never pass as finished


def trained(tmp_path: Path, epochs: int = 2) -> Path:
    from lossbench.train import train_run

    run_dir = tmp_path / "run"
    assert train_run(make_cfg(*TINY, f"train.epochs={epochs}"), run_dir) == "finished"
    return run_dir


def test_a_resume_refuses_a_run_whose_metrics_rows_were_lost(tmp_path):
    from lossbench.train import train_run

    run_dir = trained(tmp_path)
    write_status(run_dir, "interrupted", 2, 2)
    (run_dir / "metrics.csv").unlink()
    with pytest.raises(LossbenchError, match="checkpoint.pt is at epoch 2, but its metrics.csv holds no rows"):
        train_run(make_cfg(*TINY), run_dir, resume=True)
    text = (run_dir / "metrics.csv").exists()
    assert not text and json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_a_status_hand_set_to_finished_is_not_believed_without_its_rows(tmp_path, caplog):
    from lossbench.train import train_run

    run_dir = trained(tmp_path)  # checkpoint and rows at epoch 2; the config now asks for 3
    config = OmegaConf.load(run_dir / CONFIG_FILE)
    config.train.epochs = 3
    OmegaConf.save(config, run_dir / CONFIG_FILE)
    write_status(run_dir, "finished", 3, 3)
    assert train_run(make_cfg(*TINY), run_dir, resume=True) == "finished"
    assert "says finished, but its metrics.csv holds epochs 1, 2, not epochs 1-3 of 3" in caplog.text
    assert list(__import__("pandas").read_csv(run_dir / "metrics.csv")["epoch"]) == [1, 2, 3]


def test_the_report_never_takes_an_unfinished_run_as_final(tmp_path):
    import pandas as pd

    from lossbench.report import build_report
    from lossbench.rundir import METRIC_COLUMNS

    def run(name, seed, accuracies, status):
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = {"seed": seed, "loss": {"name": "ce"}, "train": {"epochs": 3}, "data": {"name": "x"}}
        OmegaConf.save(OmegaConf.create(config), run_dir / CONFIG_FILE)
        (run_dir / "status.json").write_text(json.dumps({"status": status, "epoch": len(accuracies), "epochs": 3}))
        rows = pd.DataFrame(0.0, index=range(len(accuracies)), columns=METRIC_COLUMNS)
        rows["epoch"], rows["test_acc"] = range(1, len(accuracies) + 1), accuracies
        rows["test_score"], rows["elapsed_s"] = rows["test_acc"], rows["epoch"]
        rows.to_csv(run_dir / "metrics.csv", index=False)

    run("a", 0, [0.5, 0.6, 0.7], "finished")
    run("b", 1, [0.1], "interrupted")  # killed after epoch 1 of 3
    run("c", 2, [0.2, 0.3], "finished")  # hand-set to finished after epoch 2 of 3
    report = build_report(tmp_path)
    row = report.summary.set_index("loss").loc["ce"]
    assert row["final_test_acc_n"] == 1 and row["final_test_acc_mean"] == pytest.approx(0.7)
    assert any(f"{tmp_path / 'b'}: interrupted after epoch 1 of 3; left out" in w for w in report.warnings)
    assert any(f"{tmp_path / 'c'}: status finished, but its metrics.csv holds 2 of 3" in w for w in report.warnings)
    assert set(report.curves["run_dir"]) == {str(tmp_path / n) for n in "abc"}  # the curves still show them


# ---------------------------------------------------------------- 6. processes and permissions


@pytest.mark.slow
def test_no_joblib_worker_outlives_a_killed_compare(tmp_path):
    import signal
    import sys
    import time

    from lossbench.lifeline import alive

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lossbench.cli",
            "compare",
            *TINY,
            "train.epochs=100000",
            "losses=[ce,expected_score]",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "--out",
            "cmp",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = [tmp_path / "cmp" / f"loss={loss},seed=0" for loss in ("ce", "expected_score")]
    try:
        deadline = time.time() + HANG_S
        while not all((r / "metrics.csv").exists() for r in runs):
            assert time.time() < deadline and process.poll() is None, "the jobs did not start"
            time.sleep(0.2)
        workers = {int((r / ".lossbench.lock").read_text()) for r in runs}
        assert process.pid not in workers  # each run is trained in a worker process
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    # Taking a run's lock at once (as an immediate resume does) waits for its stopping worker instead of naming a
    # process the user never started.
    from lossbench.rundir import locked

    for run_dir in runs:
        with locked(run_dir):
            pass
    deadline = time.time() + HANG_S
    while any(alive(pid) for pid in workers):
        assert time.time() < deadline, f"worker(s) {[p for p in workers if alive(p)]} outlived the command"
        time.sleep(0.2)
    for run_dir in runs:
        assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    again = lossbench("report", "cmp", cwd=tmp_path)  # the locks are free
    assert again.returncode == 0, again.stderr


def test_a_read_only_run_is_refused_in_one_line_and_recorded_failed(tmp_path, monkeypatch):
    """As root, chmod does not stop writes: the check is made to see a read-only folder, and status.json is then
    rewritten in place (a folder that takes no new file)."""
    run_dir = interrupted_run(tmp_path / "run")
    cmp = comparison_record(tmp_path / "cmp")
    interrupted_run(cmp / "loss=ce,seed=0", losses=["ce"])
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: False if Path(path).name in ("run", "loss=ce,seed=0") else real_access(path, mode),
    )
    import lossbench.atomic

    def no_new_files(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(lossbench.atomic.tempfile, "mkstemp", no_new_files)
    for directory, run in ((run_dir, run_dir), (cmp, cmp / "loss=ce,seed=0")):
        with pytest.raises(LossbenchError, match="not writable") as err:
            launch.resume(str(directory))
        assert err.value.exit_code == 1
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "failed" and "not writable" in status["message"]


def test_hydras_errors_over_an_unwritable_log_are_one_line(monkeypatch):
    def job():
        try:
            raise PermissionError(13, "Permission denied", "/cmp/run/lossbench.log")
        except PermissionError as err:
            raise ValueError("Unable to configure handler 'file'") from err

    with pytest.raises(PermissionError) as err:
        hydra_bridge.launch_hydra([], job=job)
    assert err.value.filename == "/cmp/run/lossbench.log"


# ---------------------------------------------------------------- 7. images and names


def test_every_extension_pil_reads_is_an_image(tmp_path):
    from PIL import Image

    from lossbench.data.images import _decode, image_extensions

    for ext in (".ppm", ".jfif", ".pgm", ".tga", ".JPG", ".PPM"):
        assert ext.lower() in image_extensions()
    root = tmp_path / "img"
    for split in ("train", "test"):
        for name, ext in (("a", ".ppm"), ("b", ".jfif")):
            (root / split / name).mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (8, 8), (j * 60, 0, 0)).save(
                    root / split / name / f"{j}{ext}", format=None if ext != ".jfif" else "JPEG"
                )
    cfg = make_cfg(
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=8",
        f"data.cache_dir={tmp_path}",
        "data.val_size=null",
        "scores=identity",
    )
    from lossbench.data.loading import load_dataset
    from lossbench.data.sources import dataset_classes

    data = load_dataset(cfg.data, dataset_classes(cfg.data), __import__("torch").eye(2))
    assert len(data.train_y) == 6 and len(data.test_y) == 6
    assert _decode(root / "train" / "a" / "2.ppm", 8)[0, 0, 0] == 120


def test_class_names_that_look_like_numbers_or_missing_values_survive_confusion_csv(tmp_path):
    import torch

    from lossbench.rundir import read_confusion, write_confusion

    names = ["00000", "00001", "NA", "nan", "1e3", ""]
    write_confusion(tmp_path / "confusion.csv", torch.arange(36).view(6, 6).tolist(), names)
    table, warning = read_confusion(tmp_path / "confusion.csv")
    assert warning is None and list(table.index) == names and list(table.columns) == names
    assert table.loc["NA", "00001"] == 13


def test_bytes_class_names_in_an_npz_are_text(tmp_path):
    import numpy as np

    from lossbench.data.arrays import read_arrays

    np.savez(
        tmp_path / "b.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.array([0, 1, 0, 1]),
        x_test=np.zeros((2, 2)),
        y_test=np.array([0, 1]),
        classes=np.array([b"alkane", b"alkene"]),
    )
    assert read_arrays(tmp_path / "b.npz").classes == ["alkane", "alkene"]
    np.savez(
        tmp_path / "c.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.array([0, 1, 0, 1]),
        x_test=np.zeros((2, 2)),
        y_test=np.array([0, 1]),
        classes=np.array([b"\xff", b"x"]),
    )
    with pytest.raises(LossbenchError, match="classes are not UTF-8 text"):
        read_arrays(tmp_path / "c.npz")


def test_a_float_image_holding_0_to_255_is_not_white():
    import numpy as np
    from PIL import Image

    from lossbench.data.images import to_rgb

    ramp = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)
    assert np.abs(np.asarray(to_rgb(Image.fromarray(ramp, "F")))[..., 0] - ramp.round()).max() <= 1
    unit = ramp / 255  # 0..1 floats stay read as 0..1
    assert np.abs(np.asarray(to_rgb(Image.fromarray(unit, "F")))[..., 0] - ramp.round()).max() <= 1


def test_a_decompression_bomb_warning_names_the_file(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    from lossbench.data.images import decode_images

    Image.new("RGB", (12, 12)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_images([tmp_path / "big.png"], 8)
    messages = [str(w.message) for w in caught]
    assert any(str(tmp_path / "big.png") in m and "12x12 pixels" in m for m in messages), messages
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


# ---------------------------------------------------------------- 8. numbers refused up front, or computed right


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["optim.lr=1e-300"], "optim.lr=1e-300: must be a number in [1.18e-38, 3.4e+38]"),
        (["optim.lr=1e-45"], "optim.lr=1e-45: must be a number in"),  # a float32 subnormal
        (["optim.lr=1e300"], "optim.lr=1e+300: must be a number in"),
        (["optim.lr=inf"], "optim.lr must be > 0 and finite"),
        (["optim.momentum=1.5"], "optim.momentum=1.5: must be a number in [0, 1)"),
        (["optim.momentum=1"], "optim.momentum=1: must be a number in [0, 1)"),
        (["optim.momentum=-0.1"], "optim.momentum=-0.1: must be a number in [0, 1)"),
        (["seed=1180591620717411303424"], "seed=1180591620717411303424: must be an integer in [0, 2^63-1]"),
        (["seed=-1"], "seed=-1: must be an integer in [0, 2^63-1]"),
        (["data.subset_seed=1180591620717411303424"], "data.subset_seed=1180591620717411303424: must be an integer"),
        (["data.augment.crop_padding=-5"], "data.augment.crop_padding=-5: must be an integer >= 0"),
        (["data.augment.crop_padding=2.5"], "data.augment.crop_padding must be an integer"),
        (["data.augment.flip=maybe"], "data.augment.flip='maybe': must be true or false"),
        (["data.augment.flip=1"], "data.augment.flip=1: must be true or false"),
        (["data.classes=cat"], "data.classes='cat': must be a list of class names"),
        (["loss=soft_label_ce", "loss.tau=inf"], "tau must be > 0 and finite"),
        (["loss=soft_label_ce", "loss.tau=nan"], "tau must be > 0 and finite"),
        (["loss=ce_expected_score", "loss.lam=inf"], "lam must be in [0, 3.4e+38]"),
        (["loss=log_expected_score", "loss.eps=1e30"], "eps must be in [1.18e-38, 1)"),
        (["loss=log_expected_score", "loss.eps=1e-300"], "eps must be in [1.18e-38, 1)"),
        (["loss=power_expected_score", "loss.eps=2"], "eps must be 0 or in [1.18e-38, 1)"),
        (["loss=power_expected_score", "loss.eps=1e-300"], "eps must be 0 or in [1.18e-38, 1)"),
        (["scores.exact=3e38", "scores.far=-3e38"], "scores.exact: 3e+38 is outside [-1e+32, 1e+32]"),
        (["schedule.warmup_epochs=inf"], "schedule.warmup_epochs=inf: must be a finite number >= 0"),
        (["optim.nesterov=maybe"], "optim.nesterov='maybe': must be true or false"),
        (["train.checkpoint=yes please"], "train.checkpoint='yes please': must be true or false"),
        (["data.noise=inf"], "data.noise=inf: must be a number in [0, 1e+06]"),
        (["data.similarity=2"], "data.similarity=2: must be a number in [0, 1]"),
    ],
)
def test_numbers_that_would_do_nothing_or_blow_up_are_refused_up_front(tmp_path, args, fragment):
    result = lossbench("run", *TINY, *args, cwd=tmp_path)
    assert fragment in one_error(result)
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_refuses_a_bad_seed_before_any_job(tmp_path):
    result = lossbench("compare", *TINY, "seeds=[0,1180591620717411303424]", "--out", "cmp", cwd=tmp_path)
    assert "must be an integer in [0, 2^63-1]" in one_error(result)
    assert not (tmp_path / "cmp").exists()


def test_extreme_loss_parameters_are_computed_at_their_limits():
    import torch

    from lossbench.losses import build_loss

    scores = torch.tensor([[2.0, 1.0, -1.0], [1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])
    logits = torch.randn(8, 3, requires_grad=True)
    targets = torch.arange(8) % 3
    sharp = build_loss("soft_label_ce", scores, tau=1e-300)
    assert torch.equal(sharp.soft_labels, torch.eye(3))  # the one-hot vector, the limit as tau -> 0
    ce = build_loss("ce", scores)(logits, targets)
    assert torch.allclose(sharp(logits, targets), ce)
    flat = build_loss("soft_label_ce", scores, tau=1e300)
    assert torch.allclose(flat.soft_labels, torch.full((3, 3), 1 / 3))
    log_loss = build_loss("log_expected_score", scores)(logits, targets)
    power = build_loss("power_expected_score", scores, alpha=1e-300)(logits, targets)
    assert torch.isfinite(power) and torch.allclose(power, log_loss)  # alpha -> 0: the log loss
    near = build_loss("power_expected_score", scores, alpha=1e-4)(logits, targets)
    assert torch.allclose(near, log_loss, rtol=1e-3)
    power.backward()
    assert torch.isfinite(logits.grad).all()


def test_explain_at_extreme_tau_prints_numbers_not_nan(tmp_path):
    for tau in ("1e-300", "1e300"):
        result = lossbench("explain", "--scores", "identity", "--tau", tau, "--out", str(tmp_path / tau), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "nan" not in result.stdout.lower(), result.stdout
    huge = tmp_path / "huge.csv"
    huge.write_text(",a,b\na,3e38,-3e38\nb,-3e38,3e38\n")
    refused = lossbench("explain", "--scores", str(huge), "--out", str(tmp_path), cwd=tmp_path)
    assert "is outside [-1e+32, 1e+32]" in one_error(refused)


# ---------------------------------------------------------------- 9. smaller

NO_MODEL = [a for a in TINY if not a.startswith("model.")]


def one_more_class(num_classes, in_channels):
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes + 1))


def a_tuple(num_classes, in_channels):
    import torch

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

        def forward(self, x):
            return self.head(x), x

    return Pair()


def detached(num_classes, in_channels):
    import torch

    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

        def forward(self, x):
            return self.head(x).detach()

    return Detached()


@pytest.mark.parametrize(
    "factory, fragment",
    [
        ("one_more_class", "returns shape [2, 11] for a batch of 2, not [2, 10]"),
        ("a_tuple", "returns a tuple, not a tensor of logits [batch, 10]"),
        ("detached", "logits that depend on no trainable parameter"),
    ],
)
def test_a_custom_models_output_is_checked_before_training(factory, fragment):
    import torch

    from lossbench.data.loading import load_dataset
    from lossbench.data.sources import dataset_classes
    from lossbench.step import build_training

    cfg = make_cfg(*NO_MODEL, "model=custom", f"model._target_=test_hostile.{factory}")
    data = load_dataset(cfg.data, dataset_classes(cfg.data), torch.eye(10))
    with pytest.raises(LossbenchError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        build_training(cfg, data, steps_per_epoch=1)


def test_cannot_import_is_the_first_line(tmp_path):
    result = lossbench("run", *NO_MODEL, "model=custom", "model._target_=nope.Net", cwd=tmp_path)
    assert result.stderr.splitlines()[0].startswith("error: model._target_=nope.Net: cannot import it")
    one_error(result)


@pytest.mark.parametrize("separator, name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_table_with_another_separator_says_so(tmp_path, separator, name):
    from lossbench.scores import read_score_csv

    path = tmp_path / "s.csv"
    path.write_text("\n".join(separator.join(row) for row in [["", "a", "b"], ["a", "2", "1"], ["b", "1", "2"]]))
    with pytest.raises(LossbenchError, match=f"separated by {name}, not commas"):
        read_score_csv(path)


def test_out_expands_the_home_directory(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = lossbench("explain", "--scores", "identity", "--out=~/x", cwd=tmp_path, env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert (home / "x" / "explain_grad_norm.png").exists() and not (tmp_path / "~").exists()
    done = lossbench(
        "compare", *TINY, "train.epochs=1", "losses=[ce]", "--out=~/cmp", cwd=tmp_path, env={"HOME": str(home)}
    )
    assert done.returncode == 0, done.stderr
    assert (home / "cmp" / "compare.json").exists() and not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    "sweep, fragment",
    [
        ("optim.lr=0.1,0.10", "optim.lr: 0.1 listed more than once"),
        ("seed=0,0", "seed: 0 listed more than once"),
        ("loss=ce,'ce'", "loss: ce listed more than once"),
        ("optim.lr=1,1.0", "optim.lr: 1 listed more than once"),
    ],
)
def test_a_value_listed_twice_in_a_sweep_is_refused_up_front(tmp_path, sweep, fragment):
    assert fragment in one_error(lossbench("run", "-m", *TINY, sweep, cwd=tmp_path))
    assert fragment in one_error(lossbench("compare", *TINY, sweep, "--out", "cmp", cwd=tmp_path))
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "cmp").exists()


def test_commands_started_in_the_same_second_get_their_own_directories(tmp_path):
    first = launch.new_directory(tmp_path, "run_2026-01-01_00-00-00")
    second = launch.new_directory(tmp_path, "run_2026-01-01_00-00-00")
    assert first != second and first.is_dir() and second.is_dir()


def test_a_report_removes_what_a_killed_report_left(tmp_path):
    import pandas as pd

    from lossbench.rundir import METRIC_COLUMNS

    claim(tmp_path, "comparison")
    run_dir = tmp_path / "a"
    run_dir.mkdir()
    OmegaConf.save(OmegaConf.create({"seed": 0, "loss": {"name": "ce"}}), run_dir / CONFIG_FILE)
    (run_dir / "status.json").write_text(json.dumps({"status": "finished", "epoch": 1}))
    rows = pd.DataFrame(0.5, index=[0], columns=METRIC_COLUMNS)
    rows["epoch"] = 1
    rows.to_csv(run_dir / "metrics.csv", index=False)
    stale = [tmp_path / ".test_acc.png.a1b2c3d4.tmp", tmp_path / ".summary.md.x_y_z_w_.tmp"]
    for path in stale:
        path.write_text("half")
    (tmp_path / ".notes.tmp").write_text("mine")  # not one of lossbench's temporary names
    assert launch.report(str(tmp_path)) == 0
    assert not any(p.exists() for p in stale) and (tmp_path / ".notes.tmp").exists()


def test_relative_paths_mean_the_same_with_hydra_job_chdir(tmp_path):
    npz(tmp_path / "x.npz")
    done = lossbench(
        "run", *ARRAYS, "data.path=x.npz", "train.epochs=1", "hydra.job.chdir=true", "hydra.run.dir=out", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert OmegaConf.load(tmp_path / "out" / CONFIG_FILE).data.path == str(tmp_path / "x.npz")


def test_an_interrupted_tune_trial_does_not_point_at_resume(tmp_path, caplog):
    from lossbench.run import recorded_failures

    trial = tmp_path / "tuned" / "tuning" / "ce" / "trial_1"
    trial.mkdir(parents=True)
    write_status(trial, "running", 1, 2)
    with pytest.raises(KeyboardInterrupt), recorded_failures([trial]):
        raise KeyboardInterrupt
    assert "cannot be resumed" in caplog.text and "lossbench resume" not in caplog.text


def test_a_read_only_report_folder_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    import tempfile

    from lossbench.atomic import write_atomic

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cmp").mkdir()

    def refused(dir, prefix, suffix):  # as Python 3.12's mkstemp fails there: an absolute temporary name
        raise PermissionError(13, "Permission denied", str(Path(dir).resolve() / f"{prefix}abcd1234{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as err:
        write_atomic(Path("cmp") / "summary.md", "x")
    assert err.value.filename == str(Path("cmp") / "summary.md")


def test_a_tune_records_resolved_values_and_pins_its_score_table(tmp_path):
    record = {
        "args": [],
        "search": "grid",
        "sampler_seed": 0,
        "trials_per_loss": 1,
        "losses": {
            "ce": {
                "space": {"optim.lr": {"low": 0.01, "high": 0.1, "log": True}},
                "trials": [{"trial": 0, "setting": {"optim.lr": 0.05}, "status": "finished", "val_score": 1.0}],
                "chosen": {"trial": 0, "setting": {"optim.lr": 0.05}, "val_score": 1.0},
            }
        },
    }
    (tmp_path / "rec.json").write_text(json.dumps(record))
    score_csv(tmp_path / "s.csv", 1)
    done = lossbench(
        "tune",
        "--from",
        "rec.json",
        *TINY,
        "train.epochs=1",
        "losses=[ce]",
        "data.names=generic",
        "data.num_classes=2",
        "scores=file",
        "scores.path=${oc.env:TABLE}",
        "--out",
        "t",
        cwd=tmp_path,
        env={"TABLE": str(tmp_path / "s.csv")},
    )
    assert done.returncode == 0, done.stderr
    recorded = json.loads((tmp_path / "t" / "tune.json").read_text())["args"]
    assert not any("${" in a for a in recorded), recorded
    copy = next((tmp_path / "t" / "inputs").glob("scores-*.csv"))
    configs = list((tmp_path / "t").glob("*/" + CONFIG_FILE))
    assert configs and all(OmegaConf.load(c).scores.path == str(copy.resolve()) for c in configs)


def test_a_resume_without_a_checkpoint_says_it_drops_the_rows(tmp_path, caplog):
    from lossbench.train import train_run

    run_dir = trained(tmp_path)
    write_status(run_dir, "interrupted", 2, 2)
    (run_dir / "checkpoint.pt").unlink()
    assert train_run(make_cfg(*TINY), run_dir, resume=True) == "finished"
    assert "has no checkpoint.pt: its rows of epochs 1, 2 are dropped" in caplog.text
    assert list(__import__("pandas").read_csv(run_dir / "metrics.csv")["epoch"]) == [1, 2]


def test_a_resume_from_elsewhere_reads_an_experiments_relative_data_path_where_the_comparison_started(tmp_path):
    from PIL import Image

    from lossbench.data.classes import CIFAR10_CLASSES

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for split in ("train", "test"):
        for i, name in enumerate(CIFAR10_CLASSES):
            (start / "data" / "cifar10" / split / name).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (32, 32), (i * 25, j * 100, 0)).save(
                    start / "data" / "cifar10" / split / name / f"{j}.png"
                )
    args = [
        "experiment=cifar10_folder",
        *NO_MODEL,
        "model.widths=[4]",
        "train.epochs=1",
        "data.val_size=null",
        "data.train_size=null",
        "data.test_size=null",
        f"data.cache_dir={tmp_path / 'cache'}",
        "losses=[ce,expected_score]",
    ]
    first = lossbench("compare", *args, "--out", "cmp", cwd=start)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(start / "cmp" / "loss=expected_score,seed=0")  # as if it had never started
    resumed = lossbench("resume", str(start / "cmp"), cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    config = OmegaConf.load(start / "cmp" / "loss=expected_score,seed=0" / CONFIG_FILE)
    assert config.data.root == str(start / "data" / "cifar10")


def test_a_run_copied_in_from_another_comparison_is_left_out_and_named(tmp_path):
    from lossbench.rundir import own_runs

    def run_in(comparison: Path, name: str) -> Path:
        claim(comparison, "comparison")
        run_dir = interrupted_run(comparison / name)
        write_status(run_dir, "finished", 2, 2)
        return run_dir

    theirs = run_in(tmp_path / "a", "loss=ce,seed=5")
    mine = run_in(tmp_path / "b", "loss=ce,seed=0")
    shutil.copytree(theirs, tmp_path / "b" / "loss=ce,seed=5")
    runs, notes = own_runs(tmp_path / "b")
    assert runs == [mine]
    assert notes == [
        f"{tmp_path / 'b' / 'loss=ce,seed=5'}: made by another comparison and copied in (its marker says so); left out"
    ]


def test_the_report_says_when_runs_used_different_or_since_changed_data(tmp_path):
    from lossbench.report import build_report
    from lossbench.train import train_run

    data = npz(tmp_path / "x.npz")
    for seed in (0, 1):
        cfg = make_cfg(*ARRAYS, f"data.path={data}", "train.epochs=1", f"seed={seed}")
        assert train_run(cfg, tmp_path / "cmp" / f"seed={seed}") == "finished"
        npz(data, permute=seed == 0)  # replaced between the two runs, and back after the second
    warnings = build_report(tmp_path / "cmp").warnings
    assert any("the runs used 2 different data.path inputs" in w for w in warnings), warnings
    assert any(
        f"{tmp_path / 'cmp' / 'seed=1'}: data.path" in w and "changed since the run started" in w for w in warnings
    ), warnings


def test_a_command_is_the_launcher_of_its_own_jobs_whatever_it_inherited(monkeypatch):
    import socket

    from lossbench import lifeline

    monkeypatch.setenv(lifeline.LAUNCHER_ENV, f"{socket.gethostname()}:1")  # as a process started from a job
    lifeline.mark_launcher()
    assert os.environ[lifeline.LAUNCHER_ENV].endswith(":1")  # a library call keeps the launcher recorded
    lifeline.mark_launcher(command=True)
    assert os.environ[lifeline.LAUNCHER_ENV] == f"{socket.gethostname()}:{os.getpid()}"
