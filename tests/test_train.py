"""The training loop: metrics.csv columns, determinism, controlled comparisons, divergence, resume."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HANG_S, TINY, evaluation_case, layout_by_timer, make_cfg

import lossbench.device as D
import lossbench.run as R
import lossbench.step as S
import lossbench.train as T
from lossbench.config import compile_mode
from lossbench.data.dataset import Dataset
from lossbench.data.latest import Latest
from lossbench.device import configure_cudnn, resolve_device
from lossbench.errors import LossbenchError
from lossbench.metrics import TIMING_COLUMNS, fit_temperature, split_metrics, split_sums
from lossbench.rundir import CHECKPOINT_FILE, METRIC_COLUMNS, read_status
from lossbench.step import evaluate
from lossbench.train import train_run


def metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=TIMING_COLUMNS)


def test_run_writes_config_status_and_the_guide_columns(tmp_path, tiny_cfg):
    assert train_run(tiny_cfg, tmp_path / "run") == "finished"
    frame = metrics(tmp_path / "run")
    assert list(frame.columns) == METRIC_COLUMNS
    assert frame["epoch"].tolist() == [1, 2]
    assert frame["step"].tolist() == [3, 6]  # 230 images (256 less the 10% validation split) / batch 64
    assert frame["test_acc"].between(0, 1).all() and (frame["grad_norm"] > 0).all()
    assert read_status(tmp_path / "run")["status"] == "finished"
    assert (tmp_path / "run" / "config.yaml").exists()
    assert frame.filter(like="val_").notna().all().all()  # the default 10% validation split
    assert frame["test_score_bayes_cal"].notna().all()  # temperature fit on val
    assert frame["test_score_bayes"].notna().all() and frame["test_ece"].between(0, 1).all()
    confusion = pd.read_csv(tmp_path / "run" / "confusion.csv", index_col=0)
    assert confusion.index.name == "true\\pred" and list(confusion.index) == list(confusion.columns)
    assert confusion.to_numpy().sum() == 128  # every test image once
    assert confusion.to_numpy().trace() / 128 == pytest.approx(frame["test_acc"].iloc[-1])


def test_without_a_validation_split_nothing_is_fit_on_test(tmp_path):
    assert train_run(make_cfg(*TINY, "data.val_size=null"), tmp_path / "run") == "finished"
    frame = metrics(tmp_path / "run")
    assert frame["step"].tolist() == [4, 8]  # all 256 images train
    assert frame.filter(like="val_").isna().all().all()
    assert frame["test_score_bayes_cal"].isna().all()  # never fit on test


def test_same_seed_same_metrics_on_cpu(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "a")
    train_run(tiny_cfg, tmp_path / "b")
    pd.testing.assert_frame_equal(without_timing(metrics(tmp_path / "a")), without_timing(metrics(tmp_path / "b")))


def test_losses_share_initial_weights_and_data_order(tmp_path):
    """A controlled comparison: with lr=0 the loss cannot matter, so every loss sees the same model and data."""
    frames = []
    for loss in ("ce", "expected_score"):
        cfg = make_cfg(*TINY, f"loss={loss}", "optim.lr=1e-12", "optim.weight_decay=0")
        train_run(cfg, tmp_path / loss)
        frames.append(metrics(tmp_path / loss))
    for column in ("train_acc", "test_acc", "test_nll", "test_score"):
        assert frames[0][column].tolist() == frames[1][column].tolist()


def test_existing_run_directory_is_never_overwritten(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(LossbenchError, match="already has results; continue it with `lossbench resume"):
        train_run(tiny_cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_divergence_stops_and_is_marked(tmp_path):
    cfg = make_cfg(*TINY, "train.epochs=3", "optim.lr=1e30", "schedule.warmup_epochs=0")
    assert train_run(cfg, tmp_path / "run") == "diverged"
    status = read_status(tmp_path / "run")
    assert status["status"] == "diverged" and "loss became" in status["message"]
    assert train_run(cfg, tmp_path / "run", resume=True) == "diverged"  # final: not trained again
    assert read_status(tmp_path / "run") == status


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    assert train_run(tiny_cfg, tmp_path / "run", resume=True) == "finished"
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_checkpoint_loads_with_weights_only(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and "model" in state and "data_rng" in state


@pytest.mark.slow
def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    """kill -9 a real `lossbench run` after its first checkpoint, resume it, compare with a straight run."""
    overrides = [*TINY, "train.epochs=4", "data.train_size=1024"]
    train_run(make_cfg(*overrides), tmp_path / "straight")

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "lossbench.cli", "run", *overrides, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + HANG_S
    while not (killed / CHECKPOINT_FILE).exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = read_status(killed)["epoch"]
    assert done < 4, "the run finished before it could be killed"

    result = subprocess.run(
        [sys.executable, "-m", "lossbench.cli", "resume", str(killed)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((killed / "status.json").read_text())["status"] == "finished"
    pd.testing.assert_frame_equal(without_timing(metrics(killed)), without_timing(metrics(tmp_path / "straight")))


def test_evaluate_fits_the_temperature_on_val_only():
    """evaluate equals the metric functions applied to all logits at once, with T fit on the val logits."""
    model, data, scores, mean, std = evaluation_case(4, (8, 50, 30))
    row, confusion = evaluate(model, data, scores, 16, mean, std, None)  # batches of 16: test is streamed
    with torch.no_grad():
        val_logits, test_logits = (model((x.float() - mean) / std) for x in (data.val_x, data.test_x))
    t = fit_temperature(val_logits, data.val_y)
    expected = split_metrics(split_sums(val_logits, data.val_y, scores, t).tolist(), "val")
    expected.update(split_metrics(split_sums(test_logits, data.test_y, scores, t).tolist(), "test"))
    assert row.keys() == expected.keys()
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key
    assert confusion.sum() == 50 and confusion.trace() == round(row["test_acc"] * 50)

    no_val = Dataset(data.train_x, data.train_y, data.test_x, data.test_y, data.classes)
    row, _ = evaluate(model, no_val, scores, 16, mean, std, None)
    assert all(math.isnan(row[c]) for c in METRIC_COLUMNS if c.startswith("val_"))
    assert math.isnan(row["test_score_bayes_cal"])
    assert row["test_score_bayes"] == pytest.approx(expected["test_score_bayes"])


def test_evaluation_computes_its_metrics_in_float32_under_a_bf16_run(monkeypatch):
    """Only the model runs under autocast: the metrics (the Bayes decision's product q @ S among them) compute in
    float32. They once ran inside the autocast block of the batch generator, so in bf16 for the test split."""
    model, data, scores, mean, std = evaluation_case(4, (8, 50, 30))
    products = []
    own = S.split_sums

    def spy(*args, **kwargs):
        products.append((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)  # bf16 while autocast is on
        return own(*args, **kwargs)

    monkeypatch.setattr(S, "split_sums", spy)
    evaluate(model, data, scores, 16, mean, std, torch.bfloat16)
    assert products == [torch.float32] * (1 + 4)  # val at once, then the 4 test batches


def test_resume_after_the_last_checkpoint_still_writes_the_confusion(tmp_path, tiny_cfg):
    """Killed between the last checkpoint and `finished`: resume trains nothing, yet writes confusion.csv."""
    run = tmp_path / "run"
    train_run(tiny_cfg, run)
    before = (run / "confusion.csv").read_text()
    (run / "confusion.csv").unlink()
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "running"}))
    assert train_run(tiny_cfg, run, resume=True) == "finished"
    assert (run / "confusion.csv").read_text() == before


def test_resume_after_the_last_checkpoint_evaluates_the_final_model_once(tmp_path, tiny_cfg, monkeypatch):
    """The run's end after a resume at its last checkpoint: the pass that saves the predictions also gives the
    confusion counts, so the final model is not evaluated a second time, and both files are the uninterrupted
    run's."""
    run = tmp_path / "run"
    train_run(tiny_cfg, run)

    def saved() -> tuple[str, dict]:
        with np.load(run / "predictions.npz") as arrays:
            return (run / "confusion.csv").read_text(), {key: arrays[key].tolist() for key in arrays.files}

    before = saved()
    (run / "confusion.csv").unlink()
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))

    def evaluated(*args):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(R, "evaluate", evaluated)
    assert train_run(tiny_cfg, run, resume=True) == "finished"
    assert saved() == before


