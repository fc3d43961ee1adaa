"""`lossbench explain`: gradient norms against hand formulas, warnings, the figure, and clean CLI errors."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.classes import CIFAR10_CLASSES
from lossbench.explain import build_losses, explain, format_text, gradient_norms, load, plot
from lossbench.scores import ScoreMatrix

runner = CliRunner()

FOUR_CLASS = """true\\pred,a,b,c,d
a,2,0,0,0
b,0,1,3,0
c,0,0,2,1
d,1,1,1,1
"""


def analytic_ratio(p: float, c: int, exact: float, far: float) -> float:
    """||grad expected_score|| / ||grad ce|| for S = far + (exact - far) I, q_y = p, rest r = (1-p)/(c-1) each.
    CE: q - e_y. Linear: grad_k = -q_k (S[y,k] - E), E = far + (exact - far) p."""
    r = (1 - p) / (c - 1)
    e = far + (exact - far) * p
    linear = math.sqrt((p * (exact - e)) ** 2 + (c - 1) * (r * (far - e)) ** 2)
    ce = math.sqrt((p - 1) ** 2 + (c - 1) * r**2)
    return linear / ce  # simplifies to (exact - far) * p: the linear gradient is (exact - far) p (q - e_y)


@pytest.mark.parametrize("exact, far", [(1.0, 0.0), (2.0, -1.0)])
def test_identity_linear_over_ce_matches_analytic(exact: float, far: float) -> None:
    c = 5
    matrix = far + (exact - far) * torch.eye(c)
    losses = build_losses(matrix, tau=0.5)
    qs = [0.001, 0.01, 1 / c, 0.5, 0.9, 0.99]
    norms = gradient_norms(losses, matrix, qs, "uniform")
    for i, p in enumerate(qs):
        linear, ce = norms["expected_score"][i], norms["ce"][i]
        assert linear / ce == pytest.approx(analytic_ratio(p, c, exact, far), rel=1e-4)
        assert analytic_ratio(p, c, exact, far) == pytest.approx((exact - far) * p)
        # Ŝ = I here, so log_expected_score is cross-entropy (up to its eps = 1e-7 next to q_y),
        # ce_expected_score is CE + lam (1 - q_y) with gradient (1 + lam q_y)(q - e_y), lam = 10,
        # and power_expected_score is GCE (1 - q_y^a)/a with gradient q_y^a (q - e_y), a = 0.7.
        assert norms["log_expected_score"][i] == pytest.approx(ce, rel=1e-3)
        assert norms["ce_expected_score"][i] / ce == pytest.approx(1 + 10 * p, rel=1e-4)
        assert norms["power_expected_score"][i] / ce == pytest.approx(p**0.7, rel=1e-3)


def test_off_diagonal_maximum_is_named(tmp_path) -> None:
    path = tmp_path / "four.csv"
    path.write_text(FOUR_CLASS)
    expl = explain(load(str(path), None), tau=0.5, source=str(path))
    assert len(expl.warnings) == 2
    assert "true class 'b'" in expl.warnings[0] and "'c'" in expl.warnings[0]
    assert "true class 'd'" in expl.warnings[1] and "all scores equal" in expl.warnings[1]
    text = format_text(expl)
    rewards = {line.split()[0]: line.split()[1] for line in text.splitlines() if line.startswith("  b ")}
    assert rewards == {"b": "c"}  # the linear loss answers c for true class b
    # b rewards c and d is flat: the score-driven losses miss both, cross-entropy (and its sum with a cost) does not
    assert expl.misses["expected_score"] == ["b", "d"] and expl.misses["soft_label_ce"] == ["b", "d"]
    # at lam = 10 the cost term outweighs CE on b, so ce_expected_score answers c as the table asks; on the flat row
    # d the cost is constant and CE decides
    assert expl.misses["ce"] == [] and expl.misses["label_smoothing"] == []
    assert expl.misses["ce_expected_score"] == ["b"]
    assert "On 2 row(s) of S (b, d)" in text and "only ce and label_smoothing do" in text


def test_figure_is_written(tmp_path) -> None:
    scores = ScoreMatrix(torch.eye(3), ["x", "y", "z"])
    path = tmp_path / "grad.png"
    plot(explain(scores, tau=0.5, source="test"), path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_cifar10_groups(tmp_path) -> None:
    result = runner.invoke(app, ["explain", "--scores", "cifar10_groups", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Gradient norm ||d loss / d logits||" in result.output
    for name in ("ce", "expected_score", "log_expected_score", "soft_label_ce", "ce_expected_score"):
        assert f"\n  {name} " in result.output
    assert "renormalised_expected_score" not in result.output  # a diagnostic has CE's norm by construction
    assert "Diagnosis:" in result.output and "At initialisation the linear loss's gradient is" in result.output
    assert (tmp_path / "explain_grad_norm.png").stat().st_size > 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("true\\pred,a,b\na,1,0\nb,0\n", "has 1 values, expected 2"),
        ("true\\pred,a,b\na,1,x\nb,0,1\n", "'x' is not a number"),
        ("1\n", "needs at least 2 classes"),
    ],
)
def test_cli_bad_file_is_one_line_error(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = runner.invoke(app, ["explain", "--scores", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_unknown_source_and_bad_tau(tmp_path) -> None:
    for args in (["--scores", "nope"], ["--scores", "identity", "--tau", "0"]):
        result = runner.invoke(app, ["explain", *args, "--out", str(tmp_path)])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output


def test_advice_follows_the_evidence_and_names_it():
    """The advice is the committed results' (train with the baseline, decide with a Bayes rule), names the results
    it rests on, and only then lists the score-aware losses worth comparing against it: those with half of the
    baseline's gradient at the start and on mistakes."""
    expl = explain(load("cifar10_groups", None), 0.1, "cifar10_groups")
    lines = [line.strip() for line in format_text(expl).splitlines()]
    advice = next(line for line in lines if line.startswith("Advice: "))
    assert advice.startswith("Advice: train with ce (or label_smoothing) and decide with a Bayes rule")
    for where in ("results/offdiag4", "results/cifar10", "results/dogs20"):
        assert where in advice
    worth = next(line for line in lines if line.startswith("To put this S into training"))
    assert "soft_label_ce" in worth and "ce_expected_score" in worth
    assert "label_smoothing" not in worth  # ignores S: a control
    # log_expected_score keeps ce's push on confident mistakes but only ~0.34x at initialisation.
    assert expl.states["init (q uniform)"]["log_expected_score"] < 0.5 * expl.states["init (q uniform)"]["ce"]
    assert "log_expected_score" not in worth


