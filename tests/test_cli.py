"""End-to-end: the real CLI in a temp directory on tiny synthetic data, and its error handling."""

from __future__ import annotations

import json
import os
import re

import pandas as pd
import pytest
import typer
from conftest import TINY, lossbench

from lossbench.cli import app
from lossbench.losses import LOSSES, candidate_losses
from lossbench.multirun import unsuccessful_runs

PNGS = ["test_acc.png", "test_score.png", "grad_norm.png", "epochs_to_target.png"]


CANDIDATES = candidate_losses()


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """One tiny `lossbench compare` over the default losses (every loss but the diagnostic ones) and two seeds,
    shared by the tests below."""
    cwd = tmp_path_factory.mktemp("compare")
    result = lossbench("compare", *TINY, "seeds=[0,1]", "--out", "cmp", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "cmp", result


def test_compare_writes_curves_summary_and_pngs(comparison):
    directory, result = comparison
    curves = pd.read_csv(directory / "curves.csv")
    assert set(curves["loss"]) == set(CANDIDATES) and set(curves["seed"]) == {0, 1}
    assert len(curves) == len(CANDIDATES) * 2 * 2  # losses x seeds x epochs
    summary = pd.read_csv(directory / "summary.csv")
    assert list(summary["loss"]) == CANDIDATES
    assert (summary["runs"] == 2).all()
    markdown = (directory / "summary.md").read_text()
    assert "| expected_score |" in markdown and "±" in markdown
    # the console: the verdict first, then the compact table (the whole report is in summary.md, report.html)
    console = result.stdout.splitlines()
    assert "Verdict" in console and any(line.startswith("ce ") for line in console)
    assert console.index("Verdict") < next(i for i, line in enumerate(console) if line.startswith("ce "))
    assert (directory / "report.html").exists()
    for png in PNGS:
        assert (directory / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(directory.glob("loss=*,seed=*"))) == len(CANDIDATES) * 2


def test_report_rebuilds_the_same_tables(comparison, tmp_path):
    directory, _ = comparison
    before = pd.read_csv(directory / "summary.csv")
    for name in ["summary.csv", "summary.md", "curves.csv", *PNGS]:
        (directory / name).unlink()
    result = lossbench("report", str(directory), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pd.testing.assert_frame_equal(pd.read_csv(directory / "summary.csv"), before)
    assert all((directory / png).exists() for png in PNGS)


@pytest.mark.slow
def test_sweeps_become_report_columns(tmp_path):
    result = lossbench(
        "compare",
        *TINY,
        "train.epochs=1",
        "losses=[ce,expected_score]",
        "optim.lr=0.01,0.1",
        "--out",
        "sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    curves = pd.read_csv(tmp_path / "sweep" / "curves.csv")
    assert sorted(set(curves["optim.lr"])) == [0.01, 0.1]
    assert "at its best optim.lr" in (tmp_path / "sweep" / "summary.md").read_text()
    assert (tmp_path / "sweep" / "sweep_optim.lr.png").exists()


def test_run_writes_under_the_working_directory(tmp_path):
    result = lossbench("run", *TINY, "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("outputs/*/*/metrics.csv"))) == 1


def test_losses_lists_every_loss_with_parameters(tmp_path):
    result = lossbench("losses", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(LOSSES)
    assert "tau=0.1" in result.stdout


@pytest.mark.parametrize("command", ["run", "compare", "report", "resume", "export", "losses"])
def test_help_on_every_command(tmp_path, command):
    result = lossbench(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Usage" in result.stdout


def test_hydra_flags_pass_through_run(tmp_path):
    result = lossbench("run", "--cfg", "job", "loss=soft_label_ce", "loss.tau=0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: soft_label_ce" in result.stdout and "tau: 0.25" in result.stdout


def bracketed(text: str) -> list[str]:
    """The `key=[...]` examples in a help text, e.g. seeds=[0,1,2]."""
    return re.findall(r"[\w./]+=\[[^\]]*\]", text)


def help_examples(command: str) -> list[str]:
    """The bracketed examples of one command's help texts: its docstring and its parameters' help."""
    cmd = typer.main.get_command(app).commands[command]
    return [b for text in [cmd.help, *(getattr(p, "help", None) for p in cmd.params)] for b in bracketed(text or "")]


def test_help_examples_are_found():
    """The test below is not vacuous: the examples it looks for exist."""
    assert "losses=[ce,expected_score]" in help_examples("compare")
    assert "model.widths=[16,32,64]" in help_examples("run")


@pytest.mark.parametrize("command", [None, "run", "compare", "report", "resume", "export", "losses", "explain"])
def test_help_shows_bracketed_examples(tmp_path, command):
    """Rich markup swallowed `[...]`: `losses=[ce,expected_score]` showed as `losses=`."""
    result = lossbench(*([command] if command else []), "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    # `lossbench --help` lists each command with its help: compare's carries the example.
    for example in help_examples(command or "compare"):
        assert example in shown, example


def test_run_multirun_on_joblib_fails_when_any_job_failed(tmp_path):
    """Jobs in other processes report nothing back: their statuses are read from the sweep's run directories.
    optim.lr=-1 passes the preflight (sweep values are only seen by their job) and fails inside its job."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = lossbench(
        "run",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optim.lr=0.05,-1",
        *TINY,
        "train.epochs=1",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    named = [line for line in result.stderr.splitlines() if line.startswith(str(tmp_path))]
    assert len(named) == 1 and "optim.lr=-1," in named[0] and ": failed optim.lr must be > 0" in named[0]
    assert len(list(tmp_path.glob("multirun/*/*/*/status.json"))) == 2  # the pinned ${now:...} sweep directory


def test_unsuccessful_runs_skips_runs_of_earlier_sweeps(tmp_path):
    for name, status in [("old", "failed"), ("ok", "finished"), ("bad", "diverged")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("seed: 0\n")
        (tmp_path / name / "status.json").write_text(json.dumps({"status": status, "epoch": 1, "message": "m"}))
    os.utime(tmp_path / "old" / "status.json", (1.0, 1.0))
    assert unsuccessful_runs(tmp_path, since=2.0) == {(tmp_path / "bad").resolve(): "diverged m"}
