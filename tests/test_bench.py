"""scripts/bench_throughput.py runs end to end and prints its verdict lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_throughput.py"


def test_the_benchmark_runs_and_prints_its_verdict_lines(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--precision", "fp32", "--rounds", "1",
                           "--steps", "1", "--warmup", "0", "--batch-size", "16", "--pack", "2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for prefix in ("efficiency: ", "ratio: ", "pack: "):
        line = next(line for line in lines if line.startswith(prefix))
        assert float(line.removeprefix(prefix).split()[0]) > 0
    assert "packed: 2 SmallCNNs as one network" in done.stdout


def test_the_benchmark_refuses_a_negative_pack():
    done = subprocess.run([sys.executable, str(SCRIPT), "--pack", "-1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--pack" in done.stderr
