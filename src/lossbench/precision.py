"""The autocast precision of a run: `fp32`, `bf16`, or `auto`, which is never slower than fp32; and, for a model
whose `cpu_layout` is `auto` (lossbench.models.SmallCNN), the faster of its CPU layouts (lossbench.layout).

On CUDA, `auto` is bf16 wherever the GPU supports it. On a CPU no feature flag predicts bf16's speed reliably:
CPUs with bf16 instructions run it well ahead of fp32 or behind it, by their kernels (docs/performance.md). So
`auto` times a few forward+backward steps of the run's own model at its batch shape in each precision and keeps
the faster one. The answer is cached per machine (CPU model, torch version) and model shape in
`$XDG_CACHE_HOME/lossbench/precision.json` (default `~/.cache/lossbench`), so a comparison pays for the
measurement once. For a model whose CPU layout is left to lossbench, both layouts are timed in each precision and
the pair is decided together: which layout is faster is a property of the CPU's kernels too.

A path the CPU cannot run is never chosen: without bf16 kernels (AVX2 only, lossbench.cpus) `precision=bf16` trains
in fp32 and says so once. A measured choice is made when a run first starts and recorded (run.json, checkpoints):
a resumed run goes on with it (recorded_precision), since a new measurement on a loaded machine can answer
otherwise, and another layout or precision rounds otherwise.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lossbench.atomic import write_atomic
from lossbench.cpus import cpu_features, cpu_model
from lossbench.layout import LAYOUTS, NO_ONEDNN, fastest_layouts, layout_speed, layout_variants, onednn_missing
from lossbench.oslock import wait_lock

log = logging.getLogger("lossbench")

CACHE_FILE = "precision.json"
# bf16 must win by this factor, so that timing noise never trades fp32 for a bf16 that is no faster.
BF16_MIN_SPEEDUP = 1.1
ROUNDS = 2  # timed rounds of every variant after one warm-up step each: the minimum of two, in a few seconds

EMULATED_BF16 = "this CPU has neither AMX nor AVX512-BF16: bf16 is emulated"
NO_BF16 = "this CPU has no bf16 kernels (torch's oneDNN needs AVX512BW/VL/DQ or AVX-NE-CONVERT)"

# Seconds of one training step of `model` on `x` under autocast to the dtype (None: plain fp32).
StepTimer = Callable[[nn.Module, torch.Tensor, "torch.dtype | None"], float]

_announced: set[str] = set()  # decisions this process has logged: once each, not once per run


@dataclass(frozen=True)
class Precision:
    """A resolved precision: `name` is fp32 or bf16 (what a run records), `reason` says why it was chosen."""

    name: str
    reason: str
    layout: str | None = None  # the CPU layout decided with it, for a model whose cpu_layout is auto

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32. Losses and metrics always compute in fp32."""
        return torch.bfloat16 if self.name == "bf16" else None


def resolve_precision(
    name: str, device: torch.device, model: nn.Module, batch_shape: tuple[int, ...], timer: StepTimer | None = None
) -> Precision:
    """The precision for training `model` on batches of `batch_shape` on `device` under the setting `name`, with
    the CPU layout for a model whose cpu_layout is auto (the caller sets it on the model)."""
    name, given = runnable_setting(name, device)
    layout = getattr(model, "cpu_layout", None)
    if onednn_missing(layout, device):
        _log_once("no oneDNN", f"model.cpu_layout=onednn: {NO_ONEDNN}; the dense layout is used", logging.WARNING)
    if device.type == "cpu" and layout == "auto":
        return cpu_precision_and_layout(name, model, batch_shape, timer or time_step, cache_path(), given)
    return autocast_precision(name, device, model, batch_shape, timer, given)


def runnable_setting(name: str, device: torch.device) -> tuple[str, str]:
    """The setting this device can honour, and why: bf16 on a CPU without bf16 kernels becomes fp32 (one warning),
    where torch would otherwise stop the run at its first convolution."""
    if name == "bf16" and not bf16_runs(device):
        _log_once("bf16 refused", f"precision=bf16: {NO_BF16}; training in fp32", logging.WARNING)
        return "fp32", f"precision=bf16, but {NO_BF16}: fp32"
    return name, f"precision={name}"