def test_resume_with_fewer_epochs_than_trained_is_refused_and_loses_nothing(tmp_path, tiny_cfg):
    """A config.yaml edited down to fewer epochs than the run has trained: resuming would call it finished at the
    new count while its metrics and model hold more. Refused with one line; with the count restored it resumes."""
    run = tmp_path / "run"
    assert train_run(tiny_cfg, run) == "finished"
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    files = {name: (run / name).read_bytes() for name in ("metrics.csv", CHECKPOINT_FILE)}
    config = (run / "config.yaml").read_text()
    assert "  epochs: 2\n" in config
    (run / "config.yaml").write_text(config.replace("  epochs: 2\n", "  epochs: 1\n"))
    message = f"{run} has trained 2 epochs but its config.yaml asks for 1 (train.epochs): set it to 2 or more"
    with pytest.raises(LossbenchError, match=re.escape(message)):
        train_run(tiny_cfg, run, resume=True)
    assert {name: (run / name).read_bytes() for name in files} == files
    (run / "config.yaml").write_text(config.replace("  epochs: 2\n", "  epochs: abc\n"))
    with pytest.raises(LossbenchError, match=re.escape("train.epochs must be an integer, not 'abc'")):
        train_run(tiny_cfg, run, resume=True)
    (run / "config.yaml").write_text(config)
    assert train_run(tiny_cfg, run, resume=True) == "finished"
    assert {name: (run / name).read_bytes() for name in files} == files


