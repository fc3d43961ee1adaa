"""Classification losses that take a score matrix S (row = true class, column = predicted class).

Public API: `LOSSES[name](scores, **params)` is an nn.Module called as `loss(logits, targets)`; it returns the
batch mean, or one value per example with `reduction="none"`. The math runs in float32 even under autocast.
A loss's defaults are its signature's (cited where it is defined), so `LOSSES[name](scores)` in plain Python
trains what `loss=name` does; its config file lists each parameter for the command line, at the same value.

Notation: q = softmax(z), y the true class, Ŝ = `normalise_scores(S)`: each row shifted by its minimum (the
expected-score objective is unchanged by a per-row constant) and divided by ONE global span, so Ŝ lies in [0, 1]
and the relative weight of the rows stays the user's. Every loss that normalises uses this Ŝ; `expected_score`
is the user's own objective on raw S (its gradient is the global span times the gradient on Ŝ).

References:
- Decision: with any of these losses, the expected score is maximised at test time by the Bayes / conditional-risk
  decision argmax_k sum_i q_i S[i,k] (Karthik et al. 2021, "No cost likelihood manipulation at test time for
  making better mistakes in deep networks", ICLR), reported as `test_score_bayes`.
- The linear loss: with one-hot targets the Wasserstein loss of Frogner et al. 2015 ("Learning with a Wasserstein
  loss", NeurIPS) is exactly the linear expected cost sum_j M[y,j] q_j, i.e. `expected_score` with M = -S.
- Bounded losses underfit: MAE (the linear loss on S = identity) trains slowly on many classes because its
  gradient is scaled by q_y (Zhang & Sabuncu 2018, "Generalized cross entropy loss for training deep neural
  networks with noisy labels", NeurIPS; Wang et al. 2019, "IMAE for noise-robust learning: mean absolute error
  does not treat examples equally and gradient magnitude's variance matters", arXiv:1903.12141).
- Active + passive: adding CE to a bounded term keeps CE's push while the bounded term shapes the mistakes
  (Ma et al. 2020, "Normalized loss functions for deep learning with noisy labels", ICML); `ce_expected_score`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from lossbench.components import build
from lossbench.errors import require
from lossbench.scores import normalise_scores

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)
SERIES_ALPHA = 1e-3  # below it, (1 - E^alpha) / alpha is its series in alpha: float32 would give 0/0


def check_eps(eps: float, loss: str, zero: bool = False) -> None:
    """The eps that keeps log and power away from 0: non-zero in float32 (or exactly 0 where `zero` allows it)
    and below 1 (a larger one flattens the loss until it teaches nothing)."""
    if zero and isinstance(eps, (int, float)) and eps == 0:
        return
    require(
        isinstance(eps, (int, float)) and FLOAT32_TINY <= eps < 1,
        f"{loss}: eps must be {'0 or ' if zero else ''}in [{FLOAT32_TINY:.3g}, 1) (non-zero in float32; a larger "
        f"eps flattens the loss), not {eps}",
    )


class ScoreLoss(nn.Module):
    """Base class: holds S (and Ŝ) as buffers, casts logits to float32, applies the reduction.

    `role` says what a loss is for, so that explain and the report's advice never name losses themselves:
    "baseline" (plain cross-entropy, ignores S), "control" (changes the targets without S), "linear" (the user's
    own expected-score objective), "diagnostic" (an experiment on the linear loss, not a candidate to train with) or
    "score-aware" (puts S into training). Custom losses are "score-aware"."""

    role = "score-aware"

    def __init__(self, scores: Tensor, reduction: str = "mean"):
        super().__init__()
        require(reduction in ("mean", "sum", "none"), f"reduction must be mean, sum or none, not '{reduction}'")
        scores = torch.as_tensor(scores, dtype=torch.float32)
        self.register_buffer("scores", scores)
        self.register_buffer("scores_normalised", normalise_scores(scores))
        self.reduction = reduction

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            values = self.per_example(logits.float(), targets)
        if self.reduction == "mean":
            return values.mean()
        if self.reduction == "sum":
            return values.sum()
        return values


class CrossEntropy(ScoreLoss):
    """-log q_y; ignores S (the baseline)."""

    role = "baseline"

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none")


class ExpectedScore(ScoreLoss):
    """-sum_j S[y,j] q_j on raw S: the user's linear expected-score loss (MAE when S = identity; with one-hot
    targets the Wasserstein loss of Frogner et al. 2015). Its logit gradient -q_k (S[y,k] - E) is scaled by q
    itself, which is why it underfits (Zhang & Sabuncu 2018; Wang et al. IMAE)."""

    role = "linear"

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        return -(self.scores[targets] * logits.softmax(dim=1)).sum(dim=1)


class RenormalisedExpectedScore(ExpectedScore):
    """The linear loss -sum_j S[y,j] q_j with each example's logit gradient rescaled to cross-entropy's norm: the
    linear loss's direction, CE's magnitude, example by example. A diagnostic for why the linear loss is slow: if
    this trains like CE, the probability factor in the linear gradient's size is the cause; if it stays slow, the
    direction is. (AdamW answers the coarser question: it undoes one overall scale, not each example's.) The value
    is the linear loss's; the rescaling factor is held constant in the backward pass, so this is not the gradient
    of any loss. An example whose linear gradient is exactly zero (a constant row of S) stays at zero."""

    role = "diagnostic"

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        q, row = logits.softmax(dim=1), self.scores[targets]
        expected = (row * q).sum(dim=1)
        linear = -expected  # ExpectedScore's value; q is computed once for it and for the factor below
        with torch.no_grad():
            linear_grad = -q * (row - expected[:, None])  # d linear / d logits
            ce_grad = q - F.one_hot(targets, q.shape[1]).to(q.dtype)  # d CE / d logits
            # <= sqrt(2) / tiny < float32 max: finite, so a zero linear gradient times it stays zero
            factor = ce_grad.norm(dim=1) / linear_grad.norm(dim=1).clamp_min(FLOAT32_TINY)
        return linear.detach() + factor * (linear - linear.detach())


class LogExpectedScore(ScoreLoss):
    """-log(sum_j Ŝ[y,j] q_j + eps): the log restores CE's gradient scale; equals CE when S = identity. A
    log-utility, not Bayes-consistent for the score: decide with the Bayes rule at test time."""

    def __init__(self, scores: Tensor, eps: float = 1e-7, reduction: str = "mean"):
        super().__init__(scores, reduction)
        check_eps(eps, "log_expected_score")
        self.eps = eps

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        expected = (self.scores_normalised[targets] * logits.softmax(dim=1)).sum(dim=1)
        return -(expected + self.eps).log()


class SoftLabelCE(ScoreLoss):
    """-sum_j p_j log q_j with p = softmax(Ŝ[y,:] / tau): soft labels (Bertinetto et al. 2020, "Making better
    mistakes", CVPR; SORD). Bertinetto's p_j = softmax(-beta d(y,j) / max d) with d the hierarchy distance; here
    d(y,j) = max_j S[y,j] - S[y,j] and max d the global span, so beta = 1/tau (softmax ignores the row shift).
    Default tau = 0.1, i.e. beta = 10, inside the range they studied (beta 4 to 30)."""

    def __init__(self, scores: Tensor, tau: float = 0.1, reduction: str = "mean"):
        super().__init__(scores, reduction)
        require(
            isinstance(tau, (int, float)) and 0 < tau < math.inf,
            f"soft_label_ce: tau must be > 0 and finite, not {tau}",
        )
        self.tau = tau
        soft = (self.scores_normalised / tau).softmax(dim=1)
        if not bool(torch.isfinite(soft).all()):
            # Ŝ/tau overflows for a tiny tau, where the soft label's limit is the one-hot vector of the row's best
            # class(es): in float64 and with each row shifted to its maximum, the logits are <= 0 and finite or -inf.
            shifted = self.scores_normalised.double() - self.scores_normalised.double().max(dim=1, keepdim=True).values
            soft = (shifted / tau).softmax(dim=1).float()
        self.register_buffer("soft_labels", soft)

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        return -(self.soft_labels[targets] * logits.log_softmax(dim=1)).sum(dim=1)


class CEExpectedScore(ScoreLoss):
    """CE + lam * sum_j (1 - Ŝ[y,j]) q_j: cross-entropy plus the expected cost (Galdran et al. 2020, "Cost-sensitive
    regularization for diabetic retinopathy grading", MICCAI; an active + passive pair in the sense of Ma et al.
    2020). Default lam = 10, the default of Galdran et al.'s CostSensitiveRegularizedLoss, whose cost matrix is
    likewise divided by its global maximum, so that the cost term has the same scale as here."""

    def __init__(self, scores: Tensor, lam: float = 10.0, reduction: str = "mean"):
        super().__init__(scores, reduction)
        require(
            isinstance(lam, (int, float)) and 0 <= lam <= FLOAT32_MAX,
            f"ce_expected_score: lam must be in [0, {FLOAT32_MAX:.3g}] (finite in float32), not {lam}",
        )
        self.lam = lam

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        cost = ((1 - self.scores_normalised[targets]) * logits.softmax(dim=1)).sum(dim=1)
        return F.cross_entropy(logits, targets, reduction="none") + self.lam * cost


class PowerExpectedScore(ScoreLoss):
    """(1 - E^alpha) / alpha with E = sum_j Ŝ[y,j] q_j: log loss as alpha -> 0, linear at alpha = 1. On S = identity
    it is the generalized cross-entropy L_q of Zhang & Sabuncu 2018 with q = alpha; default alpha = 0.7, the value
    they recommend and use throughout."""

    def __init__(self, scores: Tensor, alpha: float = 0.7, eps: float = 1e-7, reduction: str = "mean"):
        super().__init__(scores, reduction)
        require(0 < alpha <= 1, f"power_expected_score: alpha must be in (0, 1], not {alpha}")
        check_eps(eps, "power_expected_score", zero=True)  # E^alpha is defined at E = 0
        self.alpha = alpha
        self.eps = eps

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        expected = (self.scores_normalised[targets] * logits.softmax(dim=1)).sum(dim=1)
        if self.alpha < SERIES_ALPHA:  # -(e^(alpha t) - 1) / alpha with t = log E, to third order: -> -log E
            t = (expected + self.eps).log()
            return -t * (1 + self.alpha * t / 2 + (self.alpha * t) ** 2 / 6)
        return (1 - (expected + self.eps).pow(self.alpha)) / self.alpha


class LabelSmoothing(ScoreLoss):
    """CE against (1 - eps) onehot(y) + eps / C; ignores S. The control for soft_label_ce: does a soft-label gain
    come from the table, or from smoothing alone? Default eps = 0.1 (Szegedy et al. 2016, "Rethinking the
    Inception architecture for computer vision", CVPR)."""

    role = "control"

    def __init__(self, scores: Tensor, eps: float = 0.1, reduction: str = "mean"):
        super().__init__(scores, reduction)
        require(0 <= eps < 1, f"label_smoothing: eps must be in [0, 1), not {eps}")
        self.eps = eps

    def per_example(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.eps)


LOSSES: dict[str, type[ScoreLoss]] = {
    "ce": CrossEntropy,
    "expected_score": ExpectedScore,
    "renormalised_expected_score": RenormalisedExpectedScore,
    "log_expected_score": LogExpectedScore,
    "soft_label_ce": SoftLabelCE,
    "ce_expected_score": CEExpectedScore,
    "power_expected_score": PowerExpectedScore,
    "label_smoothing": LabelSmoothing,
}


def candidate_losses() -> list[str]:
    """The registered losses one would train with, in order: all but the diagnostics (the default `losses`)."""
    return [name for name, cls in LOSSES.items() if cls.role != "diagnostic"]


def loss_parameters(name: str) -> dict[str, Any]:
    """The tunable parameters of a registered loss and their defaults."""
    signature = inspect.signature(LOSSES[name].__init__)
    skip = {"self", "scores", "reduction"}
    return {p.name: p.default for p in signature.parameters.values() if p.name not in skip}


def build_loss(name: str, scores: Tensor, reduction: str = "mean", **params: Any) -> ScoreLoss:
    """LOSSES[name](scores, **params) with clear errors for unknown names or parameters."""
    require(name in LOSSES, f"unknown loss '{name}'; known: {', '.join(LOSSES)}")
    unknown = set(params) - set(loss_parameters(name))
    require(not unknown, f"loss {name}: unknown parameter(s) {sorted(unknown)}; it takes {list(loss_parameters(name))}")
    return LOSSES[name](scores, reduction=reduction, **params)


def build_loss_from_config(cfg: DictConfig, scores: Tensor) -> ScoreLoss:
    """The loss of a `loss` config node: its `_target_` class with S; `name` is the run's label, not a parameter."""
    loss = build(cfg, "loss", drop=("name",), scores=scores)
    require(
        isinstance(loss, nn.Module), f"loss._target_={cfg._target_} built a {type(loss).__name__}, not an nn.Module"
    )
    return loss
