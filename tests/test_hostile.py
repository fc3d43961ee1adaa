"""Reliability v3 (issue 26): results folders that were shared, copied or edited, inputs that changed under a run,
folders that are not lossbench's, and numbers at the edges. Each test names the kind of hostile case it covers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, lossbench, make_cfg
from lossbench import launch, trust
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


@pytest.mark.parametrize("key, value", [
    ("data", COPY),  # the case
    ("model", {**COPY}),
    ("loss.reduction", COPY),  # nested: Hydra instantiates it recursively
    ("optim.extra", [1, COPY]),  # inside a list
    ("scores", {"_target_": "lossbench.atomic.write_atomic", "path": "victim.txt", "text": "x"}),  # lossbench's,
    # but not a component
    ("model", {"_target_": "${oc.env:EVIL}", "num_classes": 2}),  # an interpolated target
])  # fmt: skip
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
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))\n")
    run_dir = interrupted_run(tmp_path / "run", **{"model": {"_target_": "mynets.Net"}, "train.epochs": 1})
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    refused = lossbench("resume", str(run_dir), cwd=tmp_path, env=env)
    assert "model._target_=mynets.Net" in one_error(refused)
    trusted = lossbench("resume", str(run_dir), "--trust", "mynets.Net", cwd=tmp_path, env=env)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def comparison_record(path: Path, *args: str) -> Path:
    claim(path, "comparison")
    write_record(path, {"version": LAYOUT_VERSION, "args": [*TINY, "losses=[ce]", *args], "cwd": str(path),
                        "created": "2026-01-01_00-00-00"})  # fmt: skip
    return path


@pytest.mark.parametrize("args, named", [
    (["model=custom", "model._target_=shutil.copyfile"], "model._target_=shutil.copyfile"),
    (["model=custom", "model._target_=lossbench.models.SmallCNN,shutil.copyfile"], "shutil.copyfile"),  # a sweep
    (["+data.extra={_target_:shutil.copyfile,src:a,dst:b}"], "shutil.copyfile"),
    (["hydra.launcher._target_=shutil.copyfile"], "hydra.launcher._target_=shutil.copyfile"),
    (["hydra/launcher=submitit_local", "+hydra.launcher.setup=[touch victim]"], "hydra.launcher.setup"),
    (["+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so"], "hydra.job.env_set"),
    (["hydra.searchpath=[file:///tmp/evil]"], "hydra.searchpath"),
    (["hydra.job_logging.handlers.console.class=shutil.rmtree"], "hydra.job_logging"),
])  # fmt: skip
def test_resume_of_a_comparison_never_calls_what_its_record_names(tmp_path, args, named):
    cmp = comparison_record(tmp_path / "cmp", *args)
    with pytest.raises(LossbenchError, match="--trust") as err:
        launch.resume(str(cmp))
    assert named in str(err.value)
    assert not (cmp / "loss=ce,seed=0").exists()


def test_resume_of_a_comparison_refuses_a_run_whose_config_was_edited(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmp = comparison_record(tmp_path / "cmp", "train.epochs=1")
    interrupted_run(cmp / "loss=ce,seed=0", data=COPY)
    (tmp_path / "victim.txt").write_text("mine")
    assert launch.resume(str(cmp)) != 0
    assert (tmp_path / "victim.txt").read_text() == "mine"
    status = json.loads((cmp / "loss=ce,seed=0" / "status.json").read_text())
    assert status["status"] == "failed" and "data._target_=shutil.copyfile" in status["message"]


def test_lossbench_components_and_installed_launchers_pass(tmp_path):
    assert {"lossbench.models.SmallCNN", "torch.optim.SGD", "lossbench.scores.load_scores"} <= trust.own_targets()
    cmp = comparison_record(tmp_path / "cmp", "hydra/launcher=joblib", "model=resnet18", "optim=adamw")
    launch.check_recorded_overrides(launch.parse_overrides([*TINY, "hydra/launcher=joblib", "optim=adamw"]),
                                    str(cmp), (), "lossbench resume cmp")  # fmt: skip
