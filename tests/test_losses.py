"""Each loss's value and logit gradient against hand formulas, and the equivalences with cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, build_loss, loss_parameters
from lossbench.scores import normalise_scores

torch.manual_seed(0)
C, B = 5, 7
S = torch.randn(C, C) + 3 * torch.eye(C)
S_HAT = normalise_scores(S)
LOGITS = 2 * torch.randn(B, C)
TARGETS = torch.randint(0, C, (B,))


def value_and_grad(name: str, scores: torch.Tensor = S, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses and d loss_i / d z_i."""
    z = LOGITS.clone().requires_grad_()
    values = build_loss(name, scores, reduction="none", **params)(z, TARGETS)
    values.sum().backward()
    return values.detach(), z.grad


Q = LOGITS.softmax(1)
ONE_HOT = F.one_hot(TARGETS, C).float()


def expected(scores: torch.Tensor) -> torch.Tensor:
    return (scores[TARGETS] * Q).sum(1)


def linear_grad(scores: torch.Tensor) -> torch.Tensor:
    """d/dz_k of sum_j s_j q_j = q_k (s_k - E)."""
    return Q * (scores[TARGETS] - expected(scores)[:, None])


def test_ce():
    value, grad = value_and_grad("ce")
    torch.testing.assert_close(value, -(Q * ONE_HOT).sum(1).log())
    torch.testing.assert_close(grad, Q - ONE_HOT)


def test_expected_score_gradient_is_probability_scaled():
    value, grad = value_and_grad("expected_score")
    torch.testing.assert_close(value, -expected(S))
    # dL/dz_k = -q_k (S[y,k] - E): scaled by q itself, the reason the linear loss is slow.
    torch.testing.assert_close(grad, -linear_grad(S))


def test_renormalised_expected_score_has_the_linear_direction_and_ce_norm():
    """The value is the linear loss's; each example's gradient points where the linear loss's does, with CE's norm,
    so it differs from CE's only in direction (the causal test of why the linear loss is slow)."""
    value, grad = value_and_grad("renormalised_expected_score")
    torch.testing.assert_close(value, -expected(S))
    direction = -linear_grad(S) / linear_grad(S).norm(dim=1, keepdim=True)
    torch.testing.assert_close(grad, direction * (Q - ONE_HOT).norm(dim=1, keepdim=True))


def test_renormalised_expected_score_revives_a_confident_mistake_and_leaves_a_flat_row_at_zero():
    """Confidently wrong (q_y about 1e-9): the linear gradient all but vanishes, the renormalised one has CE's norm;
    a row of S with no spread has no direction, so its gradient stays exactly zero (never NaN)."""
    scores = torch.tensor([[2.0, 1.0, -1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 2.0]])
    z = torch.tensor([[-10.0, 0.0, 10.0], [-10.0, 0.0, 10.0]], requires_grad=True)
    targets = torch.tensor([0, 1])
    build_loss("renormalised_expected_score", scores, reduction="sum")(z, targets).backward()
    ce_norm = (z.detach().softmax(1) - F.one_hot(targets, 3)).norm(dim=1)
    torch.testing.assert_close(z.grad[0].norm(), ce_norm[0], rtol=1e-3, atol=0)  # float32 softmax backward
    assert ce_norm[0] > 1.4 and torch.equal(z.grad[1], torch.zeros(3))


def test_log_expected_score():
    eps = 1e-7
    value, grad = value_and_grad("log_expected_score", eps=eps)
    e = expected(S_HAT)
    torch.testing.assert_close(value, -(e + eps).log())
    torch.testing.assert_close(grad, -linear_grad(S_HAT) / (e + eps)[:, None])


def test_soft_label_ce():
    tau = 0.7
    value, grad = value_and_grad("soft_label_ce", tau=tau)
    p = (S_HAT[TARGETS] / tau).softmax(1)
    torch.testing.assert_close(value, -(p * Q.log()).sum(1))
    torch.testing.assert_close(grad, Q - p)


def test_soft_labels_are_bertinettos_with_beta_one_over_tau():
    """p_j = exp(-beta d(y,j) / max d) / Z with d(y,j) = max_j S[y,j] - S[y,j] and max d the largest row span."""
    s = torch.tensor([[4.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 3.0, 6.0]])
    d = s.max(dim=1, keepdim=True).values - s
    beta = 10.0
    p = (-beta * d / 6.0).exp()
    p = p / p.sum(dim=1, keepdim=True)
    torch.testing.assert_close(LOSSES["soft_label_ce"](s, tau=1 / beta).soft_labels, p)
    # One tau means the same on a table and on that table times 7: scale-free.
    torch.testing.assert_close(LOSSES["soft_label_ce"](7 * s, tau=1 / beta).soft_labels, p)


def test_ce_expected_score():
    lam = 0.3
    value, grad = value_and_grad("ce_expected_score", lam=lam)
    cost = 1 - S_HAT
    torch.testing.assert_close(value, -(Q * ONE_HOT).sum(1).log() + lam * expected(cost))
    torch.testing.assert_close(grad, Q - ONE_HOT + lam * linear_grad(cost))


