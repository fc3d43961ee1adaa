"""The CPU: which model it is, which kernels it can run, the CPUs this process may use, and torch's threads fitted
to them.

Kernels first. Whether a CPU can run bf16 at all, and whether it runs it natively, differ between machines of the
same cloud and between one session and the next: with AVX2 only, torch's oneDNN refuses bf16 convolutions
("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"); with AVX512 but no BF16
instructions it runs them emulated, slower than fp32; AMX or AVX512-BF16 (and ARM's BF16 extension) run them in
hardware. torch's own check decides the first, the CPU's flags the second (see CpuFeatures).

A container or a batch job limits a process in two ways: which CPUs it may run on (its affinity, a cpuset) and how
much CPU time it may take (a cgroup's CFS quota, e.g. Kubernetes' `cpu: 2` or docker's `--cpus 2`). torch counts
only the first (`os.cpu_count()` neither): on a 64-core host with a quota of 2 CPUs, torch starts 64 threads, and
the kernel stops them all for most of every scheduling period once the quota is spent, so that more threads make
each step slower and less even (docs/performance.md). So a run counts the quota too and gives torch no more threads
than it pays for, unless the user chose the number (OMP_NUM_THREADS).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger("lossbench")

PROC = Path("/proc/self")
CPUINFO = Path("/proc/cpuinfo")

# Flags (as /proc/cpuinfo spells them) that run bf16 arithmetic in hardware: Intel's AMX, AVX512-BF16 (Cooper Lake,
# AMD Zen 4 and later) and ARMv8.6's BF16 extension ("bf16" in an aarch64 cpuinfo's Features line).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """What decides which CPU kernels lossbench may choose. `onednn_bf16` is torch's own answer to whether its
    oneDNN kernels run bf16 here at all; `flags` are the CPU's, for whether they run it in hardware."""

    model: str
    flags: frozenset[str]
    onednn_bf16: bool

    @property
    def native_bf16(self) -> bool:
        """bf16 in hardware: without it bf16 is emulated (slower than fp32) or refused, so it is never timed."""
        return self.onednn_bf16 and any(flag in self.flags for flag in NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        """One line naming the CPU and the features that matter, e.g. for a test log or a published number."""
        x86 = {"AVX2": "avx2", "AVX512": "avx512f", "AVX512-BF16": "avx512_bf16", "AMX": "amx_bf16"}
        arm = {"ASIMD": "asimd", "SVE": "sve", "BF16": "bf16"}
        names = arm if "asimd" in self.flags else x86
        listed = ", ".join(f"{name} {'yes' if flag in self.flags else 'no'}" for name, flag in names.items())
        bf16 = "native" if self.native_bf16 else "emulated" if self.onednn_bf16 else "none"
        return f"CPU: {self.model} ({platform.machine()}): {listed}; torch {torch.__version__} bf16 kernels: {bf16}"


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    return CpuFeatures(cpu_model(), cpu_flags(), onednn_bf16_supported())


def cpu_model() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags: x86's `flags` line or aarch64's `Features` line."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _cpuinfo_lines() -> list[str]:
    try:
        return CPUINFO.read_text().splitlines()
    except OSError:  # not Linux: the model from platform, no flags, and torch's own check for the kernels
        return []


def onednn_bf16_supported() -> bool:
    """Whether torch's oneDNN runs bf16 kernels on this CPU (torch's own check, which reads the CPU's features as
    the kernels do); False without oneDNN."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def usable_cpus(proc: Path = PROC) -> int:
    """How many CPUs' worth of work this process can get: its affinity, less where a cgroup quota allows less."""
    return cpu_limit(proc)[0]


def cpu_limit(proc: Path = PROC) -> tuple[int, float | None]:
    """(usable_cpus, the cgroup quota in CPUs or None where none applies)."""
    if sys.platform != "linux":
        return os.cpu_count() or 1, None
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(proc)
    return (max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus), quota


def cgroup_cpu_quota(proc: Path = PROC) -> float | None:
    """The tightest CFS quota, in CPUs, of this process's cgroup and its ancestors (cgroup v1 or v2), or None where
    there is none or it cannot be read. `proc` is /proc/self (a test's stand-in elsewhere)."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    quotas = [quota for folder in cgroup_cpu_folders(memberships, mounts) for quota in ancestor_quotas(folder)]
    return min(quotas, default=None)


def cgroup_cpu_folders(memberships: list[str], mounts: list[str]) -> list[tuple[Path, Path]]:
    """(the folder of this process's cgroup, the hierarchy's mount point) for each mounted hierarchy that can hold
    a CPU quota: v1's with the cpu controller, and v2's unified one.

    /proc/self/cgroup lines are `id:controllers:path` (v2: `0::path`); /proc/self/mountinfo lines give each mount's
    root within its hierarchy (field 4), its mount point (field 5) and, after ` - `, its type and options."""
    paths = {}
    for line in memberships:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        key = "v2" if number == "0" and not controllers else "v1" if "cpu" in controllers.split(",") else None
        if key:
            paths[key] = path
    folders = []
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        key = "v2" if tail[0] == "cgroup2" else "v1" if tail[0] == "cgroup" and "cpu" in tail[2].split(",") else None
        if key not in paths:
            continue
        root, mount_point = Path(fields[3]), Path(unescape(fields[4]))
        inside = Path(paths[key])
        # Else this mount shows another part of the hierarchy, or the cgroup lies above this namespace's root.
        if inside.is_relative_to(root) and ".." not in inside.parts:
            folders.append((mount_point / inside.relative_to(root), mount_point))
    return folders


def unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def ancestor_quotas(folder_and_mount: tuple[Path, Path]) -> list[float]:
    """The quotas, in CPUs, set on the cgroup folder and each parent up to its hierarchy's mount point: a parent's
    quota limits all its children together."""
    folder, mount_point = folder_and_mount
    quotas = []
    while True:
        quota = folder_quota(folder)
        if quota is not None:
            quotas.append(quota)
        if folder == mount_point or mount_point not in folder.parents:
            return quotas
        folder = folder.parent


def folder_quota(folder: Path) -> float | None:
    """One cgroup's quota in CPUs: v2's cpu.max (`max 100000` or `200000 100000`), or v1's cpu.cfs_quota_us (-1: none)
    over cpu.cfs_period_us. None where unset, absent or unreadable: a quota lossbench cannot read limits nothing."""
    try:
        if (folder / "cpu.max").exists():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        quota_us, period_us = int(quota), int(period)
    except (OSError, ValueError):  # also "max", and v1's files absent where no quota can be set
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


_fitted = False  # threads are fitted, and logged, once a process


def threads_chosen() -> bool:
    """Whether the user set torch's threads: OMP_NUM_THREADS holding a positive count (or a list starting with one,
    as OpenMP reads it). torch ignores any other value (`abc`, `0`), so such a value chooses nothing."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return first.isdigit() and int(first) > 0


def fit_torch_threads(proc: Path = PROC) -> None:
    """Give torch no more threads than the CPUs this process can use (usable_cpus), once a process, and say so. A
    number the user chose through OMP_NUM_THREADS stands."""
    global _fitted
    if _fitted or threads_chosen():
        return
    _fitted = True
    (cpus, quota), threads = cpu_limit(proc), torch.get_num_threads()
    if threads > cpus:
        torch.set_num_threads(cpus)
        limit = f"a cgroup CPU quota of {quota:.3g} CPU" if quota is not None else f"{cpus} CPUs in its affinity"
        log.info(
            "torch threads: %d instead of %d: this process has %s (OMP_NUM_THREADS sets another number)",
            cpus,
            threads,
            limit,
        )


if __name__ == "__main__":  # `python -m lossbench.cpus`: the line `make test` prints first
    print(cpu_features().describe())
