"""The run-directory layout: ownership markers, the OS lock (raced by real processes), statuses and files that
are damaged, and atomic writes with unique temporary names."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import HANG_S, NPZ_DAMAGES

from lossbench.atomic import NPZ_READ_ERRORS, atomic_path, savez_atomic, write_atomic
from lossbench.errors import EnvironmentFailure, LossbenchError
from lossbench.rundir import (
    COMPARE_FILE,
    LOCK_FILE,
    MARKER_FILE,
    METRICS_FILE,
    adopt_for_report,
    append_metrics,
    claim,
    find_runs,
    locked,
    read_config,
    read_record,
    read_status,
    truncate_metrics,
    write_status,
)

HOLDER = textwrap.dedent(
    """
    import sys
    from lossbench.rundir import locked
    with locked(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def hold_lock(directory) -> subprocess.Popen:
    """A second, real process that takes the lock on `directory` and holds it until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_is_refused_naming_the_holder_and_may_go_on_once_it_exits(tmp_path):
    holder = hold_lock(tmp_path)
    with pytest.raises(
        EnvironmentFailure, match=rf"{tmp_path} is in use by another lossbench process \(pid {holder.pid}\)"
    ):
        with locked(tmp_path):
            pass
    holder.communicate("\n")
    with locked(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_kill_9_releases_the_lock(tmp_path):
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with locked(tmp_path):
        pass


def test_racing_processes_one_wins(tmp_path):
    """Several processes started at once: exactly one gets the lock while the others are refused. The winner holds
    it until both others have answered, whenever a loaded machine lets them start."""
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from lossbench.errors import EnvironmentFailure
        from lossbench.rundir import locked
        try:
            with locked(sys.argv[1]):
                print("won", flush=True)
                while not Path(sys.argv[2]).exists():
                    time.sleep(0.05)
        except EnvironmentFailure as err:
            print("refused", err, flush=True)
        """
    )
    release = tmp_path / "release"
    (tmp_path / "run").mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "run"), str(release)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    deadline = time.monotonic() + HANG_S
    while sum(p.poll() is not None for p in racers) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    release.touch()
    outputs = [p.communicate(timeout=HANG_S)[0].strip() for p in racers]
    assert sorted(o.split()[0] for o in outputs) == ["refused", "refused", "won"], outputs
    assert all("is in use by another lossbench process (pid " in o for o in outputs if o.startswith("refused"))


@pytest.mark.parametrize("kind", ["run", "comparison"])
def test_claim_new_or_empty_directory_writes_the_marker(tmp_path, kind):
    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "new" / "deep", tmp_path / "empty"):
        claim(directory, kind)
        assert json.loads((directory / MARKER_FILE).read_text())["kind"] == kind
        claim(directory, kind)  # its own: accepted again


def test_claim_refuses_what_is_not_lossbench(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "summary.md").write_text("mine")
    with pytest.raises(LossbenchError, match="notes: not empty and not made by lossbench .*summary.md"):
        claim(tmp_path / "notes", "comparison")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.yaml").write_text("a: 1\n")
    with pytest.raises(LossbenchError, match="not made by lossbench"):
        claim(tmp_path / "foreign", "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LossbenchError, match="file: exists and is not a directory"):
        claim(tmp_path / "file", "comparison")
    claim(tmp_path / "cmp", "comparison")
    with pytest.raises(LossbenchError, match="is a lossbench comparison directory, not a run directory"):
        claim(tmp_path / "cmp", "run")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MARKER_FILE).write_text("{")
    with pytest.raises(LossbenchError, match=r"\.lossbench: damaged lossbench marker"):
        claim(tmp_path / "bad", "run")
    assert (tmp_path / "notes" / "summary.md").read_text() == "mine"


def test_version_1_directories_stay_lossbench_s(tmp_path):
    run = tmp_path / "cmp" / "loss=ce,seed=0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\nloss:\n  name: ce\n")  # a run's config names its loss
    write_status(run, "interrupted", 1, 2)
    (tmp_path / "cmp" / COMPARE_FILE).write_text('{"args": []}')
    claim(run, "run")
    claim(tmp_path / "cmp", "comparison")
    assert find_runs(tmp_path / "cmp") == [run]


def test_report_adopts_only_directories_of_runs(tmp_path):
    run = tmp_path / "outputs" / "a"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    write_status(run, "finished", 1, 1)
    adopt_for_report(tmp_path / "outputs")
    assert (tmp_path / "outputs" / MARKER_FILE).exists()
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    (tmp_path / "mixed" / "a" / "config.yaml").write_text("seed: 0\n")
    write_status(tmp_path / "mixed" / "a", "finished", 1, 1)
    (tmp_path / "mixed" / "summary.md").write_text("mine")
    with pytest.raises(LossbenchError, match="holds files lossbench did not make \\(summary.md\\)"):
        adopt_for_report(tmp_path / "mixed")


