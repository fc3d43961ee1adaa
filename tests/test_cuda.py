"""The CUDA path, on a machine with a GPU (skipped elsewhere): a run trains, is interrupted and resumes there,
evaluation on the GPU computes what it computes on the CPU, a comparison shares one GPU between processes, and a
pack of runs trains there as its runs do alone.
The rest of the suite pins device=cpu where it asserts what only the CPU guarantees (bit-for-bit repeats)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY, evaluation_case, lossbench, make_cfg

import lossbench.run as R
import lossbench.train as T
from lossbench.pack import train_packed
from lossbench.rundir import read_status
from lossbench.step import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ON_GPU = [*TINY, "device=cuda"]


def test_interrupted_cuda_run_resumes_on_cuda(tmp_path, monkeypatch):
    """Ctrl-C in epoch 2 (after epoch 1's checkpoint), then `resume`: it continues from the CUDA checkpoint."""
    run = tmp_path / "run"
    append = R.append_metrics

    def interrupt_in_epoch_2(run_dir, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
        append(run_dir, row)

    monkeypatch.setattr(R, "append_metrics", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        T.train_run(make_cfg(*ON_GPU, "train.epochs=3"), run)
    assert read_status(run)["status"] == "interrupted" and read_status(run)["epoch"] == 1
    monkeypatch.setattr(R, "append_metrics", append)
    assert T.train_run(make_cfg(*ON_GPU, "train.epochs=3"), run, resume=True) == "finished"
    frame = pd.read_csv(run / "metrics.csv")
    assert frame["epoch"].tolist() == [1, 2, 3] and frame["test_acc"].notna().all()
    assert json.loads((run / "run.json").read_text())["device"] == torch.cuda.get_device_name()


def test_evaluation_on_the_gpu_matches_the_cpu():
    """Metrics are sums accumulated on the device: the GPU's must equal the CPU's (fp32, up to rounding)."""
    model, data, scores, mean, std = evaluation_case(8, (8, 300, 100))
    cpu_row, cpu_confusion = evaluate(model, data, scores, 64, mean, std, None)
    gpu = torch.device("cuda")
    on_gpu = (model.to(gpu), data.to(gpu), scores.to(gpu), 64, mean.to(gpu), std.to(gpu), None)
    gpu_row, gpu_confusion = evaluate(*on_gpu)
    assert torch.equal(cpu_confusion, gpu_confusion)
    for key, value in cpu_row.items():
        assert gpu_row[key] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), key


def test_comparison_shares_one_gpu_between_processes(tmp_path):
    """Two losses x two seeds through the joblib launcher: four processes on one GPU, one report."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "cmp"
    result = lossbench(
        "compare",
        *ON_GPU,
        "losses=[ce,expected_score]",
        "seeds=[0,1]",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = sorted(out.glob("loss=*"))
    assert len(runs) == 4
    for run in runs:
        assert read_status(run)["status"] == "finished"
        assert json.loads((run / "run.json").read_text())["device"] == torch.cuda.get_device_name()
    assert (out / "summary.md").is_file() and (out / "test_score.png").is_file()


def test_a_pack_trains_on_the_gpu_as_its_runs_do_alone(tmp_path):
    """hydra/launcher=packed's core on the GPU: grouped convolutions through cuDNN, channels_last, in fp32. The
    packed runs' first-epoch losses match the same runs trained alone there (rounding, TF32 convolutions and
    cuDNN's choice of algorithm differ, so the tolerance is looser than on the CPU)."""
    specs = [("ce", 0), ("expected_score", 1)]
    jobs = [
        (make_cfg(*ON_GPU, "precision=fp32", f"loss={loss}", f"seed={seed}"), tmp_path / f"{loss}_{seed}")
        for loss, seed in specs
    ]
    assert train_packed(jobs, size=0) == ["finished", "finished"]
    for cfg, run_dir in jobs:
        alone = tmp_path / "alone" / run_dir.name
        assert T.train_run(cfg, alone) == "finished"
        mine, theirs = pd.read_csv(run_dir / "metrics.csv"), pd.read_csv(alone / "metrics.csv")
        assert mine["train_loss"].iloc[0] == pytest.approx(theirs["train_loss"].iloc[0], rel=1e-2)
        assert json.loads((run_dir / "run.json").read_text())["device"] == torch.cuda.get_device_name()
