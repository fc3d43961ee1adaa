"""The CPUs a process may use: cgroup v1 and v2 CPU quotas read from a stand-in /proc/self and cgroup tree, and
torch's threads fitted to them, in a run too."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_cfg

from lossbench import cpus
from lossbench.train import train_run


def fake_proc(tmp_path: Path, memberships: list[str], mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc/self holding `cgroup` (its lines) and `mountinfo` with one line per (root, mount point, type,
    options)."""
    proc = tmp_path / "proc"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("".join(f"{line}\n" for line in memberships))
    lines = [
        f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {kind} {kind} {options}\n"
        for i, (root, point, kind, options) in enumerate(mounts)
    ]
    (proc / "mountinfo").write_text("".join(lines))
    return proc


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text + "\n")


def v2(tmp_path: Path, cpu_max: str, path: str = "/") -> Path:
    """A process in cgroup v2's `path`, whose cpu.max holds `cpu_max`."""
    mount = tmp_path / "sys" / "fs" / "cgroup"
    write(mount / path.strip("/"), cpu__max=cpu_max)
    return fake_proc(tmp_path, [f"0::{path}"], [("/", str(mount), "cgroup2", "rw")])


def test_v2_quota_in_a_container(tmp_path):
    assert cpus.cgroup_cpu_quota(v2(tmp_path, "150000 100000")) == 1.5


def test_v2_without_a_quota(tmp_path):
    assert cpus.cgroup_cpu_quota(v2(tmp_path, "max 100000")) is None


def test_v1_nested_cgroup_takes_the_tightest_ancestor(tmp_path):
    """A job's cgroup without its own quota under a parent holding one (a systemd slice, a batch system's job
    cgroup): the parent's quota limits it. A tighter quota of its own wins over the parent's."""
    mount = tmp_path / "cgroup" / "cpu,cpuacct"
    write(mount, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    write(mount / "slice", cpu__cfs_quota_us="300000", cpu__cfs_period_us="100000")
    write(mount / "slice" / "job", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    memberships = ["12:memory:/slice/job", "4:cpu,cpuacct:/slice/job", "0::/slice/job"]
    proc = fake_proc(tmp_path, memberships, [("/", str(mount), "cgroup", "rw,cpu,cpuacct")])
    assert cpus.cgroup_cpu_quota(proc) == 3.0
    write(mount / "slice" / "job", cpu__cfs_quota_us="50000", cpu__cfs_period_us="100000")
    assert cpus.cgroup_cpu_quota(proc) == 0.5


def test_v1_mount_of_a_subtree_and_an_escaped_mount_point(tmp_path):
    """Docker with cgroup v1 mounts the container's own cgroup (/docker/<id>) as the hierarchy's root; mountinfo
    writes a space in a mount point as \\040. A mount of another subtree, or of other controllers, is not read."""
    mount = tmp_path / "cg root" / "cpu"
    write(mount, cpu__cfs_quota_us="200000", cpu__cfs_period_us="100000")
    other = tmp_path / "other"
    write(other, cpu__cfs_quota_us="10000", cpu__cfs_period_us="100000")
    memory = tmp_path / "memory"
    write(memory, cpu__cfs_quota_us="10000", cpu__cfs_period_us="100000")
    mounts = [
        ("/docker/abc", str(mount).replace(" ", "\\040"), "cgroup", "rw,cpu"),
        ("/docker/zzz", str(other), "cgroup", "rw,cpu"),
        ("/docker/abc", str(memory), "cgroup", "rw,memory"),
    ]
    proc = fake_proc(tmp_path, ["3:cpu:/docker/abc", "2:memory:/docker/abc"], mounts)
    assert cpus.cgroup_cpu_quota(proc) == 2.0
    outside = fake_proc(tmp_path / "ns", ["3:cpu:/docker/abc/.."], mounts)  # above the namespace's root
    assert cpus.cgroup_cpu_quota(outside) is None


@pytest.mark.parametrize("cpu_max", ["banana", "100000", "0 100000", "100000 0", ""])
def test_unreadable_quotas_limit_nothing(tmp_path, cpu_max):
    assert cpus.cgroup_cpu_quota(v2(tmp_path, cpu_max)) is None


def test_no_proc_or_no_cgroup_files(tmp_path):
    assert cpus.cgroup_cpu_quota(tmp_path / "absent") is None
    proc = fake_proc(tmp_path, ["0::/gone"], [("/", str(tmp_path / "nowhere"), "cgroup2", "rw")])
    assert cpus.cgroup_cpu_quota(proc) is None
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "cgroup").write_text("nonsense\n::\n")
    (garbage / "mountinfo").write_text("short line\n1 2 3 - cgroup2\n")
    assert cpus.cgroup_cpu_quota(garbage) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus.sys, "platform", "linux")
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpus.usable_cpus(v2(tmp_path / "a", "250000 100000")) == 3
    assert cpus.usable_cpus(v2(tmp_path / "b", "2000000 100000")) == 8
    assert cpus.usable_cpus(v2(tmp_path / "c", "1000 100000")) == 1
    assert cpus.usable_cpus(v2(tmp_path / "d", "max 100000")) == 8


