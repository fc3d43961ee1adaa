"""scripts/bench_throughput.py runs end to end and prints its verdict lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import HANG_S

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_throughput.py"
# the smallest timing: fp32 on the CPU, one timed step of 16 images per round, no warmup
SMALL = ["--device", "cpu", "--precision", "fp32", "--steps", "1", "--warmup", "0", "--batch-size", "16"]


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=HANG_S, cwd=cwd)


def test_the_benchmark_runs_and_prints_its_verdict_lines(tmp_path):
    done = bench(*SMALL, "--rounds", "1", "--pack", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for prefix in ("efficiency: ", "ratio: ", "pack: "):
        line = next(line for line in lines if line.startswith(prefix))
        assert float(line.removeprefix(prefix).split()[0]) > 0
    assert "packed: 2 SmallCNNs as one network" in done.stdout


def test_the_benchmark_times_contiguous_layouts_and_profiles_the_packed_step(tmp_path):
    done = bench(*SMALL, "--rounds", "1", "--pack", "2", "--contiguous", "--profile", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "contiguous NCHW" in done.stdout
    profile = done.stdout.split("profile: 1 steps of the PackedLoop")[1]
    assert "aten::convolution_backward" in profile or "aten::mkldnn_convolution" in profile


def test_the_benchmark_times_the_onednn_layout_against_the_dense_one_in_one_process(tmp_path):
    done = bench(*SMALL, "--rounds", "2", "--vs-dense", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "oneDNN's blocked layout inside" in done.stdout
    assert sum(line.split()[:1] == ["round"] and line.split()[2] == "dense" for line in done.stdout.splitlines()) == 2
    line = next(line for line in done.stdout.splitlines() if line.startswith("onednn: "))
    assert float(line.split()[1]) > 0
    refused = bench("--vs-dense", "--cpu-layout", "dense")
    assert refused.returncode == 2 and "--vs-dense" in refused.stderr


def test_the_benchmark_refuses_a_negative_pack_or_profile():
    for option in ("--pack", "--profile"):
        done = bench(option, "-1")
        assert done.returncode == 2 and option in done.stderr
