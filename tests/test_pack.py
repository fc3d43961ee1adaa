"""Packing: M models as one network compute what the M models compute, state moves both ways, and runs trained
as one pack (hydra/launcher=packed) match the same runs trained alone, resume, diverge and fail on their own."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, evaluation_case, layout_by_timer, lossbench, make_cfg
from omegaconf import OmegaConf
from torch import nn

import lossbench.pack as pack_module
import lossbench.provenance as provenance_module
import lossbench.run as run_module
from lossbench.data.batching import Batches, feature_stats, packed_batches
from lossbench.data.dataset import Dataset
from lossbench.errors import LossbenchError
from lossbench.losses import build_loss_from_config
from lossbench.metrics import TIMING_COLUMNS
from lossbench.models import MLP, SmallCNN, resnet18_cifar
from lossbench.pack import (
    PackedNetwork,
    SharedBatch,
    member_losses,
    pack_groups,
    pack_inputs,
    pack_optimizer_state,
    train_pack,
    train_packed,
    unpack_optimizer_state,
)
from lossbench.precision import Precision
from lossbench.run import start_run
from lossbench.rundir import CHECKPOINT_FILE, METRICS_FILE, claim, read_status
from lossbench.step import evaluate, evaluate_models
from lossbench.train import train_run

MODELS = {
    "linear": (lambda: nn.Linear(12, 5), (12,)),  # a model that is itself one packable layer
    "small_cnn": (lambda: SmallCNN(5, widths=(4, 8)), (3, 16, 16)),
    "mlp": (lambda: MLP(5, (12,), hidden=(16, 8), dropout=0.0), (12,)),
    "resnet18": (lambda: resnet18_cifar(5), (3, 8, 8)),
}


def members(name: str, count: int = 3) -> tuple[list[nn.Module], tuple[int, ...]]:
    make, shape = MODELS[name]
    nets = []
    for seed in range(count):
        torch.manual_seed(seed)
        nets.append(make())
    for net in nets:  # running statistics that differ between members, so that eval mode tests them too
        with torch.no_grad():
            net(torch.randn(8, *shape))
    return nets, shape


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_packed_network_computes_each_members_logits_gradients_and_statistics(name, mode):
    nets, shape = members(name)
    packed = PackedNetwork(nets, torch.randn(4, *shape))
    batches = [(torch.randn(6, *shape), torch.randint(0, 5, (6,))) for _ in nets]
    logits = getattr(packed, mode)()(pack_inputs([x for x, _ in batches]))
    assert logits.shape == (3, 6, 5)
    own = [getattr(net, mode)()(x) for net, (x, _) in zip(nets, batches)]
    sum(F.cross_entropy(logits[m], y) for m, (_, y) in enumerate(batches)).backward()
    sum(F.cross_entropy(z, y) for z, (_, y) in zip(own, batches)).backward()
    close = dict(atol=1e-4, rtol=1e-3)
    for m in range(3):
        torch.testing.assert_close(logits[m], own[m], **close)
    copies = [members(name)[0][0] for _ in nets]  # receive the packed weights and statistics
    packed.unpack_into(copies)
    for net, copy in zip(nets, copies):
        for (key, mine), theirs in zip(net.state_dict().items(), copy.state_dict().values()):
            torch.testing.assert_close(theirs, mine, **close, msg=key)
    grads = dict(packed.net.named_parameters())
    for key, param in nets[1].named_parameters():
        packed_grad = grads[key].grad
        rows = param.shape[0]
        part = packed_grad[1] if packed_grad.ndim == param.ndim + 1 else packed_grad.narrow(0, rows, rows)
        torch.testing.assert_close(part, param.grad, **close, msg=key)


def test_packed_and_separate_sgd_steps_agree_and_the_state_travels_back():
    nets, shape = members("small_cnn", 2)
    packed = PackedNetwork(nets, torch.randn(4, *shape))
    make = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)  # noqa: E731
    own = [make(net.parameters()) for net in nets]
    together = make(packed.parameters())
    for _ in range(2):
        batches = [(torch.randn(6, *shape), torch.randint(0, 5, (6,))) for _ in nets]
        logits = packed(pack_inputs([x for x, _ in batches]))
        together.zero_grad()
        sum(F.cross_entropy(logits[m], y) for m, (_, y) in enumerate(batches)).backward()
        together.step()
        for net, optimizer, (x, y) in zip(nets, own, batches):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    copies, _ = members("small_cnn", 2)
    copy_optimizers = [make(c.parameters()) for c in copies]
    packed.unpack_into(copies)
    unpack_optimizer_state(together, copy_optimizers)
    for net, copy, mine, theirs in zip(nets, copies, own, copy_optimizers):
        for a, b in zip(net.parameters(), copy.parameters()):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        for a, b in zip(mine.state_dict()["state"].values(), theirs.state_dict()["state"].values()):
            torch.testing.assert_close(b["momentum_buffer"], a["momentum_buffer"], atol=1e-5, rtol=1e-4)
            assert b["momentum_buffer"].untyped_storage().nbytes() == b["momentum_buffer"].nbytes  # a copy, no view
    again = make(packed.parameters())
    pack_optimizer_state(again, own)
    for a, b in zip(together.state_dict()["state"].values(), again.state_dict()["state"].values()):
        torch.testing.assert_close(b["momentum_buffer"], a["momentum_buffer"], atol=1e-5, rtol=1e-4)


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.head = nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.norm(x))


class Mixing(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(x - x.mean(dim=1, keepdim=True))  # the mean runs over every member's features


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Normed, "Normed cannot be packed: its LayerNorm (norm) has weights of a kind only Conv1d"),
        (Mixing, "Mixing cannot be packed: its forward mixes the packed models' channels"),
    ],
)
def test_a_model_that_cannot_be_packed_is_refused_by_name(model, message):
    with pytest.raises(LossbenchError, match=re.escape(message)):
        PackedNetwork([model(), model()], torch.randn(4, 6))


def test_the_probe_check_computes_float32_exactly_and_restores_the_settings(monkeypatch):
    """On a GPU, TF32 and autotuned algorithms round a grouped and a plain convolution differently; the check must
    see structure, not rounding, and leave the user's settings as they were."""

    def settings() -> tuple:
        return (
            torch.get_float32_matmul_precision(),
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        )

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    nets, shape = members("small_cnn", 2)
    seen = []
    # on the member and on its copy inside the packed network: both forwards of the check
    nets[0].register_forward_hook(lambda module, args, out: seen.append(settings()))
    torch.set_float32_matmul_precision("medium")
    try:
        PackedNetwork(nets, torch.randn(4, *shape))
        after = settings()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert seen == [("highest", False, False, True)] * 2
    assert after == ("medium", True, True, False)