def test_device_auto_is_cuda_when_present_and_only_cuda_runs_touch_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    configure_cudnn(torch.device("cpu"), True)
    assert torch.backends.cudnn.benchmark is False  # CPU runs keep cuDNN's settings untouched
    configure_cudnn(torch.device("cuda"), True)
    assert torch.backends.cudnn.benchmark is True
    configure_cudnn(torch.device("cuda"), False)
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize(
    ("value", "mode"),
    [(False, None), (True, "default"), ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")],
)
def test_train_compile_names_a_torch_compile_mode(value, mode):
    assert compile_mode(value) == mode


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.compile=fast", "train.compile must be true, false or one of default, reduce-overhead"),
        ("train.compile=1", "train.compile must be true, false or one of"),
        ("train.cudnn_benchmark=maybe", "train.cudnn_benchmark must be true or false, not 'maybe'"),
    ],
)
def test_bad_compile_and_cudnn_settings_are_refused_before_training(tmp_path, override, message):
    with pytest.raises(LossbenchError, match=re.escape(message)):
        train_run(make_cfg(*TINY, override), tmp_path / "run")
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_a_compiled_run_trains_and_resumes_like_an_eager_one(tmp_path):
    """train.compile=reduce-overhead on the CPU (no CUDA graphs there, so torch.compile's code path only): the
    run finishes, its checkpoint holds the model's own parameter names (not the compiled wrapper's), and a resume
    continues from it."""
    cfg = make_cfg(*TINY, "train.compile=reduce-overhead", "train.epochs=1")
    run = tmp_path / "run"
    assert train_run(cfg, run) == "finished"
    state = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("epochs: 1", "epochs: 2"))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    assert train_run(cfg, run, resume=True) == "finished"
    assert metrics(run)["epoch"].tolist() == [1, 2]


def test_a_checkpoint_from_another_device_resumes_with_a_warning(tmp_path, tiny_cfg, caplog):
    """A GPU run resumed on a CPU: a CUDA generator's state (16 bytes) cannot drive a CPU generator, so the data
    order goes on from a seed of its own, with a warning, instead of calling the checkpoint damaged."""
    run = tmp_path / "run"
    train_run(tiny_cfg, run)
    state = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert state["data_rng_device"] == "cpu"
    state.update(data_rng=torch.arange(16, dtype=torch.uint8), data_rng_device="cuda", epoch=1)  # as CUDA writes it
    torch.save(state, run / CHECKPOINT_FILE)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "interrupted", "epoch": 1}))
    with caplog.at_level("WARNING", logger="lossbench"):
        assert train_run(tiny_cfg, run, resume=True) == "finished"
    assert "written on cuda, resumed on cpu" in caplog.text
    assert metrics(run)["epoch"].tolist() == [1, 2]