def bf16_runs(device: torch.device) -> bool:
    """Whether bf16 kernels run on `device` at all, emulated or not."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_features().onednn_bf16


def autocast_precision(
    name: str,
    device: torch.device,
    model: nn.Module,
    batch_shape: tuple[int, ...],
    timer: StepTimer | None = None,
    given: str | None = None,
) -> Precision:
    if name in ("fp32", "bf16"):
        return Precision(name, given or f"precision={name}")
    if device.type == "cuda":
        # Emulated bf16 (before Ampere) is slower than fp32: only native support counts.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return _announce(str(device), Precision("bf16", f"{torch.cuda.get_device_name(device)} supports bf16"))
        return _announce(str(device), Precision("fp32", f"{torch.cuda.get_device_name(device)} has no bf16"))
    if not cpu_features().native_bf16:
        return _announce("cpu", Precision("fp32", EMULATED_BF16 if cpu_features().onednn_bf16 else NO_BF16))
    key = cache_key(model, batch_shape)
    return _announce(key, cpu_precision(key, model, batch_shape, timer or time_step, cache_path()))


def recorded_precision(
    recorded: Mapping[str, Any], setting: str, device: torch.device, where: Path
) -> Precision | None:
    """The precision (and CPU layout) a run chose when it first started under the same `setting`, from its record
    (run.json's or a checkpoint's fields), for its resume; None where none was recorded (measure as a new run).
    Where the recorded choice cannot run here (a bf16 run resumed on a CPU without bf16 kernels, a oneDNN layout
    on a torch without oneDNN), one warning names it and what is used instead."""
    name, layout = recorded.get("precision"), recorded.get("cpu_layout")
    if recorded.get("precision_setting") != setting or name not in ("fp32", "bf16") or layout not in (*LAYOUTS, None):
        return None
    reason, instead = str(recorded.get("precision_reason", "recorded")), []
    if name == "bf16" and not bf16_runs(device):
        name, reason = "fp32", f"{NO_BF16}: fp32 instead of the recorded bf16"
        instead.append("fp32 instead of bf16")
    if onednn_missing(layout, device):
        layout = "dense"
        instead.append(f"the dense layout instead of oneDNN's ({NO_ONEDNN})")
    if instead:
        log.warning(
            "%s: the precision and layout it recorded when it first started cannot run here: it goes on in %s, "
            "so its epochs from here on round differently from an uninterrupted run's",
            where,
            " and ".join(instead),
        )
    return Precision(name, reason, layout)


def choice_record(precision: Precision, setting: str) -> dict[str, Any]:
    """What recorded_precision reads back: kept in run.json and in every checkpoint."""
    record = {"precision_setting": setting, "precision": precision.name, "precision_reason": precision.reason}
    if precision.layout is not None:
        record["cpu_layout"] = precision.layout
    return record


# ---------------------------------------------------------------- measurement and decision


def cpu_precision(key: str, model: nn.Module, batch_shape: tuple[int, ...], timer: StepTimer, cache: Path) -> Precision:
    """The decision cached under `key` (see cache_key), or a fresh measurement (then cached)."""

    def measured() -> dict:
        fp32_s, bf16_s = time_variants(model, batch_shape, timer, [(None, None), (torch.bfloat16, None)])
        return {"precision": choose(fp32_s, bf16_s), "fp32_s": fp32_s, "bf16_s": bf16_s}

    def valid(entry: object) -> bool:
        return usable(entry, "precision", ("fp32", "bf16"), ("fp32_s", "bf16_s"))

    entry, how = cached_or_measured(cache, key, valid, measured)
    speed = entry["fp32_s"] / entry["bf16_s"]
    return Precision(entry["precision"], f"bf16 {speed:.2f}x fp32's speed on this CPU; {how}")


def cpu_precision_and_layout(
    name: str, model: nn.Module, batch_shape: tuple[int, ...], timer: StepTimer, cache: Path, given: str | None = None
) -> Precision:
    """The precision under the setting `name` and the CPU layout, decided together for a model whose cpu_layout is
    auto: every precision the setting allows is timed in both layouts, so that bf16 is chosen only when its faster
    layout beats fp32's faster layout (deciding the precision in one layout first could pick a bf16 slower than
    fp32 in the other). Cached under the model's key and the setting, like cpu_precision."""
    if name == "auto" and not cpu_features().native_bf16:
        dtypes, given = [None], EMULATED_BF16 if cpu_features().onednn_bf16 else NO_BF16
    elif name == "auto":
        dtypes, given = [None, torch.bfloat16], None
    else:
        dtypes, given = [torch.bfloat16 if name == "bf16" else None], given or f"precision={name}"
    variants = layout_variants(dtypes)
    names = [f"{'bf16' if dtype else 'fp32'}_{layout}_s" for dtype, layout in variants]
    key = f"{cache_key(model, batch_shape)} | {' '.join(names)}"
    options = tuple("bf16" if dtype else "fp32" for dtype in dtypes)

    def valid(entry: object) -> bool:
        return usable(entry, "precision", options, tuple(names)) and entry.get("layout") in LAYOUTS

    def measured() -> dict:
        seconds = time_variants(model, batch_shape, timer, variants)
        precision, layout = decide(dict(zip(variants, seconds)))
        return {"precision": precision, "layout": layout, **dict(zip(names, seconds))}

    entry, how = cached_or_measured(cache, key, valid, measured)
    chosen = Precision(entry["precision"], explain(entry, len(dtypes) == 2, given, how), entry["layout"])
    _log_once(key, f"precision {name}: {chosen.name}; model.cpu_layout auto: {chosen.layout} ({chosen.reason})")
    return chosen


