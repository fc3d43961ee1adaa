"""Bad input, interruptions and divergence lose nothing: one-line errors with exit code 2, Ctrl-C and kill -9
followed by `lossbench resume`, diverged runs that do not stop a comparison, atomic report files."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from conftest import HANG_S, TINY, lossbench, make_cfg
from omegaconf import OmegaConf
from PIL import Image

import lossbench.run as run_module
from lossbench import hydra_bridge, launch
from lossbench.atomic import save_atomic, write_atomic
from lossbench.cli import guarded
from lossbench.errors import EnvironmentFailure, LossbenchError
from lossbench.rundir import CHECKPOINT_FILE, LAYOUT_VERSION, append_metrics, read_status, write_status
from lossbench.train import train_run


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, no traceback, and one `error:` line naming the culprit."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def csv_file(tmp_path, text: str):
    path = tmp_path / "s.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("1,2\n3\n", "row 2 has 1 values"),
        ("1,x\n0,1\n", "'x' is not a number"),
        ("1,nan\n0,1\n", "nan is not finite"),
        (",a,a\na,1,0\nb,0,1\n", "duplicate column name 'a'"),
        (",a,b,c\na,1,0,0\nb,0,1,0\n", "not square"),
        (",cat,dog\ncat,1,0\ndog,0,1\n", "no scores for dataset class(es) ['airplane'"),
        ("1,0\n0,1\n", "2x2 matrix but the dataset has 10 classes"),
    ],
)
def test_bad_score_file(tmp_path, text, fragment):
    path = csv_file(tmp_path, text)
    result = lossbench("run", *TINY, "scores=file", f"scores.path={path}", cwd=tmp_path)
    assert_clean_error(result, str(path), fragment)
    assert not (tmp_path / "outputs").exists()  # rejected before any run directory was made


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["scores=file", "scores.path=/nope/s.csv"], ["/nope/s.csv: not found"]),
        (["scores=file"], ["scores.path"]),
        (["loss=nope"], ["unknown loss 'nope'; known: ce, ce_expected_score"]),
        (["data.classes=[cat,unicorn]"], ["data.classes", "unicorn"]),
        (["data=imagefolder", "data.root=/nope/images"], ["/nope/images: directory not found"]),
        (["data=imagefolder"], ["data=imagefolder needs data.root="]),
        (["experiment=cifar10", "data.root=.", "data.download=false"], ["cifar10 not found", "data.download=true"]),
        (["train.epochs=0"], ["train.epochs must be > 0"]),
        (["train.batch_size=0"], ["train.batch_size must be > 0"]),
        (["optim.lr=-1"], ["optim.lr must be > 0"]),
        (["loss=soft_label_ce", "loss.tau=0"], ["tau must be > 0"]),
        (["loss=power_expected_score", "loss.alpha=2"], ["alpha must be in (0, 1]"]),
        (["nonsense=1"], ["Could not override 'nonsense'"]),
    ],
)
def test_bad_config_or_path(tmp_path, args, fragments):
    assert_clean_error(lossbench("run", *TINY, *args, cwd=tmp_path), *fragments)


def test_unknown_loss_in_compare_lists_the_known_ones(tmp_path):
    result = lossbench("compare", *TINY, "losses=[ce,nope]", cwd=tmp_path)
    assert_clean_error(result, "unknown loss(es) ['nope']; known: ce, ce_expected_score")


def image_folder(root, corrupt=False, empty_class=False, test_classes=("cat", "dog")):
    for split, classes in (("train", ("cat", "dog")), ("test", test_classes)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            if empty_class and split == "train" and name == "dog":
                continue
            for j in range(4):
                Image.new("RGB", (32, 32), (j * 50, 0, 0)).save(root / split / name / f"{j}.png")
    if corrupt:
        (root / "test" / "dog" / "2.png").write_bytes(b"\x89PNG broken")
    return root


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ({"corrupt": True}, "test/dog/2.png: cannot read image"),
        ({"empty_class": True}, "train/dog: no image files"),
        ({"test_classes": ("cat", "fox")}, "train and test have different classes"),
    ],
)
def test_bad_image_folder(tmp_path, kind, fragment):
    root = image_folder(tmp_path / "images", **kind)
    args = [
        "data=imagefolder",
        f"data.root={root}",
        f"data.cache_dir={tmp_path}",
        "scores=identity",
        "data.train_size=null",
        "data.test_size=null",
    ]
    assert_clean_error(lossbench("compare", *TINY, *args, cwd=tmp_path), fragment)


def test_debug_env_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lossbench.cli", "run", "train.epochs=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "LOSSBENCH_DEBUG": "1"},
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_existing_comparison_is_never_overwritten(tmp_path):
    first = lossbench("compare", *TINY, "train.epochs=1", "losses=[ce]", "--out", "cmp", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "cmp" / "loss=ce,seed=0" / "metrics.csv").read_text()
    again = lossbench("compare", *TINY, "train.epochs=1", "losses=[ce]", "--out", "cmp", cwd=tmp_path)
    assert_clean_error(again, "already has runs", "lossbench resume")
    assert (tmp_path / "cmp" / "loss=ce,seed=0" / "metrics.csv").read_text() == before


def huge_scores(tmp_path):
    """Huge scores: the linear loss's gradient overflows, CE (which ignores S) trains, and the test metrics (sums
    over 128 examples of S) stay finite in float32."""
    return csv_file(tmp_path, "1e30,-1e30\n-1e30,1e30\n")


def two_class_args(tmp_path):
    return [
        "data.names=generic",
        "data.num_classes=2",
        "scores=file",
        f"scores.path={huge_scores(tmp_path)}",
        "schedule.warmup_epochs=0",
    ]


def test_diverged_run_does_not_stop_the_comparison(tmp_path):
    result = lossbench(
        "compare", *TINY, *two_class_args(tmp_path), "losses=[expected_score,ce]", "--out", "cmp", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert read_status(tmp_path / "cmp" / "loss=expected_score,seed=0")["status"] == "diverged"
    assert read_status(tmp_path / "cmp" / "loss=ce,seed=0")["status"] == "finished"
    assert "loss=expected_score,seed=0: diverged" in result.stderr
    summary = pd.read_csv(tmp_path / "cmp" / "summary.csv").set_index("loss")
    assert summary.loc["expected_score", "status"] == "1 diverged"


def test_comparison_with_no_finished_run_exits_non_zero(tmp_path):
    result = lossbench(
        "compare", *TINY, *two_class_args(tmp_path), "losses=[expected_score]", "--out", "cmp", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "no run of cmp finished" in result.stderr and "Traceback" not in result.stderr


def wait_for(path, process, timeout=HANG_S) -> None:
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the process never got there"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_cleanly_and_say_how_to_resume(tmp_path, signum, code):
    run_dir = tmp_path / "run"
    # As a terminal starts it. A suite started in the background by a non-interactive shell (`pytest &`) ignores
    # SIGINT, its children inherit that, and Python then leaves SIGINT ignored: the run would rightly train on.
    process = subprocess.Popen(
        [sys.executable, "-m", "lossbench.cli", "run", *TINY, "train.epochs=100000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(run_dir / CHECKPOINT_FILE, process)
    process.send_signal(signum)
    try:
        out, err = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:  # say where it was: still training, or stuck on the way out
        process.kill()
        out, err = process.communicate()
        pytest.fail(
            f"no exit 60 s after the signal; status {read_status(run_dir)}; stdout ends {out[-1500:]!r}; "
            f"stderr ends {err[-1500:]!r}"
        )
    assert process.returncode == code
    assert "Traceback" not in err and f"lossbench resume {run_dir}" in out + err
    assert read_status(run_dir)["status"] == "interrupted"
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert rows["epoch"].tolist() == list(range(1, len(rows) + 1))


@pytest.mark.slow
def test_killed_comparison_resumes_only_unfinished_runs(tmp_path):
    """kill -9 `compare` once its first run has finished; `resume` skips that run, completes the rest, and the
    result matches a comparison that was never interrupted."""
    args = [*TINY, "train.epochs=3", "data.train_size=512", "losses=[ce,expected_score]"]
    straight = lossbench("compare", *args, "--out", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "lossbench.cli", "compare", *args, "--out", "cmp"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = tmp_path / "cmp" / "loss=expected_score,seed=0"
    wait_for(second / "metrics.csv", process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first = tmp_path / "cmp" / "loss=ce,seed=0"
    finished_metrics = (first / "metrics.csv").read_text()

    resumed = lossbench("resume", str(tmp_path / "cmp"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (first / "metrics.csv").read_text() == finished_metrics  # the finished run was left alone
    for name in ("ce", "expected_score"):
        got = pd.read_csv(tmp_path / "cmp" / f"loss={name},seed=0" / "metrics.csv").drop(columns="elapsed_s")
        want = pd.read_csv(tmp_path / "straight" / f"loss={name},seed=0" / "metrics.csv").drop(columns="elapsed_s")
        pd.testing.assert_frame_equal(got, want)
    assert (tmp_path / "cmp" / "summary.md").exists()


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    path.write_text("old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert path.read_text() == "old"


# ---------------------------------------------------------------- reliability v2


@pytest.mark.slow
def test_a_second_writer_is_refused_while_a_comparison_runs_and_kill_9_frees_it(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "lossbench.cli", "compare", *TINY, "train.epochs=100000", "losses=[ce]", "--out", "cmp"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(tmp_path / "cmp" / "loss=ce,seed=0" / "metrics.csv", process)
        for command in (["resume", "cmp"], ["report", "cmp"], ["resume", "cmp/loss=ce,seed=0"]):
            refused = lossbench(*command, cwd=tmp_path)
            assert refused.returncode == 1, refused.stderr
            assert f"is in use by another lossbench process (pid {process.pid})" in refused.stderr
            assert "Traceback" not in refused.stderr
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    report = lossbench("report", "cmp", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "cmp" / "summary.md").exists()


@pytest.mark.slow
def test_resume_from_another_directory_reads_the_files_the_comparison_started_with(tmp_path):
    """compare.json records the overrides resolved against the directory compare ran in: a resume from
    elsewhere, where a file of the same relative name holds other scores, still uses the original one."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    (start / "s.csv").write_text("2,0\n0,2\n")
    (elsewhere / "s.csv").write_text("5,0\n0,5\n")
    args = [
        *TINY,
        "train.epochs=1",
        "data.names=generic",
        "data.num_classes=2",
        "scores=file",
        "scores.path=s.csv",
        "losses=[ce,expected_score]",
    ]
    first = lossbench("compare", *args, "--out", "café, it's", cwd=start)
    assert first.returncode == 0, first.stderr
    comparison = start / "café, it's"
    record = json.loads((comparison / "compare.json").read_text())
    # The table is pinned: copied into the comparison (named by its content) and recorded by its copy.
    copy = next((comparison / "inputs").glob("scores-*.csv"))
    assert f"scores.path={launch.hydra_quote(str(copy.resolve()))}" in record["args"] and record["cwd"] == str(start)
    assert copy.read_text() == (start / "s.csv").read_text()
    shutil.rmtree(comparison / "loss=expected_score,seed=0")  # as if it had never started

    resumed = lossbench("resume", str(comparison), cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    config = OmegaConf.load(comparison / "loss=expected_score,seed=0" / "config.yaml")
    assert config.scores.path == str(copy.resolve())
    assert read_status(comparison / "loss=expected_score,seed=0")["status"] == "finished"


def compare_in(tmp_path, monkeypatch, *args: str, out: str = "cmp") -> int:
    monkeypatch.chdir(tmp_path)
    return launch.compare([*TINY, "train.epochs=1", *args], out)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["seeds=[0.7]"], "seeds: each seed must be an integer, not 0.7"),
        (["seeds=[a]"], "seeds: each seed must be an integer, not 'a'"),
        (["seeds=[1,1]"], "seeds: [1] listed more than once"),
        (["losses=[ce,expected_score,ce]"], "losses: ['ce'] listed more than once"),
        (["losses=ce"], "losses must be a list"),
        (["train.epochs=2.7"], "train.epochs must be an integer, not 2.7"),
        (["seed=0.5"], "seed must be an integer, not 0.5"),
        (["data.classes=[]"], "data.classes is empty"),
        (["scores.exact=nan"], "scores.exact: nan is not finite"),
        (["scores.far=-1e39"], "scores.far: -1e+39 does not fit float32"),
    ],
)
def test_silent_reinterpretations_are_errors(tmp_path, monkeypatch, args, fragment):
    with pytest.raises(LossbenchError) as caught:
        compare_in(tmp_path, monkeypatch, *args)
    assert fragment in str(caught.value)
    assert not (tmp_path / "cmp").exists()