@pytest.mark.parametrize("kind", ["images", "vectors"])
def test_a_pack_evaluates_its_members_at_once_as_each_evaluates_alone(kind):
    """One evaluation of the packed network, every member fed the same batches, gives each member the metrics
    and confusion of its own evaluation (with a validation split, so each fits its own temperature)."""
    _, data, scores, mean, std = evaluation_case(16, (8, 70, 40))
    if kind == "images":
        make, shape = (lambda: SmallCNN(3, widths=(4, 8))), (3, 16, 16)
    else:  # feature vectors: the images' pixels as floats, standardised per feature
        flat = lambda x: x.flatten(1).float()  # noqa: E731
        data = Dataset(
            flat(data.train_x), data.train_y, flat(data.test_x), data.test_y, data.classes, flat(data.val_x), data.val_y
        )
        mean, std = feature_stats(data.train_x)
        make, shape = (lambda: MLP(3, (768,), hidden=(16, 8), dropout=0.0)), (768,)
    nets = [make() for _ in range(3)]
    with torch.no_grad():
        for i, net in enumerate(nets):  # running statistics that differ between members
            net(torch.randn(8, *shape) * (1 + i))
    network = PackedNetwork(nets, torch.randn(4, *shape))
    together = evaluate_models(SharedBatch(network), data, scores, 32, mean, std, None)  # test streamed in 3 batches
    assert len(together) == 3
    for net, (row, confusion) in zip(nets, together):
        alone_row, alone_confusion = evaluate(net, data, scores, 32, mean, std, None)
        assert row.keys() == alone_row.keys()
        for key, value in alone_row.items():
            assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), key
        assert torch.equal(confusion, alone_confusion)


