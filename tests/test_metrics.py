"""Per-evaluation metrics on hand-computed small cases; the temperature fit; the confusion matrix and its file."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from lossbench.metrics import (
    SUM_FIELDS,
    confusion_counts,
    fit_temperature,
    split_metrics,
    split_sums,
)
from lossbench.rundir import METRIC_COLUMNS, write_confusion

S = torch.tensor([[2.0, 1.0, -1.0], [1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])
# Four examples, q chosen by hand (no confidence on an ECE bin edge k/15):
#   y=0 q=(.70,.20,.10): right;  Bayes k0 (1.50 vs 1.00, -0.70) -> S[0,0] =  2; expected 1.50
#   y=1 q=(.62,.28,.10): answers 0, S[1,0] = 1, severity 1;  Bayes k0 -> 1;  expected 1.08
#   y=2 q=(.31,.27,.42): right, S = 2;  Bayes k0 (.47 vs .43, .26) -> S[2,0] = -1;  expected 0.26
#   y=2 q=(.52,.10,.38): answers 0, S[2,0] = -1, severity 3;  Bayes k0 -> -1;  expected 0.14
Q = torch.tensor([[0.70, 0.20, 0.10], [0.62, 0.28, 0.10], [0.31, 0.27, 0.42], [0.52, 0.10, 0.38]])
LOGITS = Q.log() + 1.5  # a constant shift: softmax(LOGITS) = Q
TARGETS = torch.tensor([0, 1, 2, 2])


def metrics(logits=LOGITS, targets=TARGETS, scores=S, temperature=None, split="test") -> dict[str, float]:
    return split_metrics(split_sums(logits, targets, scores, temperature).tolist(), split)


def test_columns_are_the_guides():
    split = [
        "nll",
        "acc",
        "top5_acc",
        "score",
        "score_bayes",
        "score_bayes_cal",
        "expected_score",
        "mistake_severity",
        "ece",
    ]
    assert METRIC_COLUMNS == [
        "epoch",
        "step",
        "elapsed_s",
        "lr",
        "train_loss",
        "train_acc",
        "grad_norm",
        *[f"val_{m}" for m in split],
        *[f"test_{m}" for m in split],
    ]


def test_hand_computed_case():
    m = metrics()
    assert m["test_nll"] == pytest.approx(-(math.log(0.70) + math.log(0.28) + math.log(0.42) + math.log(0.38)) / 4)
    assert m["test_acc"] == 0.5
    assert m["test_score"] == pytest.approx((2 + 1 + 2 - 1) / 4)
    assert m["test_score_bayes"] == pytest.approx((2 + 1 - 1 - 1) / 4)  # hedging toward class 0 costs row 2
    assert m["test_expected_score"] == pytest.approx((1.50 + 1.08 + 0.26 + 0.14) / 4)
    assert m["test_mistake_severity"] == pytest.approx((1 + 3) / 2)
    # one example per bin: |1 - .70| + |0 - .62| + |1 - .42| + |0 - .52|, over 4
    assert m["test_ece"] == pytest.approx((0.30 + 0.62 + 0.58 + 0.52) / 4)
    assert math.isnan(m["test_top5_acc"])  # C = 3 < 10
    assert math.isnan(m["test_score_bayes_cal"])  # no temperature: no validation split


def test_calibrated_bayes_decision_uses_the_temperature():
    assert metrics(temperature=torch.tensor(1.0))["test_score_bayes_cal"] == pytest.approx(0.25)  # = score_bayes
    # T -> 0 makes q one-hot on the argmax, so the Bayes decision becomes the argmax decision
    assert metrics(temperature=torch.tensor(0.01))["test_score_bayes_cal"] == pytest.approx(1.0)


def test_ece_pools_a_bin():
    """Confidences .70 and .72 share the bin (2/3, 11/15]: |(1 + 0) - (.70 + .72)| / 2, not the per-example mean."""
    q = torch.tensor([[0.70, 0.20, 0.10], [0.72, 0.18, 0.10]])
    m = metrics(q.log(), torch.tensor([0, 1]))
    assert m["test_ece"] == pytest.approx(0.42 / 2)


def test_no_mistakes_means_no_severity():
    m = metrics(LOGITS[[0, 2]], TARGETS[[0, 2]])
    assert m["test_acc"] == 1.0 and math.isnan(m["test_mistake_severity"])


def test_top5_from_ten_classes():
    logits = torch.arange(9.0, -1.0, -1.0).repeat(3, 1)  # class 0 ranked first, class 9 last
    m = metrics(logits, torch.tensor([4, 5, 0]), torch.eye(10))
    assert m["test_top5_acc"] == pytest.approx(2 / 3) and m["test_acc"] == pytest.approx(1 / 3)


def test_batches_add_up_to_the_whole():
    t = torch.tensor(0.7)
    whole = split_sums(LOGITS, TARGETS, S, t)
    parts = split_sums(LOGITS[:1], TARGETS[:1], S, t) + split_sums(LOGITS[1:], TARGETS[1:], S, t)
    torch.testing.assert_close(parts, whole, equal_nan=True)  # top-5 is NaN (3 classes) in both


@pytest.mark.parametrize("classes", [3, 12])  # 12: top-5 is computed
def test_models_stacked_in_leading_dimensions_are_each_scored_as_alone(classes):
    """A pack's members are scored in one call on logits [..., N, C]: each model's sums, temperature and
    confusion are those it gets alone."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 40, classes, generator=generator) * torch.tensor([0.5, 2.0, 6.0])[:, None, None]
    targets = torch.randint(0, classes, (40,), generator=generator)
    scores = torch.randn(classes, classes, generator=generator)
    temperature = fit_temperature(logits, targets)
    assert temperature.shape == (2, 3)
    sums, counts = split_sums(logits, targets, scores, temperature), confusion_counts(logits, targets)
    assert sums.shape[:2] == (2, 3) and counts.shape == (2, 3, classes, classes)
    for i in range(2):
        for j in range(3):
            alone = fit_temperature(logits[i, j], targets)
            assert alone.shape == () and float(alone) == pytest.approx(float(temperature[i, j]), rel=1e-5)
            torch.testing.assert_close(sums[i, j], split_sums(logits[i, j], targets, scores, alone), equal_nan=True)
            assert torch.equal(counts[i, j], confusion_counts(logits[i, j], targets))