def test_power_expected_score():
    alpha, eps = 0.4, 1e-7
    value, grad = value_and_grad("power_expected_score", alpha=alpha, eps=eps)
    e = expected(S_HAT) + eps
    torch.testing.assert_close(value, (1 - e**alpha) / alpha)
    torch.testing.assert_close(grad, -(e ** (alpha - 1))[:, None] * linear_grad(S_HAT))


def test_log_expected_score_equals_ce_for_identity():
    identity = torch.eye(C)
    ce, ce_grad = value_and_grad("ce", identity)
    log, log_grad = value_and_grad("log_expected_score", identity, eps=1e-12)
    torch.testing.assert_close(log, ce)
    torch.testing.assert_close(log_grad, ce_grad)


def test_soft_label_ce_tends_to_ce_for_identity():
    identity = torch.eye(C)
    ce, ce_grad = value_and_grad("ce", identity)
    soft, soft_grad = value_and_grad("soft_label_ce", identity, tau=0.01)
    torch.testing.assert_close(soft, ce)
    torch.testing.assert_close(soft_grad, ce_grad)


def test_power_at_alpha_one_is_linear_loss_on_normalised_scores():
    power, power_grad = value_and_grad("power_expected_score", alpha=1.0, eps=0.0)
    linear, linear_grad_ = value_and_grad("expected_score", S_HAT)
    torch.testing.assert_close(power, 1 + linear)
    torch.testing.assert_close(power_grad, linear_grad_)


@pytest.mark.parametrize("name", list(LOSSES))
def test_reductions_and_float32_under_autocast(name):
    loss = LOSSES[name](S)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.Linear(C, C)(LOGITS)
        assert logits.dtype == torch.bfloat16
        mean = loss(logits, TARGETS)
    assert mean.dtype == torch.float32 and mean.ndim == 0
    per_example = LOSSES[name](S, reduction="none")(LOGITS, TARGETS)
    assert per_example.shape == (B,)
    torch.testing.assert_close(LOSSES[name](S)(LOGITS, TARGETS), per_example.mean())


def test_label_smoothing():
    eps = 0.2
    value, grad = value_and_grad("label_smoothing", eps=eps)
    target = (1 - eps) * ONE_HOT + eps / C
    torch.testing.assert_close(value, -(target * Q.log()).sum(1))
    torch.testing.assert_close(grad, Q - target)


def test_label_smoothing_at_zero_is_ce():
    ce, ce_grad = value_and_grad("ce")
    smooth, smooth_grad = value_and_grad("label_smoothing", eps=0.0)
    torch.testing.assert_close(smooth, ce)
    torch.testing.assert_close(smooth_grad, ce_grad)


def test_losses_on_normalised_scores_ignore_row_shifts_and_global_scale():
    """Ŝ is the same for S, 3 S and S plus a constant per row, so every normalising loss is too."""
    changed = 3 * S + torch.arange(C, dtype=torch.float32)[:, None]
    for name in ("log_expected_score", "soft_label_ce", "ce_expected_score", "power_expected_score"):
        torch.testing.assert_close(value_and_grad(name, changed), value_and_grad(name, S))


def test_rows_keep_their_relative_weight():
    """One global span: a row whose worst mistake costs 3 keeps 3 times the cost of a row whose worst costs 1."""
    s = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    z = torch.zeros(2, 2)
    cost = build_loss("ce_expected_score", s, reduction="none", lam=1.0)(z, torch.tensor([0, 1])) - math.log(2)
    torch.testing.assert_close(cost, torch.tensor([0.5, 0.5 + 1 / 3]))  # row 1: shifted, then 1/3 per unit


@pytest.mark.parametrize("name", ["log_expected_score", "soft_label_ce", "ce_expected_score", "power_expected_score"])
def test_constant_table_gives_no_score_signal(name):
    """An all-constant S normalises to zeros (no NaN): the score terms add nothing."""
    flat = torch.full((C, C), 2.0)
    values, grad = value_and_grad(name, flat)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()


def test_registry_parameters_and_errors():
    assert loss_parameters("soft_label_ce") == {"tau": 0.1}
    assert loss_parameters("ce_expected_score") == {"lam": 10.0}
    assert loss_parameters("power_expected_score") == {"alpha": 0.7, "eps": 1e-7}
    assert loss_parameters("label_smoothing") == {"eps": 0.1}
    with pytest.raises(LossbenchError, match="unknown loss 'nope'; known: ce, expected_score"):
        build_loss("nope", S)
    with pytest.raises(LossbenchError, match="tau must be > 0"):
        build_loss("soft_label_ce", S, tau=0)
    with pytest.raises(LossbenchError, match=r"label_smoothing: eps must be in \[0, 1\), not 1"):
        build_loss("label_smoothing", S, eps=1)
    with pytest.raises(LossbenchError, match="unknown parameter"):
        build_loss("ce", S, tau=1)