# ---------------------------------------------------------------- training runs as one pack


def jobs_for(tmp_path, specs, *extra: str) -> list[tuple]:
    """(config, run directory) per (loss, seed), tiny and in fp32 (packed and alone then agree closely)."""
    return [
        (make_cfg(*TINY, "precision=fp32", f"loss={loss}", f"seed={seed}", *extra), tmp_path / f"{loss}_{seed}")
        for loss, seed in specs
    ]


SPECS = [("ce", 0), ("expected_score", 1), ("soft_label_ce", 2)]


def test_packed_runs_train_as_the_same_runs_trained_alone(tmp_path):
    specs = [*SPECS, ("ce", 3)]  # two ce runs: scored by one loss call
    # In the dense layout: oneDNN's blocked grouped and plain convolutions round 10x further apart (1e-5 of a
    # gradient, measured), which these tiny, fast-moving runs grow to 4% of a weight in 6 steps; the network test
    # above checks the blocked layout's packed gradients step by step.
    packed = jobs_for(tmp_path / "packed", specs, "model.cpu_layout=dense")
    assert train_packed(packed, size=0) == ["finished"] * 4
    for (cfg, run_dir), (loss, seed) in zip(packed, specs):
        alone = tmp_path / "alone" / f"{loss}_{seed}"
        assert train_run(cfg, alone) == "finished"
        mine, theirs = pd.read_csv(run_dir / METRICS_FILE), pd.read_csv(alone / METRICS_FILE)
        assert mine["epoch"].tolist() == theirs["epoch"].tolist() == [1, 2]
        for column in ("train_loss", "grad_norm", "test_nll", "test_expected_score", "val_nll", "lr"):
            assert mine[column].tolist() == pytest.approx(theirs[column].tolist(), rel=1e-3, abs=1e-5), column
        assert (mine["test_acc"] - theirs["test_acc"]).abs().max() <= 1 / 128  # at most one test image flips
        a, b = (torch.load(d / CHECKPOINT_FILE, weights_only=True) for d in (run_dir, alone))
        for key, value in b["model"].items():
            torch.testing.assert_close(a["model"][key], value, atol=2e-3, rtol=1e-3, msg=key)  # rounding, over 6 steps
        assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
        assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(b["optimizer"]["param_groups"][0]["lr"])
        assert torch.equal(a["data_rng"], b["data_rng"])  # the same data order and augmentation
        assert (run_dir / "confusion.csv").exists() and read_status(run_dir)["status"] == "finished"


@pytest.mark.parametrize("kind", ["images", "vectors"])
def test_packed_batches_are_each_members_own_batches_bit_for_bit(kind):
    inputs = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8) if kind == "images" else torch.randn(40, 6)
    labels = torch.randint(0, 5, (40,))
    mean, std = feature_stats(inputs)

    def loaders():
        return [Batches(inputs, labels, 16, mean, std, torch.Generator().manual_seed(seed), 4, True) for seed in (0, 7)]

    packed, alone = loaders(), loaders()
    for _ in range(2):  # two epochs: the generators go on as they would alone
        steps = list(packed_batches(packed))
        assert len(steps) == 2
        for (x, y), *own in zip(steps, *alone):
            assert torch.equal(x, pack_inputs([xm for xm, _ in own]))
            assert torch.equal(y, torch.stack([ym for _, ym in own]))
            assert x.ndim == 2 or x.is_contiguous(memory_format=torch.channels_last)


def test_runs_with_one_loss_are_scored_in_one_call_with_their_own_values():
    scores = torch.tensor([[2.0, 1.0, -1.0], [1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])
    cfgs = [make_cfg(f"loss={name}") for name in ("ce", "expected_score", "ce", "expected_score", "ce")]
    runs = [SimpleNamespace(cfg=cfg, loss_fn=build_loss_from_config(cfg.loss, scores)) for cfg in cfgs]
    z = torch.randn(5, 6, 3, requires_grad=True)
    y = torch.randint(0, 3, (5, 6))
    keys = [OmegaConf.to_yaml(run.cfg.loss) for run in runs]
    together = member_losses([run.loss_fn for run in runs], keys, torch.device("cpu"))(z, y)
    (grad_together,) = torch.autograd.grad(together.sum(), z)
    alone = torch.stack([run.loss_fn(z[m], y[m]) for m, run in enumerate(runs)])
    (grad_alone,) = torch.autograd.grad(alone.sum(), z)
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_together, grad_alone, rtol=1e-6, atol=1e-8)


