"""precision=auto: explicit choices, the cache key, cache hits and misses, and the decision, with an injected step
timer (nothing here depends on how fast this machine is)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import pytest
import torch
from conftest import TINY, make_cfg

from lossbench import precision as P
from lossbench.cpus import CpuFeatures, cpu_features
from lossbench.layout import LAYOUTS
from lossbench.models import SmallCNN
from lossbench.train import train_run

BATCH = (16, 3, 32, 32)


def fake_timer(fp32_s: float, bf16_s: float, calls: list | None = None) -> P.StepTimer:
    def timer(model, x, dtype):
        if calls is not None:
            calls.append((tuple(x.shape), dtype, torch.get_num_threads()))
        return bf16_s if dtype == torch.bfloat16 else fp32_s

    return timer


def no_timer(model, x, dtype):
    raise AssertionError("the step timer must not run here")


# The answers of the capability check, one per kind of CPU: (flags, torch's oneDNN bf16 check). The decision
# logic is tested under each on every machine; only the kernels themselves need the CPU they run on.
AVX2 = CpuFeatures("a laptop", frozenset({"avx2"}), onednn_bf16=False)
AVX512 = CpuFeatures("a Skylake Xeon", frozenset({"avx2", "avx512f", "avx512bw"}), onednn_bf16=True)
AVX512_BF16 = CpuFeatures("a Zen 4 EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}), onednn_bf16=True)
AMX = CpuFeatures("a Sapphire Rapids Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), True)


def as_cpu(monkeypatch, features: CpuFeatures) -> None:
    monkeypatch.setattr(P, "cpu_features", lambda: features)


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU with native bf16, an empty cache under tmp_path, and a fresh 'already logged' set."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    as_cpu(monkeypatch, AVX512_BF16)
    monkeypatch.setattr(P, "_announced", set())
    return torch.device("cpu")


def model(widths=(8, 8, 8)) -> SmallCNN:
    return SmallCNN(10, widths)


@pytest.mark.parametrize("name, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_explicit_choice_is_kept_without_measuring(cpu, name, dtype):
    chosen = P.resolve_precision(name, cpu, model(), BATCH, timer=no_timer)
    assert (chosen.name, chosen.dtype, chosen.layout) == (name, dtype, None)  # the model's layout is its own
    assert not P.cache_path().exists()


def layout_timer(seconds: dict[tuple, float], calls: list) -> P.StepTimer:
    """Step seconds by (dtype, the model's cpu_layout), as one CPU's kernels might give them."""

    def timer(model, x, dtype):
        calls.append((dtype, model.cpu_layout))
        return seconds[dtype, model.cpu_layout]

    return timer


def auto_layout() -> SmallCNN:
    return SmallCNN(10, (8, 8, 8), cpu_layout="auto")


BF16_DENSE_WINS = {
    (None, "onednn"): 0.3,
    (None, "dense"): 0.25,
    (torch.bfloat16, "onednn"): 0.1,
    (torch.bfloat16, "dense"): 0.08,
}


def test_an_auto_layout_is_decided_with_the_precision_and_cached(cpu):
    calls = []
    net = auto_layout()
    chosen = P.resolve_precision("auto", cpu, net, BATCH, timer=layout_timer(BF16_DENSE_WINS, calls))
    assert (chosen.name, chosen.layout) == ("bf16", "dense")
    assert chosen.reason.startswith(
        "bf16 3.12x fp32's speed on this CPU, each in its faster layout; oneDNN's layout "
        "0.80x the dense one's speed at bf16; measured, cached in"
    )
    # One warm-up step each, then the four alternating, each precision in each layout.
    assert calls == [(None, "onednn"), (None, "dense"), (torch.bfloat16, "onednn"), (torch.bfloat16, "dense")] * (
        1 + P.ROUNDS
    )
    assert net.cpu_layout == "auto"  # timed on a copy: the caller sets the answer on the run's model
    again = P.resolve_precision("auto", cpu, net, BATCH, timer=no_timer)
    assert (again.name, again.layout) == ("bf16", "dense") and "measured earlier" in again.reason


def test_bf16_is_not_chosen_when_fp32_in_its_faster_layout_beats_it(cpu):
    # In oneDNN's layout bf16 is 1.5x fp32, but fp32 in the dense layout beats both: deciding the precision in
    # one layout and then the layout would train 2x slower than fp32 could.
    seconds = {
        (None, "onednn"): 0.3,
        (None, "dense"): 0.1,
        (torch.bfloat16, "onednn"): 0.2,
        (torch.bfloat16, "dense"): 0.25,
    }
    chosen = P.resolve_precision("auto", cpu, auto_layout(), BATCH, timer=layout_timer(seconds, []))
    assert (chosen.name, chosen.layout) == ("fp32", "dense")


def test_an_explicit_precision_still_measures_an_auto_layout_in_that_precision(cpu):
    calls = []
    seconds = {(None, "onednn"): 0.2, (None, "dense"): 0.3}
    chosen = P.resolve_precision("fp32", cpu, auto_layout(), BATCH, timer=layout_timer(seconds, calls))
    assert (chosen.name, chosen.layout) == ("fp32", "onednn")
    assert {dtype for dtype, _ in calls} == {None}
    assert chosen.reason.startswith("precision=fp32; oneDNN's layout 1.50x")


def test_without_native_bf16_an_auto_layout_is_measured_in_fp32_only(cpu, monkeypatch):
    as_cpu(monkeypatch, AVX512)
    calls = []
    chosen = P.resolve_precision("auto", cpu, auto_layout(), BATCH, timer=layout_timer(BF16_DENSE_WINS, calls))
    assert (chosen.name, chosen.layout) == ("fp32", "dense") and {dtype for dtype, _ in calls} == {None}
    assert chosen.reason.startswith("this CPU has neither AMX nor AVX512-BF16")


@pytest.mark.parametrize(
    "fp32_s, bf16_s, expected",
    [
        (0.30, 0.10, "bf16"),  # AMX / Zen 4: bf16 much faster
        (0.30, 0.60, "fp32"),  # a Xeon with AVX512-BF16 but no AMX: bf16 half as fast
        (0.30, 0.29, "fp32"),  # within noise: fp32, never a bf16 that is no faster
        (0.33, 0.30, "bf16"),  # exactly the margin
    ],
)
def test_choose(fp32_s, bf16_s, expected):
    assert P.choose(fp32_s, bf16_s) == expected


def test_auto_measures_the_run_shape_alternating_and_caches(cpu):
    calls = []
    chosen = P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.6, calls))
    assert (chosen.name, chosen.dtype) == ("fp32", None)
    assert "bf16 0.50x fp32's speed" in chosen.reason and "measured" in chosen.reason
    # One warm-up step each, then fp32/bf16 alternating, all at the run's batch shape, on one thread.
    assert [d for _, d, _ in calls] == [None, torch.bfloat16] * (1 + P.ROUNDS)
    assert {(shape, threads) for shape, _, threads in calls} == {(BATCH, 1)}
    entries = json.loads(P.cache_path().read_text())
    (entry,) = entries.values()
    assert (entry["precision"], entry["fp32_s"], entry["bf16_s"]) == ("fp32", 0.3, 0.6)


def test_cache_hit_skips_the_measurement(cpu):
    first = P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.1))
    again = P.resolve_precision("auto", cpu, model(), BATCH, timer=no_timer)
    assert first.name == again.name == "bf16"
    assert "measured earlier, cached in" in again.reason


def test_cache_miss_for_another_shape_or_batch(cpu):
    P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.1))
    wider = P.resolve_precision("auto", cpu, model((8, 8, 16)), BATCH, timer=fake_timer(0.3, 0.6))
    bigger = P.resolve_precision("auto", cpu, model(), (32, 3, 32, 32), timer=fake_timer(0.3, 0.6))
    assert wider.name == bigger.name == "fp32"
    assert len(json.loads(P.cache_path().read_text())) == 3


def test_cache_key_names_the_machine_and_the_model_shape():
    key = P.cache_key(model(), BATCH)
    assert cpu_features().model in key and torch.__version__ in key
    assert key == P.cache_key(model(), BATCH)  # the weights' values do not matter, their shapes do
    assert key != P.cache_key(model((8, 8, 16)), BATCH)
    assert key != P.cache_key(model(), (32, 3, 32, 32))
    assert key != P.cache_key(model(), (16, 3, 64, 64))
    assert key != P.cache_key(SmallCNN(10, (8, 8, 8), cpu_layout="dense"), BATCH)  # other kernels


def test_corrupt_cache_is_measured_again_and_rewritten(cpu):
    P.cache_path().parent.mkdir(parents=True)
    P.cache_path().write_text("{not json")
    chosen = P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.1))
    assert chosen.name == "bf16"
    assert len(json.loads(P.cache_path().read_text())) == 1


def drop_a_timing(entry: dict) -> None:
    entry.pop(next(k for k in entry if k.endswith("_s")))


def set_timings(value) -> Callable[[dict], None]:
    return lambda entry: entry.update({k: value for k in entry if k.endswith("_s")})


@pytest.mark.parametrize("layout", ["onednn", "auto"])  # the precision's entry; the precision-and-layout one
@pytest.mark.parametrize(
    "damage",
    [
        drop_a_timing,
        set_timings("fast"),  # not a number
        set_timings(0),  # a ratio would divide by zero
        lambda e: e.update(precision="fp16", layout="blocked"),  # a decision that is not one of the options
    ],
)
def test_a_damaged_cache_entry_is_measured_again_not_a_failed_run(cpu, layout, damage):
    net = SmallCNN(10, (8, 8, 8), cpu_layout=layout)
    P.resolve_precision("auto", cpu, net, BATCH, timer=layout_timer(BF16_DENSE_WINS, []))
    entries = json.loads(P.cache_path().read_text())
    (entry,) = entries.values()
    damage(entry)
    P.cache_path().write_text(json.dumps(entries))
    calls = []
    again = P.resolve_precision("auto", cpu, net, BATCH, timer=layout_timer(BF16_DENSE_WINS, calls))
    assert again.name == "bf16" and calls  # measured again, and rewritten
    (entry,) = json.loads(P.cache_path().read_text()).values()
    timings = [v for k, v in entry.items() if k.endswith("_s")]
    assert entry["precision"] == "bf16" and timings and all(isinstance(v, float) and v > 0 for v in timings)


def test_unwritable_cache_does_not_fail_the_run(cpu, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # lossbench/ cannot be created under a file
    chosen = P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.1))
    assert chosen.name == "bf16" and "cached" not in chosen.reason


def test_cpu_without_native_bf16_is_fp32_without_measuring(cpu, monkeypatch):
    as_cpu(monkeypatch, AVX512)
    chosen = P.resolve_precision("auto", cpu, model(), BATCH, timer=no_timer)
    assert chosen.name == "fp32" and "emulated" in chosen.reason


def test_decision_is_logged_once_per_process(cpu, caplog):
    with caplog.at_level(logging.INFO, logger="lossbench"):
        for _ in range(3):
            P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.1))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision auto")]
    assert len(lines) == 1 and lines[0].startswith("precision auto: bf16 (bf16 3.00x fp32's speed")


def test_measurement_leaves_the_model_the_rng_and_the_threads_alone():
    net = model()
    threads = torch.get_num_threads()
    before = [t.clone() for t in net.state_dict().values()]
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    # The real timer, on a copy, in each precision this CPU runs (on one without bf16 kernels, in each layout).
    variants = [(None, None), (torch.bfloat16, None)] if cpu_features().onednn_bf16 else [(None, L) for L in LAYOUTS]
    P.time_variants(net, BATCH, P.time_step, variants)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))
    assert all(p.grad is None for p in net.parameters())
    assert torch.get_num_threads() == threads


def test_jobs_starting_together_measure_once(cpu):
    """A second job that waits on the lock while the first measures finds the first's answer, not its own."""
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_first(model, x, dtype):
        started.set()
        release.wait(5)
        return 0.1 if dtype == torch.bfloat16 else 0.3

    first = threading.Thread(target=P.resolve_precision, args=("auto", cpu, model(), BATCH, slow_first))
    first.start()
    started.wait(5)
    second = threading.Thread(
        target=lambda: calls.append(P.resolve_precision("auto", cpu, model(), BATCH, timer=fake_timer(0.3, 0.6)))
    )
    second.start()
    release.set()
    first.join(5)
    second.join(5)
    assert calls[0].name == "bf16" and "measured earlier" in calls[0].reason


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_a_run_trains_in_the_measured_layout_and_records_it(tmp_path, monkeypatch):
    # The run's real step timer, made to find dense faster: the run must train in the layout measured.
    seen = []

    def dense_wins(model, x, dtype):
        return 0.1 if model.cpu_layout == "dense" else 0.2

    def forward(self, x):  # the layout of each training and evaluation forward (not the 2-example fit check
        if len(x) > 2:  # that runs before anything is measured)
            seen.append(self.in_onednn_layout(x))
        return original(self, x)

    original = SmallCNN.forward
    monkeypatch.setattr(P, "time_step", dense_wins)
    monkeypatch.setattr(SmallCNN, "forward", forward)
    assert train_run(make_cfg(*TINY, "precision=fp32"), tmp_path / "run") == "finished"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["cpu_layout"] == "dense" and "oneDNN's layout 0.50x" in record["precision_reason"]
    assert seen and not any(seen)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_auto_on_cuda_is_bf16_where_native_without_measuring(monkeypatch):
    monkeypatch.setattr(P, "_announced", set())
    device = torch.device("cuda")
    chosen = P.resolve_precision("auto", device, model().to(device), BATCH, timer=no_timer)
    native = torch.cuda.get_device_capability(device) >= (8, 0)  # Ampere and later compute in bf16
    assert chosen.name == ("bf16" if native else "fp32")
    assert torch.cuda.get_device_name(device) in chosen.reason


@cuda
def test_tiny_run_trains_on_cuda_with_auto_precision(tmp_path):
    assert train_run(make_cfg(*TINY, "device=cuda"), tmp_path / "run") == "finished"
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_the_layout_decision_is_logged_once_per_process(cpu, caplog):
    with caplog.at_level(logging.INFO, logger="lossbench"):
        for _ in range(3):
            P.resolve_precision("auto", cpu, auto_layout(), BATCH, timer=layout_timer(BF16_DENSE_WINS, []))
    lines = [r.getMessage() for r in caplog.records if "model.cpu_layout auto" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("precision auto: bf16; model.cpu_layout auto: dense (bf16 3.12x")


def test_a_cache_that_cannot_be_written_is_one_warning_naming_it_once(tmp_path, caplog):
    path = tmp_path / "precision.json"
    path.mkdir()  # a directory where the file would go
    with caplog.at_level(logging.WARNING, logger="lossbench"):
        assert P.write_cache(path, {"key": {}}) is False
    assert [r.getMessage() for r in caplog.records] == [f"precision cache {path} not written: Is a directory"]


@pytest.mark.parametrize(
    "features, setting, expected, timed",
    [
        (AVX2, "auto", "fp32", False),  # no bf16 kernels at all: nothing to time
        (AVX2, "bf16", "fp32", False),  # refused with a warning, never torch's RuntimeError
        (AVX2, "fp32", "fp32", False),
        (AVX512, "auto", "fp32", False),  # bf16 runs, emulated: always slower, so not timed
        (AVX512, "bf16", "bf16", False),  # asked for, and it runs
        (AVX512_BF16, "auto", "bf16", True),  # native: timed (this timer makes bf16 3x faster)
        (AVX512_BF16, "bf16", "bf16", False),
        (AMX, "auto", "bf16", True),
        (AMX, "fp32", "fp32", False),
    ],
)
@pytest.mark.parametrize("layout", ["onednn", "auto"])
def test_each_kind_of_cpu_gets_only_a_precision_it_can_run(
    cpu, monkeypatch, caplog, features, setting, expected, timed, layout
):
    as_cpu(monkeypatch, features)
    calls = []
    timer = layout_timer(BF16_DENSE_WINS, calls)
    with caplog.at_level(logging.WARNING, logger="lossbench"):
        chosen = P.resolve_precision(setting, cpu, SmallCNN(10, (8, 8, 8), cpu_layout=layout), BATCH, timer=timer)
    assert chosen.name == expected
    dtypes = {dtype for dtype, _ in calls}
    assert (dtypes == {None, torch.bfloat16}) == timed  # bf16 against fp32: where bf16 is native only
    assert torch.bfloat16 not in dtypes or features.onednn_bf16  # bf16 is never run where it cannot
    refused = features is AVX2 and setting == "bf16"
    assert ("precision=bf16: this CPU has no bf16 kernels" in caplog.text) == refused
    if refused:
        assert chosen.reason.startswith("precision=bf16, but this CPU has no bf16 kernels")


def test_the_cpu_features_name_what_decides_the_kernels():
    line = AVX2.describe()
    assert line.startswith("CPU: a laptop") and "AVX2 yes, AVX512 no, AVX512-BF16 no, AMX no" in line
    assert line.endswith("bf16 kernels: none")
    assert AVX512.describe().endswith("emulated") and AMX.describe().endswith("native")
    assert not AVX2.native_bf16 and not AVX512.native_bf16 and AVX512_BF16.native_bf16 and AMX.native_bf16
    # A CPU flag alone is not enough: torch's own check must agree that its kernels run bf16 here.
    assert not CpuFeatures("odd", frozenset({"avx512_bf16"}), onednn_bf16=False).native_bf16


RECORDED = {"precision_setting": "auto", "precision": "bf16", "precision_reason": "bf16 2.00x", "cpu_layout": "dense"}


def test_a_recorded_choice_is_reused_as_it_was(cpu, caplog):
    with caplog.at_level(logging.WARNING, logger="lossbench"):
        chosen = P.recorded_precision(RECORDED, "auto", cpu, "run")
    assert (chosen.name, chosen.layout, chosen.reason) == ("bf16", "dense", "bf16 2.00x") and not caplog.text
    assert P.choice_record(chosen, "auto") == RECORDED  # what a checkpoint keeps reads back as it was


@pytest.mark.parametrize(
    "recorded",
    [
        {**RECORDED, "precision_setting": "fp32"},  # the user asked for another setting since: decide anew
        {key: value for key, value in RECORDED.items() if key != "precision_setting"},  # from an older version
        {**RECORDED, "precision": "fp16"},
        {**RECORDED, "cpu_layout": "blocked"},
        {},
    ],
)
def test_a_choice_recorded_under_another_setting_or_damaged_is_not_reused(cpu, recorded):
    assert P.recorded_precision(recorded, "auto", cpu, "run") is None


def test_a_recorded_bf16_that_cannot_run_here_goes_on_in_fp32_with_one_warning(cpu, monkeypatch, caplog):
    as_cpu(monkeypatch, AVX2)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # and a torch without oneDNN
    with caplog.at_level(logging.WARNING, logger="lossbench"):
        chosen = P.recorded_precision({**RECORDED, "cpu_layout": "onednn"}, "auto", cpu, "runs/ce")
    assert (chosen.name, chosen.layout) == ("fp32", "dense")
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("runs/ce: the precision and layout it recorded when it first started cannot run here")
    assert "fp32 instead of bf16 and the dense layout instead of oneDNN's" in warning


def test_a_onednn_layout_on_a_torch_without_onednn_is_the_dense_one_with_one_warning(cpu, monkeypatch, caplog):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    net = SmallCNN(10, (8, 8, 8), cpu_layout="onednn")
    with caplog.at_level(logging.WARNING, logger="lossbench"):
        for _ in range(2):
            P.resolve_precision("fp32", cpu, net, BATCH, timer=no_timer)
    assert [r.getMessage() for r in caplog.records] == [
        "model.cpu_layout=onednn: this torch has no oneDNN; the dense layout is used"
    ]
    assert not net.in_onednn_layout(torch.zeros(BATCH))


def test_the_cache_key_names_the_kernels_instruction_set(monkeypatch):
    """The same CPU model with AVX512 hidden (a VM, ATEN_CPU_CAPABILITY=avx2) runs other kernels: no shared answer."""
    key = P.cache_key(model(), BATCH)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2-hidden")
    assert P.cache_key(model(), BATCH) != key and "AVX2-hidden" in P.cache_key(model(), BATCH)
