"""Each loss's value and logit gradient against hand formulas, and the equivalences with cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, build_loss, loss_parameters
from lossbench.scores import normalise_rows

torch.manual_seed(0)
C, B = 5, 7
S = torch.randn(C, C) + 3 * torch.eye(C)
S_HAT = normalise_rows(S)
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


def test_log_expected_score():
    eps = 1e-7
    value, grad = value_and_grad("log_expected_score", eps=eps)
    e = expected(S_HAT)
    torch.testing.assert_close(value, -(e + eps).log())
    torch.testing.assert_close(grad, -linear_grad(S_HAT) / (e + eps)[:, None])


def test_soft_label_ce():
    tau = 0.7
    value, grad = value_and_grad("soft_label_ce", tau=tau)
    p = (S[TARGETS] / tau).softmax(1)
    torch.testing.assert_close(value, -(p * Q.log()).sum(1))
    torch.testing.assert_close(grad, Q - p)


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


def test_registry_parameters_and_errors():
    assert loss_parameters("soft_label_ce") == {"tau": 0.5}
    assert set(loss_parameters("power_expected_score")) == {"alpha", "eps"}
    with pytest.raises(LossbenchError, match="unknown loss 'nope'; known: ce, expected_score"):
        build_loss("nope", S)
    with pytest.raises(LossbenchError, match="tau must be > 0"):
        build_loss("soft_label_ce", S, tau=0)
    with pytest.raises(LossbenchError, match="unknown parameter"):
        build_loss("ce", S, tau=1)