def test_a_pack_of_one_is_its_run_trained_alone_to_the_last_bits(tmp_path):
    """With one member the grouped convolutions are plain ones (only the head's batched matmul rounds otherwise),
    so the whole pipeline (data order, optimiser, schedule, statistics, checkpoint) must repeat the lone run to
    float32 rounding. Several members drift further apart, by rounding amplified over the steps (above)."""
    ((cfg, run_dir),) = jobs_for(tmp_path / "packed", SPECS[1:2])
    assert train_packed([(cfg, run_dir)], size=0) == ["finished"]
    assert train_run(cfg, tmp_path / "alone") == "finished"
    mine, theirs = (pd.read_csv(d / METRICS_FILE).drop(columns=TIMING_COLUMNS) for d in (run_dir, tmp_path / "alone"))
    pd.testing.assert_frame_equal(mine, theirs, rtol=1e-6)
    a, b = (torch.load(d / CHECKPOINT_FILE, weights_only=True) for d in (run_dir, tmp_path / "alone"))
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, atol=1e-6, rtol=1e-5, msg=key)
    for i, state in b["optimizer"]["state"].items():
        torch.testing.assert_close(
            a["optimizer"]["state"][i]["momentum_buffer"], state["momentum_buffer"], atol=1e-6, rtol=1e-5
        )
    assert torch.equal(a["data_rng"], b["data_rng"]) and a["scheduler"] == b["scheduler"]


def test_on_a_cpu_the_members_evaluate_their_own_models_and_on_a_gpu_the_pack_evaluates_them(tmp_path, monkeypatch):
    """Where packed evaluation pays is measured, not assumed: on a CPU oneDNN's grouped convolutions are slower
    than its plain ones, on a GPU one set of kernels for all members beats M sets."""
    runs = []
    for cfg, run_dir in jobs_for(tmp_path, SPECS[:2]):
        run_dir.mkdir(parents=True)
        runs.append(start_run(cfg, run_dir))
    pack = pack_module.Pack(runs)
    assert pack.evaluate() == [None, None]
    calls = []
    monkeypatch.setattr(pack_module, "evaluate_models", lambda model, *args: calls.append(model.eval()) or ["a", "b"])
    for run in runs:  # what the pack checks: the device its runs' tensors live on
        monkeypatch.setattr(run, "scores", SimpleNamespace(device=torch.device("cuda")))
    assert pack.evaluate() == ["a", "b"]
    assert isinstance(calls[0], SharedBatch) and calls[0].network is pack.network
    assert pack.network.training  # left ready for the next epoch's steps


def test_a_packed_runs_checkpoint_resumes_alone_and_a_lone_runs_in_a_pack(tmp_path):
    jobs = jobs_for(tmp_path, SPECS[:2], "train.epochs=3")
    for cfg, _ in jobs:  # stopped after epoch 1: the first in a pack, the second alone
        cfg.train.epochs = 1
    train_packed(jobs[:1], size=0)
    train_run(jobs[1][0], jobs[1][1])
    for cfg, run_dir in jobs:
        cfg.train.epochs = 3
        config = (run_dir / "config.yaml").read_text()
        (run_dir / "config.yaml").write_text(config.replace("epochs: 1", "epochs: 3"))
        status = json.loads((run_dir / "status.json").read_text())
        (run_dir / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
        cfg.resume = True
    assert train_run(jobs[0][0], jobs[0][1], resume=True) == "finished"
    assert train_packed(jobs[1:], size=0) == ["finished"]
    for _, run_dir in jobs:
        assert pd.read_csv(run_dir / METRICS_FILE)["epoch"].tolist() == [1, 2, 3]


def test_runs_at_different_epochs_resume_in_separate_packs_and_finished_runs_stay(tmp_path):
    jobs = jobs_for(tmp_path, SPECS, "resume=true")
    train_run(jobs[0][0], jobs[0][1])  # finished
    cfg, run_dir = jobs[1]
    train_run(cfg, run_dir)
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    torch.save({**state, "epoch": 1}, run_dir / CHECKPOINT_FILE)  # as if stopped after epoch 1
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "status": "interrupted", "epoch": 1}))
    finished_at = (jobs[0][1] / METRICS_FILE).stat().st_mtime_ns
    assert train_packed(jobs, size=0) == ["finished"] * 3
    assert (jobs[0][1] / METRICS_FILE).stat().st_mtime_ns == finished_at  # not trained again
    for _, run_dir in jobs:
        assert pd.read_csv(run_dir / METRICS_FILE)["epoch"].tolist() == [1, 2]


