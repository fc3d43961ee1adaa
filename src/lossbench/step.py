"""What a run computes: its model and optimiser built, its training steps and its evaluation. Shared by the
two engines, train (one run) and pack (several runs as one network)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from lossbench.config import compile_mode
from lossbench.data.batching import Batches, eval_batches
from lossbench.data.dataset import Dataset
from lossbench.errors import LossbenchError, one_line, require
from lossbench.metrics import SUM_SIZE, confusion_counts, fit_temperature, split_metrics, split_sums
from lossbench.models import build_model
from lossbench.optim import build_optimizer, build_scheduler


def build_training(cfg: DictConfig, data: Dataset, steps_per_epoch: int):
    """The model, optimiser and schedule of a run, built from their config nodes. Weights are seeded, so every
    loss starts from the same network for a given seed. A forward pass on two examples catches a network that
    does not fit the data (too deep for the image size, wrong input shape) before any training."""
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, len(data.classes), tuple(data.train_x.shape[1:]))
    probe = data.train_x[:2].float()
    try:
        with torch.no_grad():
            model.eval()(probe)
    except RuntimeError as err:
        raise LossbenchError(
            f"model ({cfg.model._target_}) cannot take inputs of shape {list(probe.shape[1:])}: {one_line(err)[:300]}"
        ) from None
    check_logits(model, probe, len(data.classes), str(cfg.model._target_))
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.schedule, optimizer, steps_per_epoch, int(cfg.train.epochs))
    return model.train(), optimizer, scheduler


def check_logits(model: torch.nn.Module, probe: torch.Tensor, classes: int, target: str) -> None:
    """What the model returns must be what training takes: a floating tensor of logits [batch, classes] that
    depends on trainable parameters (a tuple, a [B, C+1] output or a detached one passes a forward pass but trains
    wrongly or not at all). Checked in eval mode, so that no batch-norm statistic moves."""
    with torch.enable_grad():
        out = model.eval()(probe)
    what = f"model ({target}) returns"
    require(isinstance(out, torch.Tensor), f"{what} a {type(out).__name__}, not a tensor of logits [batch, {classes}]")
    require(
        tuple(out.shape) == (len(probe), classes),
        f"{what} shape {list(out.shape)} for a batch of {len(probe)}, not [{len(probe)}, {classes}] (batch, classes)",
    )
    require(out.is_floating_point(), f"{what} {out.dtype} values, not floating-point logits")
    require(
        out.requires_grad, f"{what} logits that depend on no trainable parameter (no gradient): nothing would be learnt"
    )


def compiled(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """The model as its training steps call it: torch.compile'd in train.compile's mode, or itself."""
    mode = compile_mode(cfg.train.compile)
    return torch.compile(model, mode=mode) if mode else model


def train_one_epoch(model, loss_fn, batches: Batches, optimizer, scheduler, dtype) -> torch.Tensor:
    """One pass over the training batches. Returns device-side sums [loss, correct, grad norm] over its
    len(batches) * batches.batch_size examples: nothing is read back to the host inside the loop."""
    model.train()
    sums = torch.zeros(3, device=batches.labels.device)
    for x, y in batches:
        z, loss = train_step(model, x, lambda z: loss_fn(z, y), optimizer, scheduler, dtype)  # noqa: B023 (called in this iteration)
        n = len(y)
        # d loss_i / d z_i = n * d mean-loss / d z_i.
        correct = (z.detach().argmax(1) == y).sum().float()
        sums += torch.stack([loss * n, correct, z.grad.norm(dim=1).sum() * n])
    return sums


def train_step(model, x: torch.Tensor, score, optimizer, scheduler, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: the forward pass under autocast, `score` of the float32 logits (a loss, or one per
    packed run, summed for the backward pass), backward, the optimiser's and the schedule's steps. Returns the
    logits, whose .grad holds d loss / d logits, and the detached loss."""
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(x)
    z = logits.float()
    z.retain_grad()
    loss = score(z)
    optimizer.zero_grad(set_to_none=True)
    (loss if loss.ndim == 0 else loss.sum()).backward()  # packed runs: each run's weights see only its loss
    optimizer.step()
    scheduler.step()
    return z, loss.detach()


def evaluate(
    model, data: Dataset, scores: torch.Tensor, batch_size: int, mean, std, dtype
) -> tuple[dict[str, float], torch.Tensor]:
    """The val_* and test_* metrics of the model, and the test confusion counts (rows true, on the host)."""
    return evaluate_models(model, data, scores, batch_size, mean, std, dtype)[0]


@torch.inference_mode()
def evaluate_models(
    model, data: Dataset, scores: torch.Tensor, batch_size: int, mean, std, dtype
) -> list[tuple[dict[str, float], torch.Tensor]]:
    """Per model, the val_* and test_* metrics and the test confusion counts (rows true, on the host). `model`
    maps a batch to logits [B, C], or to [M, B, C] for M models on the same batch (a pack's members, evaluated
    in one set of kernels).

    The validation logits (N_val x C per model) are kept to fit the temperature for *_score_bayes_cal; the test
    set is streamed batch by batch with that temperature, so its logits are never held. Without a validation split
    the val_* columns and test_score_bayes_cal are NaN (never fit on test). One host sync, at the end."""
    model.eval()

    def logits_of(x: torch.Tensor, y: torch.Tensor):
        for xb, yb in eval_batches(x, y, batch_size, mean, std):
            with torch.autocast(xb.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                z = model(xb).float()
            yield z.view(-1, *z.shape[-2:]), yb  # [M, B, C]

    temperature, val = None, None
    if data.val_y is not None:
        val_logits = torch.cat([z for z, _ in logits_of(data.val_x, data.val_y)], dim=1)
        temperature = fit_temperature(val_logits, data.val_y)
        val = split_sums(val_logits, data.val_y, scores, temperature)
    test, confusion = 0, 0
    for z, y in logits_of(data.test_x, data.test_y):
        test = test + split_sums(z, y, scores, temperature)
        confusion = confusion + confusion_counts(z, y)
    if val is None:
        val = torch.zeros_like(test)  # a zero count: split_metrics gives NaN
    # the one host sync (counts < 2^24: exact in float32)
    values = torch.cat([val, test, confusion.flatten(1).float()], dim=1).cpu()
    results = []
    for own, counts in zip(values, confusion):
        row = split_metrics(own[:SUM_SIZE].tolist(), "val")
        row.update(split_metrics(own[SUM_SIZE : 2 * SUM_SIZE].tolist(), "test"))
        results.append((row, own[2 * SUM_SIZE :].round().long().view_as(counts)))
    return results