def test_damaged_status_is_unknown_with_a_way_out(tmp_path):
    (tmp_path / "status.json").write_text('{"status": "runn')
    status = read_status(tmp_path)
    assert status["status"] == "unknown" and "status.json is damaged" in status["message"]
    assert f"lossbench resume {tmp_path}" in status["message"]
    (tmp_path / "status.json").write_text("[1, 2]")
    assert read_status(tmp_path)["status"] == "unknown"


@pytest.mark.parametrize("text", ["seed: [0\n", "- just\n- a list\n", b"\xff\xfe: 1\n"])
def test_damaged_config_names_the_file_and_the_way_out(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(LossbenchError, match=rf"{path}: damaged .*remove the run directory {tmp_path}"):
        read_config(tmp_path)


@pytest.mark.parametrize("text", ["epoch,step\n1,2\n", "{header}\n1,4,0.1\n", "{header}\nx{row}\n", ""])
def test_damaged_metrics_name_the_file_and_the_way_out(tmp_path, text):
    from lossbench.rundir import METRIC_COLUMNS

    header = ",".join(METRIC_COLUMNS)
    row = ",".join("1" for _ in METRIC_COLUMNS)
    (tmp_path / METRICS_FILE).write_text(text.format(header=header, row=row))
    with pytest.raises(LossbenchError, match=r"metrics.csv: damaged .*remove it and checkpoint.pt to restart"):
        truncate_metrics(tmp_path, 1)


def metric_row(epoch: int) -> dict[str, float]:
    from lossbench.rundir import METRIC_COLUMNS

    return {column: epoch if column in ("epoch", "step") else 0.5 for column in METRIC_COLUMNS}


def test_a_new_metrics_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A process that dies while making metrics.csv leaves nothing (resume would call an empty or header-only file
    damaged); one that dies while adding a row leaves the rows before it."""

    def killed(fd: int) -> None:
        raise KeyboardInterrupt  # the process stops before its row is on disk

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        append_metrics(tmp_path, metric_row(1))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    append_metrics(tmp_path, metric_row(1))
    append_metrics(tmp_path, metric_row(2))
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("1,1,") and lines[2].startswith("2,2,")


@pytest.mark.parametrize("cut", [0, 5, "header"])
def test_resume_before_the_first_row_survives_a_file_cut_by_a_kill(tmp_path, cut):
    """What a kill left of the first row (nothing, part of the header, the header alone), with no checkpoint:
    nothing trained is lost, so resume goes on and the next row makes a whole file."""
    from lossbench.rundir import METRIC_COLUMNS

    header = ",".join(METRIC_COLUMNS) + "\n"
    (tmp_path / METRICS_FILE).write_text(header if cut == "header" else header[:cut])
    truncate_metrics(tmp_path, 0)
    append_metrics(tmp_path, metric_row(1))
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert lines[0] == header.strip() and len(lines) == 2


def test_resume_drops_a_row_cut_by_a_kill_and_keeps_the_checkpointed_ones(tmp_path):
    append_metrics(tmp_path, metric_row(1))
    append_metrics(tmp_path, metric_row(2))
    path = tmp_path / METRICS_FILE
    whole = path.read_text()
    path.write_text(whole + "3,3,0.")  # epoch 3's row, cut: its checkpoint was never written
    truncate_metrics(tmp_path, 2)
    assert path.read_text() == whole
    truncate_metrics(tmp_path, 1)
    assert path.read_text().splitlines() == whole.splitlines()[:2]


def test_damaged_comparison_record(tmp_path):
    (tmp_path / COMPARE_FILE).write_text('{"args": "not a list"}')
    with pytest.raises(LossbenchError, match=r"compare.json: damaged .*lossbench report"):
        read_record(tmp_path)


def test_atomic_writes_use_unique_names_and_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "summary.md"
    names = []
    with atomic_path(target) as a, atomic_path(target) as b:
        names += [a.name, b.name]
        a.write_text("a")
        b.write_text("b")
    assert names[0] != names[1] and target.read_text() == "a"  # the outer block finished last
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"] and target.read_text() == "a"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # a result file, not mkstemp's private mode


def test_an_atomic_write_that_fails_names_its_target_not_the_temporary_file(tmp_path):
    """mkstemp in a folder deleted under the run, and a rename onto a folder, both report the random temporary
    name (.status.json.x1y2.tmp); the user should read the file lossbench was writing."""
    gone = tmp_path / "gone" / "status.json"
    with pytest.raises(FileNotFoundError) as caught:
        write_atomic(gone, "{}")
    assert caught.value.filename == str(gone)
    (tmp_path / "report.md").mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        write_atomic(tmp_path / "report.md", "text")
    assert caught.value.filename == str(tmp_path / "report.md") and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(FileNotFoundError) as caught:  # another file's error keeps that file's name
        with atomic_path(tmp_path / "a.csv"):
            (tmp_path / "other" / "b.csv").write_text("")
    assert caught.value.filename == str(tmp_path / "other" / "b.csv")


@pytest.mark.parametrize("damage", NPZ_DAMAGES.values(), ids=NPZ_DAMAGES)
def test_every_error_of_reading_a_damaged_archive_is_one_the_readers_catch(tmp_path, damage):
    """The readers of .npz files (a data file, predictions.npz, a groups file) turn NPZ_READ_ERRORS into one line
    naming the file; anything else would reach the user as a traceback."""
    target = tmp_path / "d.npz"
    savez_atomic(target, {"x": np.random.default_rng(0).normal(size=(64, 64))})
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(NPZ_READ_ERRORS), np.load(target, allow_pickle=False) as archive:
        {key: archive[key] for key in archive.files}


def test_an_archive_killed_while_written_leaves_the_old_one(tmp_path, monkeypatch):
    """The data preparation scripts and the saved predictions write .npz archives; a half-written one would
    fail much later as a zip error, far from its cause."""
    target = tmp_path / "d.npz"
    savez_atomic(target, {"x": np.arange(3)})

    def killed(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        savez_atomic(target, {"x": np.arange(5)})
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]
    with np.load(target) as kept:
        assert kept["x"].tolist() == [0, 1, 2]


def test_concurrent_atomic_writers_never_collide(tmp_path):
    target = tmp_path / "curves.csv"
    errors = []

    def writer(text: str) -> None:
        try:
            for _ in range(50):
                write_atomic(target, text)
        except Exception as err:  # noqa: BLE001 - any collision is the failure this test looks for
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.csv"]


def test_the_run_directory_s_files_are_read_and_written_without_torch():
    """rundir and atomic hold the formats and writes of every run file; a report or a script reading runs must
    not pay torch's import (seconds) for them."""
    code = "import sys, lossbench.rundir, lossbench.atomic, lossbench.oslock; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_one_lock_holder_per_file_whichever_handle_asks(tmp_path):
    """oslock's lock belongs to an open file, as the run directory's lock needs: a second handle is refused while
    the first holds it, and takes it once the first gives it back or is closed."""
    from lossbench.oslock import release, try_lock, wait_lock

    path = tmp_path / "lock"
    first, second = (os.open(path, os.O_RDWR | os.O_CREAT) for _ in range(2))
    try:
        assert try_lock(first) and not try_lock(second)
        release(first)
        assert try_lock(second) and not try_lock(first)
        os.close(second)
        second = None
        wait_lock(first)  # free again: returns at once
    finally:
        for fd in (first, second):
            if fd is not None:
                os.close(fd)


def test_the_lock_file_names_its_holder_while_it_is_held(tmp_path):
    """Whoever is refused reads the holder's pid from the lock file: the lock never hides it (on Windows a locked
    byte cannot be read, so the locked byte lies past the pid)."""
    with locked(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(EnvironmentFailure, match=rf"in use by another lossbench process \(pid {os.getpid()}\)"):
            with locked(tmp_path):
                pass


def test_json_files_keep_their_layout(tmp_path):
    """Every JSON file goes through one writer, in the layout each had: run files indented, the marker on one line,
    compare.json keeping non-ASCII text as it is."""
    from lossbench.rundir import json_text, read_json, write_json, write_record

    write_status(tmp_path, "running", 1, 3)
    status = (tmp_path / "status.json").read_text()
    assert status.startswith('{\n  "status": "running",\n  "epoch": 1,') and status.endswith("}\n")
    claim(tmp_path / "run", "run")
    assert "\n" not in (tmp_path / "run" / MARKER_FILE).read_text().rstrip("\n")
    write_record(tmp_path, {"args": ["scores.path=/données/s.csv"]})
    assert "/données/s.csv" in (tmp_path / COMPARE_FILE).read_text(encoding="utf-8")
    write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert (tmp_path / "x.json").read_text() == json_text({"a": [1, 2]}) == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert read_json(tmp_path / "x.json") == {"a": [1, 2]}


def test_one_metrics_parser_tolerant_for_reports_and_tunes_whole_for_a_resume(tmp_path):
    """A row that is not numbers: the report and the tune's objective skip it (with a warning naming the line),
    a resume refuses the file, since it would rewrite it."""
    from lossbench.rundir import final_metric, read_metrics

    append_metrics(tmp_path, metric_row(1))
    append_metrics(tmp_path, {**metric_row(2), "val_score": 0.75})
    path = tmp_path / METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1].replace("0.5", "x", 1) + lines[2] + "3,3,0.")  # a bad row, a cut one
    table, warning = read_metrics(tmp_path)
    assert table["epoch"].tolist() == [2.0]
    assert warning == f"{path}: damaged line(s) 2, 4 skipped; using 1 row(s), epochs 2-2"
    assert final_metric(tmp_path, "val_score") == 0.75
    with pytest.raises(LossbenchError, match=r"metrics.csv: damaged \(line 2 is not a complete row of numbers\)"):
        truncate_metrics(tmp_path, 2)
    assert math.isnan(final_metric(tmp_path / "none", "val_score"))