def test_only_its_own_directories(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")
    with pytest.raises(LossbenchError, match="mine: not empty and not made by lossbench"):
        compare_in(tmp_path, monkeypatch, out="mine")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LossbenchError, match="file: exists and is not a directory"):
        compare_in(tmp_path, monkeypatch, out="file")
    with pytest.raises(LossbenchError, match="a directory name with '\\$\\{' cannot pass through Hydra"):
        compare_in(tmp_path, monkeypatch, out="a${x}")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("mine: true\n")
    with pytest.raises(LossbenchError, match="foreign: not empty and not made by lossbench"):
        launch.run([*TINY, f"hydra.run.dir={foreign}"])
    assert (mine / "summary.md").read_text() == "my notes" and (foreign / "config.yaml").read_text() == "mine: true\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["config.yaml"]  # not even Hydra's files


def test_failure_inside_a_job_marks_the_run_failed(tmp_path):
    cfg = make_cfg(*TINY, "optim.momentum=0")  # torch: Nesterov momentum requires a momentum
    with pytest.raises(LossbenchError, match="Nesterov"):
        train_run(cfg, tmp_path / "run")
    status = read_status(tmp_path / "run")
    assert status["status"] == "failed" and "Nesterov" in status["message"]


def test_a_full_disk_is_an_environment_failure_and_marks_the_run_failed(tmp_path, monkeypatch):
    def full(run_dir, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.csv"))

    monkeypatch.setattr(run_module, "append_metrics", full)
    with pytest.raises(EnvironmentFailure, match="metrics.csv: No space left on device") as caught:
        train_run(make_cfg(*TINY), tmp_path / "run")
    assert caught.value.exit_code == 1
    assert read_status(tmp_path / "run")["status"] == "failed"


FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")


class Filling(io.RawIOBase):
    """A file on a disk that fills up: it takes `room` bytes, then every write fails with ENOSPC."""

    def __init__(self, room: int):
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = min(len(data), self.room)
        self.room -= taken
        return taken


@pytest.fixture
def full_disk_for_new_files(monkeypatch):
    """New files (atomic writes' temporary files) fill the disk: text files at once (/dev/full), binary files
    after 4 kB, which torch.save then reports as 'RuntimeError: [enforce fail at inline_container.cc]'."""
    real_open = Path.open

    def redirected(self, mode="r", *args, **kwargs):
        if mode == "wb":
            return io.BufferedWriter(Filling(4096))
        return real_open(FULL if mode == "w" else self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", redirected)


@needs_dev_full
def test_a_full_disk_names_the_file_each_write_was_writing(tmp_path, full_disk_for_new_files):
    """A failed write() carries no file name; each of lossbench's writes adds it, and leaves no temporary file."""
    writes = {
        "checkpoint.pt": lambda path: save_atomic({"w": torch.zeros(100_000)}, path),
        "status.json": lambda path: write_status(path.parent, "running", 1, 2),
        "metrics.csv": lambda path: append_metrics(path.parent, {"epoch": 1}),
    }
    for name, write in writes.items():
        with pytest.raises(OSError) as caught:
            write(tmp_path / name)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / name), name
        assert list(tmp_path.iterdir()) == [], name


@needs_dev_full
def test_appending_to_metrics_on_a_full_disk_names_the_file(tmp_path):
    (tmp_path / "metrics.csv").symlink_to(FULL)
    with pytest.raises(OSError) as caught:
        append_metrics(tmp_path, {"epoch": 2})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "metrics.csv")