def test_diagnosis_names_no_loss_itself():
    """explain.diagnosis takes every loss name from the losses' roles or the registry, none from its own text."""
    import inspect

    from lossbench import explain as module
    from lossbench.losses import LOSSES

    source = inspect.getsource(module.diagnosis)
    assert not [name for name in LOSSES if f'"{name}"' in source or f"'{name}'" in source]


def test_soft_labels_on_cifar10_groups_match_the_closed_form():
    """Ŝ = (S + 1) / 3: exact 1, same group 2/3, across 0; p = softmax(Ŝ[y] / tau) at the default tau = 0.1."""
    expl = explain(load("cifar10_groups", None), 0.1, "cifar10_groups")
    cat, dog, truck = (CIFAR10_CLASSES.index(c) for c in ("cat", "dog", "truck"))
    z = 1 + 5 * math.exp(-10 / 3) + 4 * math.exp(-10)  # an animal: 5 other animals, 4 vehicles
    assert float(expl.soft_labels[cat, cat]) == pytest.approx(1 / z, rel=1e-5)
    assert float(expl.soft_labels[cat, dog]) == pytest.approx(math.exp(-10 / 3) / z, rel=1e-5)
    assert float(expl.soft_labels[cat, truck]) == pytest.approx(math.exp(-10) / z, rel=1e-5)