def cached_or_measured(
    cache: Path, key: str, valid: Callable[[object], bool], measured: Callable[[], dict]
) -> tuple[dict, str]:
    """The entry cached under `key` if `valid`, else a fresh `measured()` one, stamped and cached; with how it was
    obtained. Under the cache's lock, so that the jobs of a comparison starting together measure once."""
    with cache_lock(cache):
        entries = read_cache(cache)
        entry = entries.get(key)
        if valid(entry):
            return entry, f"measured earlier, cached in {cache}"
        entry = {**measured(), "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        entries[key] = entry
        return entry, f"measured, cached in {cache}" if write_cache(cache, entries) else "measured"


def decide(seconds: dict[tuple[torch.dtype | None, str], float]) -> tuple[str, str]:
    """(precision, layout) from step seconds by (autocast dtype, layout): each precision in its faster layout,
    then bf16 only when that is clearly faster than fp32's (choose)."""
    best = fastest_layouts(seconds)
    if len(best) == 2:
        precision = choose(best[None][0], best[torch.bfloat16][0])
    else:
        precision = "bf16" if torch.bfloat16 in best else "fp32"
    return precision, best[torch.bfloat16 if precision == "bf16" else None][1]


def explain(entry: dict, both: bool, given: str | None, how: str) -> str:
    """Why: what fixed the precision (or bf16's speed when both were timed) and the layout's speed at it."""
    at = entry["precision"]
    parts = [given] if given else []
    if both:
        fp32, bf16 = (min(entry[f"{p}_onednn_s"], entry[f"{p}_dense_s"]) for p in ("fp32", "bf16"))
        parts.append(f"bf16 {fp32 / bf16:.2f}x fp32's speed on this CPU, each in its faster layout")
    parts.append(layout_speed(entry, at))
    return "; ".join(parts + [how])


def choose(fp32_s: float, bf16_s: float) -> str:
    """bf16 only when its step is clearly faster than fp32's."""
    return "bf16" if bf16_s * BF16_MIN_SPEEDUP <= fp32_s else "fp32"


def time_variants(
    model: nn.Module,
    batch_shape: tuple[int, ...],
    timer: StepTimer,
    variants: list[tuple[torch.dtype | None, str | None]],
) -> list[float]:
    """Fastest step seconds of each variant (autocast dtype, CPU layout or None for the model's own) of a copy of
    `model`, alternating them so that other work on the machine slows all alike, on one thread: which variant is
    faster is a property of the CPU's kernels, and one thread is not held up waiting for another whose core other
    work has taken (on busy cores, several threads can invert which variant is faster). The minimum, since other
    work only ever adds time. The run's model, its RNG streams, the global RNG and torch's thread
    count are left as they were."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_variants(model, batch_shape, timer, variants)
    finally:
        torch.set_num_threads(threads)


def _time_variants(
    model: nn.Module,
    batch_shape: tuple[int, ...],
    timer: StepTimer,
    variants: list[tuple[torch.dtype | None, str | None]],
) -> list[float]:
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model).train()
        x = torch.randn(batch_shape, generator=torch.Generator().manual_seed(0))
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # as the training batches are
        times: list[list[float]] = [[] for _ in variants]

        def step(variant: tuple[torch.dtype | None, str | None]) -> float:
            dtype, layout = variant
            if layout is not None:
                probe.cpu_layout = layout
            return timer(probe, x, dtype)

        for variant in variants:  # warm-up: oneDNN builds its kernels for each variant in the first step
            step(variant)
        for _ in range(ROUNDS):
            for variant, seconds in zip(variants, times):
                seconds.append(step(variant))
    return [min(seconds) for seconds in times]


def time_step(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Wall seconds of one forward+backward. logsumexp stands in for the loss: the same cost as cross-entropy
    (which the losses compute in fp32 anyway) without needing labels."""
    began = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        z = model(x)
    z.float().logsumexp(dim=1).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - began


# ---------------------------------------------------------------- the cache


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lossbench" / CACHE_FILE


def cache_key(model: nn.Module, batch_shape: tuple[int, ...]) -> str:
    """Machine (CPU model, torch version) and model shape (class, parameter shapes, batch shape, and the layout its
    stages compute in on a CPU where the model has that setting: other kernels, another answer). The thread count
    is left out: the measurement runs on one thread."""
    shapes = [type(model).__name__, [list(p.shape) for p in model.parameters()], list(batch_shape)]
    if hasattr(model, "cpu_layout"):
        shapes.append(model.cpu_layout)
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    # The kernels' instruction set too: a VM or ATEN_CPU_CAPABILITY can hide AVX512 from a CPU of the same name.
    return f"{cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | model {digest}"


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the cache while reading, measuring and writing it: the jobs of a comparison
    start together, and without it each would measure (slowing the others' measurements) and they could
    disagree. The first measures; the others wait and find its answer. No lock where the file cannot be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.with_name(path.name + ".lock").open("a")
    except OSError:
        yield
        return
    with handle:
        wait_lock(handle.fileno())  # released when the handle closes
        yield


def read_cache(path: Path) -> dict[str, dict]:
    """The cached decisions; an unreadable or corrupt file counts as empty (it is rewritten on the next miss)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def usable(entry: object, decision: str, options: tuple[str, ...], timings: tuple[str, ...]) -> bool:
    """Whether a cached entry holds a decision among `options` and the positive step seconds it was made from.
    A damaged or hand-edited entry is measured again: the cache only saves time and must never fail a run."""
    if not isinstance(entry, dict) or entry.get(decision) not in options:
        return False
    seconds = [entry.get(name) for name in timings]
    return all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < float("inf") for s in seconds)


def write_cache(path: Path, entries: dict[str, dict]) -> bool:
    """Whether the cache was written. The cache only saves time: a read-only home or two jobs writing at the same
    moment must not fail a run."""
    try:
        write_atomic(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        log.warning("precision cache %s not written: %s", path, err.strerror or err)
        return False
    return True


def _announce(topic: str, precision: Precision) -> Precision:
    """Log the decision for `topic` (a device, or a machine and model shape) the first time only."""
    _log_once(topic, f"precision auto: {precision.name} ({precision.reason})")
    return precision


def _log_once(topic: str, message: str, level: int = logging.INFO) -> None:
    if topic not in _announced:
        _announced.add(topic)
        log.log(level, message)