def test_a_lone_models_sums_are_reduced_as_the_plain_formulas_reduce_them():
    """bf16 logits tie often, so rounding another way moves the Bayes decision (it moved test_score_bayes_cal by
    0.012 on the demo): a lone model's NLL and Bayes scores are exactly the plain one-model computations."""
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(1024, 10, generator=generator) * 4).bfloat16().float()  # one evaluation batch
    targets = torch.randint(0, 10, (1024,), generator=generator)
    scores = torch.randint(-1, 3, (10, 10), generator=generator).float()
    t = fit_temperature(logits, targets)
    sums = dict(zip(SUM_FIELDS, split_sums(logits, targets, scores, t).tolist()))
    rows = scores[targets]
    assert sums["nll"] == F.cross_entropy(logits, targets, reduction="sum").item()
    assert sums["score_bayes"] == rows.gather(1, (logits.softmax(1) @ scores).argmax(1)[:, None]).sum().item()
    calibrated = ((logits / t).softmax(1) @ scores).argmax(1)
    assert sums["score_bayes_cal"] == rows.gather(1, calibrated[:, None]).sum().item()


def test_empty_split_is_all_nan_with_val_names():
    m = split_metrics(torch.zeros_like(split_sums(LOGITS, TARGETS, S, None)).tolist(), "val")
    assert list(m) == [c for c in METRIC_COLUMNS if c.startswith("val_")]
    assert all(math.isnan(v) for v in m.values())


def _scipy_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits.double() / math.exp(log_t), targets))

    return math.exp(
        minimize_scalar(nll, bounds=(-math.log(100), math.log(100)), method="bounded", options={"xatol": 1e-9}).x
    )


def _nll(logits: torch.Tensor, targets: torch.Tensor, t: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / t, targets))


def test_temperature_minimises_the_nll():
    generator = torch.Generator().manual_seed(0)
    base = 2 * torch.randn(4000, 5, generator=generator)
    labels = torch.multinomial(base.softmax(dim=1), 1, generator=generator).squeeze(1)  # calibrated at T = 1
    overconfident = 3 * base
    t = float(fit_temperature(overconfident, labels))
    best = _scipy_temperature(overconfident, labels)
    # float32 NLL is flat to ~1e-7 near its minimum, which leaves T uncertain at ~1e-4: judge by the NLL itself
    assert _nll(overconfident, labels, t) <= _nll(overconfident, labels, best) + 1e-6
    assert t == pytest.approx(best, rel=1e-3)
    assert t == pytest.approx(3.0, rel=0.1)  # recovers the factor the logits were inflated by
    assert float(fit_temperature(overconfident, labels)) == t  # deterministic
    halved = float(fit_temperature(0.5 * base, labels))
    assert halved == pytest.approx(0.5 * float(fit_temperature(base, labels)), rel=1e-3)


def test_temperature_stays_in_range_for_separable_data():
    """Perfectly separated logits want T -> 0: the fit returns a finite T in range, its NLL zero to float32
    precision."""
    logits, targets = 5 * torch.eye(4), torch.arange(4)
    t = float(fit_temperature(logits, targets))
    assert 0.01 <= t < 1 and float(torch.nn.functional.cross_entropy(logits / t, targets)) < 1e-6


def test_confusion_counts_and_file(tmp_path):
    counts = confusion_counts(LOGITS, TARGETS)
    assert counts.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 1]]  # rows true, columns argmax
    write_confusion(tmp_path / "confusion.csv", counts.tolist(), ["cat", "dog", "car"])
    assert (tmp_path / "confusion.csv").read_text().splitlines() == [
        "true\\pred,cat,dog,car",
        "cat,1,0,0",
        "dog,1,0,0",
        "car,1,0,1",
    ]