@pytest.fixture
def threads():
    """torch at 2 threads, a process that has not fitted them yet; both restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_fitted_to_the_quota_once_and_logged(tmp_path, monkeypatch, threads, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "_fitted", False)
    monkeypatch.setattr(cpus, "cpu_limit", lambda proc: (1, 0.5))
    with caplog.at_level(logging.INFO, logger="lossbench"):
        cpus.fit_torch_threads()
        torch.set_num_threads(2)
        cpus.fit_torch_threads()  # once a process: a later call leaves the user's own change alone
    assert torch.get_num_threads() == 2
    assert [r.getMessage() for r in caplog.records] == [
        "torch threads: 1 instead of 2: this process has a cgroup CPU quota of 0.5 CPU (OMP_NUM_THREADS sets "
        "another number)"
    ]


def test_threads_not_fitted_where_the_user_chose_them_or_the_cpus_suffice(monkeypatch, threads):
    monkeypatch.setattr(cpus, "_fitted", False)
    monkeypatch.setattr(cpus, "cpu_limit", lambda proc: (1, None))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cpus.fit_torch_threads()
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(cpus, "cpu_limit", lambda proc: (4, None))
    cpus.fit_torch_threads()
    assert torch.get_num_threads() == 2


def test_a_run_fits_its_threads_and_records_them(tmp_path, monkeypatch, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "_fitted", False)
    monkeypatch.setattr(cpus, "cpu_limit", lambda proc: (1, None))
    cfg = make_cfg(*TINY, "device=cpu", "train.epochs=1", "precision=fp32", "model.cpu_layout=dense")
    assert train_run(cfg, tmp_path / "run") == "finished"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["device"].endswith("(1 threads)")


@pytest.mark.parametrize("value", ["abc", "0", "-1", " "])
def test_an_omp_num_threads_that_torch_ignores_does_not_stop_the_fitting(monkeypatch, threads, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(cpus, "_fitted", False)
    monkeypatch.setattr(cpus, "cpu_limit", lambda proc: (1, 1.0))
    cpus.fit_torch_threads()
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(
    "cpuinfo, model, flags",
    [
        (
            "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n",
            "AMD EPYC",
            {"fpu", "avx2", "avx512f", "avx512_bf16"},
        ),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n", None, {"fp", "asimd", "sve", "bf16"}),
        ("", None, set()),  # unreadable or empty: the model from platform, no flags
    ],
)
def test_the_cpu_model_and_flags_are_read_from_x86_and_aarch64_cpuinfo(tmp_path, monkeypatch, cpuinfo, model, flags):
    path = tmp_path / "cpuinfo"
    if cpuinfo:
        path.write_text(cpuinfo)
    monkeypatch.setattr(cpus, "CPUINFO", path)
    assert cpus.cpu_flags() == flags
    assert cpus.cpu_model() == (model or cpus.platform.processor() or cpus.platform.machine())


def test_python_m_lossbench_cpus_prints_the_line_make_test_starts_with():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lossbench.cpus"], capture_output=True, text=True, check=True).stdout
    assert out == cpus.cpu_features().describe() + "\n" and out.startswith(f"CPU: {cpus.cpu_model()}")