def test_runs_over_one_dataset_share_its_device_copy_and_statistics(tmp_path, monkeypatch):
    """The runs of a pack (and successive runs in one process) share the dataset's device copy and its mean and std,
    computed once (0.6 s a run for CIFAR-10 on the 2-core EPYC); another dataset replaces both."""
    computed = []
    real = D.feature_stats
    monkeypatch.setattr(D, "feature_stats", lambda x: computed.append(x) or real(x))
    monkeypatch.setattr(D, "_device_copy", Latest())  # as in a new process: nothing copied yet
    runs = []
    for seed, data_seed in ((0, 0), (1, 0), (0, 1)):
        run_dir = tmp_path / f"run{seed}{data_seed}"
        run_dir.mkdir()
        runs.append(R.start_run(make_cfg(*TINY, f"seed={seed}", f"data.seed={data_seed}"), run_dir))
    assert len(computed) == 2  # once for data seed 0 (two runs), once for data seed 1
    assert runs[1].data is runs[0].data and runs[1].mean is runs[0].mean and runs[1].std is runs[0].std
    assert runs[2].data is not runs[0].data and not torch.equal(runs[2].data.train_x, runs[0].data.train_x)


def test_a_resumed_run_keeps_the_layout_it_measured_first_to_the_bit(tmp_path, monkeypatch):
    """The layout (and precision) measured when a run first starts is recorded and reused by resume, whatever a
    new measurement would answer: here the measurement says oneDNN's layout at the start and the dense one at the
    resume, which rounds otherwise. Metrics and weights must equal the uninterrupted run's to the last bit."""
    cfg = make_cfg(*TINY, "precision=fp32", "train.epochs=3", "model.cpu_layout=auto")
    layout_by_timer(monkeypatch, tmp_path, "onednn")
    train_run(cfg, tmp_path / "straight")
    real = T.end_epoch

    def stop_after_epoch_1(run, *args):
        diverged = real(run, *args)
        if run.epoch == 1:
            raise KeyboardInterrupt
        return diverged

    monkeypatch.setattr(T, "end_epoch", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "stopped")
    monkeypatch.setattr(T, "end_epoch", real)
    recorded = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert (recorded["precision_setting"], recorded["precision"], recorded["cpu_layout"]) == ("fp32", "fp32", "onednn")
    checkpoint = torch.load(tmp_path / "stopped" / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["precision_choice"]["cpu_layout"] == "onednn"

    layout_by_timer(monkeypatch, tmp_path, "dense")  # a new measurement would now choose the dense layout
    assert train_run(cfg, tmp_path / "stopped", resume=True) == "finished"
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["cpu_layout"] == "onednn"
    pd.testing.assert_frame_equal(
        without_timing(metrics(tmp_path / "stopped")), without_timing(metrics(tmp_path / "straight")), check_exact=True
    )
    a, b = (torch.load(tmp_path / d / CHECKPOINT_FILE, weights_only=True)["model"] for d in ("stopped", "straight"))
    assert all(torch.equal(a[key], value) for key, value in b.items())


def test_precision_bf16_trains_in_bf16_where_the_cpu_can_and_in_fp32_with_a_warning_where_not(tmp_path, caplog):
    """The real kernels, on whatever CPU runs the suite: never torch's RuntimeError from a missing bf16 path."""
    from lossbench.cpus import cpu_features

    with caplog.at_level(logging.WARNING, logger="lossbench"):
        assert train_run(make_cfg(*TINY, "precision=bf16", "train.epochs=1"), tmp_path / "run") == "finished"
    used = json.loads((tmp_path / "run" / "run.json").read_text())["precision"]
    assert used == ("bf16" if cpu_features().onednn_bf16 else "fp32")
    assert ("this CPU has no bf16 kernels" in caplog.text) == (not cpu_features().onednn_bf16)
