"""The advice for a score table before any comparison on the user's own data, and the results it rests on.

`lossbench explain` gives it; a verdict that cannot tell (one seed) falls back on it; the README's recipe says the
same. Loss names come from the losses' roles (losses.ScoreLoss.role), never from this text, and every claim names
the committed results it rests on; tests/test_advice.py rebuilds those verdicts from results/ and checks each
claim and number.
"""

from __future__ import annotations

from lossbench.losses import LOSSES


def by_role(role: str) -> str:
    """The first registered loss with this role (e.g. "baseline": plain cross-entropy)."""
    return next(name for name, cls in LOSSES.items() if cls.role == role)


# (results directory, what its verdict shows), with {baseline} and {control} filled from the roles. The numbers are
# each candidate's mean final test score over seeds, its decision rule chosen on the validation split.
EVIDENCE = [
    (
        "results/offdiag4",
        "a row peaking off the diagonal: {baseline} + Bayes 1.988 cannot be told from the best, "
        "{control} + Bayes 1.988 (3 seeds), where {baseline} + argmax scores 1.758",
    ),
    (
        "results/cifar10",
        "{baseline} + Bayes 1.690 is tied within ±0.02 with the best, {control} + Bayes 1.691 (5 seeds); "
        "every loss that replaces cross-entropy scores lower",
    ),
    (
        "results/dogs20",
        "{baseline} + Bayes 1.274 cannot be told from the best, {control} + Bayes 1.302 (5 seeds, each loss tuned on "
        "dogs20)",
    ),
    ("results/cifar10_h200", "{baseline} + Bayes 1.756 is the best (3 seeds, every loss untuned)"),
]

ADVICE = (
    "train with {baseline} (or {control}) and decide with a Bayes rule, argmax_k sum_i q_i S[i,k], choosing "
    "between argmax, Bayes and calibrated Bayes on a validation split (lossbench compare does both); a loss "
    "that puts the table into training is worth it only if `lossbench compare` on your own data shows it above "
    "that"
)


def fill(text: str) -> str:
    return text.format(baseline=by_role("baseline"), control=by_role("control"))


def advice() -> str:
    """The advice sentence, loss names filled in."""
    return fill(ADVICE)


def evidence() -> str:
    """What the advice rests on, one clause per committed result."""
    return "; ".join(f"{where}: {fill(text)}" for where, text in EVIDENCE)


def sources() -> str:
    """The committed results the advice rests on, by name only (explain gives their numbers)."""
    return ", ".join(where for where, _ in EVIDENCE)