@needs_dev_full
def test_hydras_own_files_and_log_on_a_full_disk_are_one_line_without_tracebacks(tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".lossbench").write_text(f'{{"kind": "run", "version": {LAYOUT_VERSION}}}\n')
    (run_dir / ".hydra" / "config.yaml").symlink_to(FULL)
    result = lossbench("run", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Hydra's files in the run directory (.hydra/, the job log): No space left on device"
    )
    # The job log on a full disk: its lines are dropped (the console has them), not a traceback for each.
    (run_dir / ".hydra" / "config.yaml").unlink()
    (run_dir / "lossbench.log").unlink(missing_ok=True)
    (run_dir / "lossbench.log").symlink_to(FULL)
    result = lossbench("run", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0 and "Logging error" not in result.stderr, result.stderr
    assert read_status(run_dir)["status"] == "finished"


def test_a_comparison_whose_runs_all_fail_on_a_full_disk_exits_1_not_2(tmp_path, monkeypatch):
    def full(run_dir, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.csv"))

    monkeypatch.setattr(run_module, "append_metrics", full)
    monkeypatch.chdir(tmp_path)
    assert launch.compare([*TINY, "losses=[ce,expected_score]"], out="cmp") == 1  # retry once there is space
    for name in ("ce", "expected_score"):
        status = read_status(tmp_path / "cmp" / f"loss={name},seed=0")
        assert status["status"] == "failed" and status["environment"] is True


def test_a_bad_value_in_a_users_sweep_is_one_line_exit_2(tmp_path):
    """Hydra checks a sweep's jobs itself (lossbench's preflight composes the plain overrides only)."""
    result = lossbench("run", "-m", *TINY, "loss=ce,nope", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert_clean_error(result, "unknown loss 'nope'; known: ce, ")
    result = lossbench("compare", *TINY, "losses=[ce]", "optim.lrr=0.1,0.2", "--out", "cmp", cwd=tmp_path)
    assert_clean_error(result, "Could not override 'optim.lrr'")


def test_a_comparison_whose_runs_cannot_record_their_start_is_an_environment_failure(tmp_path, monkeypatch):
    """No status.json anywhere after the jobs ran (the disk filled before any could write one) is the machine's
    failure, exit 1, not 'no run directories found' (exit 2, as if the user had named the wrong folder)."""

    def full(run_dir, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "status.json"))

    monkeypatch.setattr(run_module, "write_status", full)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EnvironmentFailure, match=r"cmp: no run could record its start \(status.json\)"):
        launch.compare([*TINY, "losses=[ce]"], out="cmp")


def test_hydra_errors_escaping_a_job_are_raised_not_printed_by_hydra(monkeypatch, capsys):
    """launch_hydra makes Hydra raise (HYDRA_FULL_ERROR=1, restored after): a config error is the user's (one
    line, exit 2), anything else is printed with its traceback and exits 1, as Hydra did."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    def failing(err: Exception):
        def job() -> None:
            assert os.environ["HYDRA_FULL_ERROR"] == "1"
            raise err

        return job

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(LossbenchError, match="^Could not override 'x'. No match in config.$"):
        hydra_bridge.launch_hydra(
            [], failing(ConfigCompositionException("Could not override 'x'.\nNo match in config."))
        )
    missing = MissingConfigException("Could not find 'loss/nope'", "loss/nope", options=["ce", "expected_score"])
    with pytest.raises(LossbenchError, match="^unknown loss 'nope'; known: ce, expected_score$"):
        hydra_bridge.launch_hydra([], failing(missing))  # an OSError too, but not the disk's
    with pytest.raises(SystemExit) as caught:
        hydra_bridge.launch_hydra([], failing(RuntimeError("a launcher failed")))
    assert caught.value.code == 1 and "RuntimeError: a launcher failed" in capsys.readouterr().err
    assert "HYDRA_FULL_ERROR" not in os.environ
    monkeypatch.setenv("LOSSBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError):
        hydra_bridge.launch_hydra([], failing(RuntimeError("a launcher failed")))


def test_os_errors_exit_1_with_one_line(capsys):
    def full() -> int:
        raise OSError(errno.EROFS, "Read-only file system", "/ro/cmp")

    with pytest.raises(typer.Exit) as caught:
        guarded(full)
    assert caught.value.exit_code == 1
    assert capsys.readouterr().err.strip() == "error: /ro/cmp: Read-only file system"


def test_huge_learning_rate_diverges(tmp_path):
    cfg = make_cfg(*TINY, "optim.lr=1e9", "schedule.warmup_epochs=0")
    assert train_run(cfg, tmp_path / "run") == "diverged"


def test_non_finite_test_metric_means_diverged(tmp_path, monkeypatch):
    real = run_module.evaluate

    def with_nan(*args):
        row, confusion = real(*args)
        return {**row, "test_acc": math.nan}, confusion

    monkeypatch.setattr(run_module, "evaluate", with_nan)
    assert train_run(make_cfg(*TINY), tmp_path / "run") == "diverged"
    status = read_status(tmp_path / "run")
    assert status["status"] == "diverged" and "test_acc=nan" in status["message"]


def test_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path):
    cfg = make_cfg(*TINY)
    train_run(cfg, tmp_path / "run")
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(b"garbage")
    write_status(tmp_path / "run", "interrupted", 1, 2)
    with pytest.raises(LossbenchError, match=rf"{CHECKPOINT_FILE}: damaged .*remove it to restart this run"):
        train_run(cfg, tmp_path / "run", resume=True)
    assert read_status(tmp_path / "run")["status"] == "failed"