def test_a_pack_stopped_between_epochs_resumes_as_it_would_have_trained_on(tmp_path, monkeypatch):
    """Stopped once every member has checkpointed epoch 1, the pack resumes whole: the same pack, in the layout
    measured when it first started (a new measurement answers otherwise here), so the same rounding, and metrics
    and weights equal an uninterrupted pack's to the last bit (docs/reliability.md says so)."""
    layout_by_timer(monkeypatch, tmp_path, "onednn")
    straight = jobs_for(tmp_path / "straight", SPECS, "train.epochs=3")
    assert train_packed(straight, size=0) == ["finished"] * 3
    jobs = jobs_for(tmp_path / "stopped", SPECS, "train.epochs=3")
    real = pack_module.end_epoch

    def stop_after_epoch_1(run, *args):
        diverged = real(run, *args)
        if run.run_dir == jobs[-1][1] and run.epoch == 1:
            raise KeyboardInterrupt
        return diverged

    monkeypatch.setattr(pack_module, "end_epoch", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_packed(jobs, size=0)
    monkeypatch.setattr(pack_module, "end_epoch", real)
    layout_by_timer(monkeypatch, tmp_path, "dense")
    for cfg, _ in jobs:
        cfg.resume = True
    assert train_packed(jobs, size=0) == ["finished"] * 3
    for (_, mine), (_, theirs) in zip(jobs, straight):
        a, b = (pd.read_csv(d / METRICS_FILE).drop(columns=TIMING_COLUMNS) for d in (mine, theirs))
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        a, b = (torch.load(d / CHECKPOINT_FILE, weights_only=True)["model"] for d in (mine, theirs))
        assert all(torch.equal(a[key], value) for key, value in b.items())


def test_a_sweep_over_data_packs_each_dataset_apart_whatever_the_job_order(tmp_path):
    """Jobs alternating two datasets: each pack trains on its own data (the runs are opened in job order, so the
    members of one pack do not hold the same data tensors)."""
    jobs = [
        (make_cfg(*TINY, "precision=fp32", f"loss={loss}", f"data.train_size={size}"), tmp_path / f"{loss}_{size}")
        for loss in ("ce", "expected_score")
        for size in (256, 192)
    ]
    assert train_packed(jobs, size=0) == ["finished"] * 4
    for _, run_dir in jobs:  # 90% of the images train, in batches of 64: 3 steps for 256, 2 for 192
        assert pd.read_csv(run_dir / METRICS_FILE)["step"].tolist() == ([3, 6] if "256" in run_dir.name else [2, 4])


def test_packs_hold_runs_that_differ_only_in_loss_and_seed_and_at_most_size_of_them(tmp_path):
    fp32 = Precision("fp32", "precision=fp32", "onednn")
    runs = [SimpleNamespace(cfg=cfg, epoch=0, precision=fp32) for cfg, _ in jobs_for(tmp_path, SPECS)]
    runs += [
        SimpleNamespace(cfg=make_cfg(*TINY, "precision=fp32", "optim.lr=0.01"), epoch=0, precision=fp32),
        SimpleNamespace(cfg=runs[0].cfg, epoch=1, precision=fp32),
        # resumed in the layout it recorded, another than the others': it trains apart
        SimpleNamespace(cfg=runs[0].cfg, epoch=0, precision=Precision("fp32", "recorded", "dense")),
    ]
    groups = pack_groups(runs, size=0)
    assert [[runs.index(r) for r in group] for group in groups] == [[0, 1, 2], [3], [4], [5]]
    assert [[runs.index(r) for r in group] for group in pack_groups(runs, size=2)] == [[0, 1], [2], [3], [4], [5]]


def test_each_run_records_its_provenance_once_naming_the_pack_it_trained_in(tmp_path, monkeypatch):
    written: list[Path] = []
    real_write = provenance_module.write_run_record
    monkeypatch.setattr(
        provenance_module,
        "write_run_record",
        lambda run_dir, record: (written.append(run_dir), real_write(run_dir, record)),
    )
    packed = jobs_for(tmp_path / "packed", SPECS[:2])
    assert train_packed(packed, size=0) == ["finished"] * 2
    ((cfg, _),) = jobs_for(tmp_path, SPECS[:1])
    assert train_run(cfg, tmp_path / "alone") == "finished"
    run_dirs = [run_dir for _, run_dir in packed] + [tmp_path / "alone"]
    assert written == run_dirs
    assert [json.loads((d / "run.json").read_text())["pack"] for d in run_dirs] == [2, 2, 1]


def test_a_member_that_diverges_leaves_the_pack_and_the_others_finish(tmp_path):
    runs = []
    for cfg, run_dir in jobs_for(tmp_path, SPECS):
        run_dir.mkdir(parents=True)
        runs.append(start_run(cfg, run_dir))
    assert runs[1].data is runs[0].data and runs[1].batches.padded is runs[0].batches.padded  # one copy each
    runs[1].loss_fn = lambda z, y: z.sum() * math.inf  # a loss gone to infinity
    statuses = train_pack(runs)
    assert statuses == {runs[0].run_dir: "finished", runs[1].run_dir: "diverged", runs[2].run_dir: "finished"}
    assert "loss became" in read_status(runs[1].run_dir)["message"]
    assert pd.read_csv(runs[2].run_dir / METRICS_FILE)["epoch"].tolist() == [1, 2]


def raising_after(calls: int, error: Exception):
    """A loss that computes cross-entropy `calls` times, then raises `error`."""
    count = iter(range(calls + 1))

    def loss(z, y):
        if next(count) == calls:
            raise error
        return F.cross_entropy(z, y)

    return loss


def test_a_member_whose_loss_raises_fails_alone_and_the_others_go_on_as_they_would_alone(tmp_path):
    specs = [("ce", 0), ("expected_score", 1), ("soft_label_ce", 2)]
    runs = []
    for cfg, run_dir in jobs_for(tmp_path / "packed", specs, "model.cpu_layout=dense"):
        run_dir.mkdir(parents=True)
        runs.append(start_run(cfg, run_dir))
    steps = len(runs[0].batches)
    runs[1].loss_fn = raising_after(steps + 1, ValueError("scores must be finite\nsee the table"))  # epoch 2's 2nd step
    statuses = train_pack(runs)
    assert statuses == {runs[0].run_dir: "finished", runs[1].run_dir: "failed", runs[2].run_dir: "finished"}
    message = f"run {runs[1].run_dir}: ValueError: scores must be finite see the table"
    assert read_status(runs[1].run_dir)["message"] == message
    assert pd.read_csv(runs[1].run_dir / METRICS_FILE)["epoch"].tolist() == [1]  # its first epoch stands, resumable
    assert [json.loads((run.run_dir / "run.json").read_text())["pack"] for run in runs] == [3, 3, 3]  # as it started
    for (cfg, _), run in zip(jobs_for(tmp_path / "alone", specs, "model.cpu_layout=dense"), runs):
        if run is runs[1]:
            continue
        alone = tmp_path / "alone" / run.run_dir.name
        assert train_run(cfg, alone) == "finished"
        mine, theirs = pd.read_csv(run.run_dir / METRICS_FILE), pd.read_csv(alone / METRICS_FILE)
        assert mine["epoch"].tolist() == theirs["epoch"].tolist() == [1, 2]
        for column in ("train_loss", "grad_norm", "test_nll", "lr"):
            assert mine[column].tolist() == pytest.approx(theirs[column].tolist(), rel=1e-3, abs=1e-5), column
        a, b = (torch.load(d / CHECKPOINT_FILE, weights_only=True) for d in (run.run_dir, alone))
        assert torch.equal(a["data_rng"], b["data_rng"])  # epoch 2 drew its batches once, not once and a half
        assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * steps


def test_a_loss_error_names_the_members_of_its_call_and_the_machines_errors_stay_the_packs():
    z, y = torch.randn(3, 4, 3), torch.randint(0, 3, (3, 4))
    ok = lambda z, y: F.cross_entropy(z, y)  # noqa: E731
    losses_of = member_losses([ok, raising_after(0, KeyError("k")), ok], ["a", "b", "c"], torch.device("cpu"))
    with pytest.raises(pack_module.MemberFailure) as failure:
        losses_of(z, y)
    assert failure.value.members == [1] and str(failure.value) == "KeyError: 'k'"
    for error in (torch.OutOfMemoryError("out of memory"), MemoryError(), OSError(28, "No space left on device")):
        losses_of = member_losses([ok, raising_after(0, error)], ["a", "b"], torch.device("cpu"))
        with pytest.raises(type(error)):
            losses_of(z[:2], y[:2])


def test_ctrl_c_stops_every_run_of_the_packs_as_interrupted_and_resume_finishes_them(tmp_path, monkeypatch):
    jobs = jobs_for(tmp_path, SPECS[:2]) + jobs_for(tmp_path, [("ce", 3)], "optim.lr=0.01")  # two packs

    def interrupted(runs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pack_module, "train_pack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_packed(jobs, size=0)
    assert [read_status(run_dir)["status"] for _, run_dir in jobs] == ["interrupted"] * 3
    monkeypatch.undo()
    for cfg, _ in jobs:
        cfg.resume = True
    assert train_packed(jobs, size=0) == ["finished"] * 3


def test_ctrl_c_while_the_runs_start_leaves_none_of_them_running(tmp_path, monkeypatch):
    jobs = jobs_for(tmp_path, SPECS)
    start = run_module.start_run

    def interrupted_at_the_third(cfg, run_dir):
        if run_dir == jobs[2][1]:
            raise KeyboardInterrupt
        return start(cfg, run_dir)

    monkeypatch.setattr(run_module, "start_run", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        train_packed(jobs, size=0)
    assert [read_status(run_dir)["status"] for _, run_dir in jobs] == ["interrupted"] * 3


def test_a_run_refused_before_training_fails_alone_and_the_pack_trains_the_others(tmp_path):
    jobs = jobs_for(tmp_path, SPECS[:2])
    jobs[0][1].mkdir(parents=True)
    (jobs[0][1] / "notes.txt").write_text("a user's folder")
    assert train_packed(jobs, size=0) == ["failed", "finished"]
    assert (jobs[0][1] / "notes.txt").read_text() == "a user's folder"


def test_a_model_that_cannot_pack_fails_its_runs_with_one_line(tmp_path):
    tiny = [o for o in TINY if not o.startswith("model.")]
    model = ["model=custom", "model._target_=test_pack.normed_net"]
    jobs = [(make_cfg(*tiny, *model, f"seed={seed}"), tmp_path / str(seed)) for seed in (0, 1)]
    assert train_packed(jobs, size=0) == ["failed", "failed"]
    message = read_status(jobs[0][1])["message"]
    assert "Net cannot be packed: its LayerNorm" in message and "\n" not in message


class Net(nn.Module):
    def __init__(self, num_classes: int, input_shape):
        super().__init__()
        self.flat, self.norm = nn.Flatten(), nn.LayerNorm(math.prod(input_shape))
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.head(self.norm(self.flat(x)))


def normed_net(num_classes: int, input_shape) -> nn.Module:
    return Net(num_classes, input_shape)


@pytest.mark.slow
def test_compare_through_the_packed_launcher_trains_every_run_and_reports(tmp_path):
    out = tmp_path / "cmp"
    done = lossbench(
        "compare",
        "losses=[ce,expected_score]",
        "seeds=[0,1]",
        *TINY,
        "hydra/launcher=packed",
        "hydra.launcher.size=3",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "packed 3 at a time" in done.stdout + done.stderr
    runs = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("loss="))
    assert runs == ["loss=ce,seed=0", "loss=ce,seed=1", "loss=expected_score,seed=0", "loss=expected_score,seed=1"]
    assert all(read_status(out / name)["status"] == "finished" for name in runs)
    assert (out / "summary.md").exists() and (out / "test_score.png").exists()
    summary = (out / "summary.md").read_text()  # the report says the runs shared their training time
    assert "Training: packed (3 runs), alone (1 run)." in summary  # size 3: a pack of 3, and one run alone
    assert "3 run(s) trained packed with others" in summary
    log = (out / "lossbench.log").read_text()  # the pack's log: every run's epochs
    assert all(f"{loss} seed {seed} epoch 2/2" in log for loss in ("ce", "expected_score") for seed in (0, 1))
    again = lossbench("resume", str(out), cwd=tmp_path)  # every run finished: nothing trains again
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hydra.launcher.size=-1"], "hydra.launcher.size must be >= 0 (0: all runs that can pack together), not -1"),
        (
            ["hydra.launcher.size=2.5"],
            "hydra.launcher.size must be an integer (0: all runs that can pack together), not 2.5",
        ),
    ],
)
def test_a_bad_pack_size_is_one_line_before_anything_runs(tmp_path, args, message):
    done = lossbench("compare", *TINY, "hydra/launcher=packed", *args, "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "cmp").exists()


def test_tune_refuses_the_packed_launcher(tmp_path):
    done = lossbench("tune", *TINY, "hydra/launcher=packed", "--out", str(tmp_path / "t"), cwd=tmp_path)
    assert done.returncode == 2 and "tune: hydra/launcher=packed trains a comparison's runs" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "t").exists()


def test_the_packed_launcher_composes_each_jobs_config_once(tmp_path, monkeypatch):
    """Hydra's sweeper composes every job's config to check the batch; the packed launcher, in the same process,
    trains from those configs instead of composing each again (1.2 s of 21 jobs' start-up on the 2-core EPYC)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from lossbench.launch import compare

    composed = []
    compose = ConfigLoaderImpl.load_sweep_config
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "load_sweep_config",
        lambda self, master_config, sweep_overrides: (
            composed.append(tuple(sweep_overrides)) or compose(self, master_config, sweep_overrides)
        ),
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cmp"
    assert compare(["losses=[ce,expected_score]", *TINY, "train.epochs=1", "hydra/launcher=packed"], str(out)) == 0
    # seeds sweep first (launch.comparison_sweep): the last two overrides are the seed and the loss
    assert sorted(tuple(sorted(job[-2:])) for job in composed) == [
        ("loss=ce", "seed=0"),
        ("loss=expected_score", "seed=0"),
    ]
    assert {read_status(out / f"loss={loss},seed=0")["status"] for loss in ("ce", "expected_score")} == {"finished"}


def test_a_packed_job_opens_its_run_as_a_lone_run_does(tmp_path, monkeypatch):
    """Both engines go through run.open_run: claimed, locked, a killed writer's temporary files removed, a
    finished run left as it is (its status returned), and only then started."""
    jobs = jobs_for(tmp_path, SPECS[:2])
    (cfg, done), (_, fresh) = jobs
    assert train_run(cfg, done) == "finished"
    claim(fresh, "run")  # made by a run killed before its first status
    stale = fresh / ".checkpoint.pt.a1b2c3d4.tmp"
    stale.write_bytes(b"half a checkpoint")
    import lossbench.train as train_module

    assert pack_module.open_run is train_module.open_run is run_module.open_run
    opened = []
    real = run_module.open_run
    monkeypatch.setattr(pack_module, "open_run", lambda *args: opened.append(args[1]) or real(*args))
    jobs = [*jobs_for(tmp_path, SPECS[:1], "resume=true"), jobs[1]]  # a finished run is resumed: left as it is
    assert train_packed(jobs, size=0) == ["finished", "finished"]
    assert opened == [done, fresh] and not stale.exists()
    assert read_status(done)["status"] == "finished"
