"""`lossbench explain`: what a score matrix S asks of each loss, before any training.

Prints the validation warnings training would give, what each row of S rewards, a table of gradient norms
||d loss / d logits|| at three model states for every registered loss, and a short diagnosis; draws the
gradient norm against q_y. Every number comes from autograd through the shipped loss modules, so the
explanation follows the code when the code changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lossbench import advice
from lossbench.errors import require
from lossbench.losses import LOSSES, ScoreLoss, build_loss, candidate_losses, loss_parameters
from lossbench.plots import gradient_figure, save_figure
from lossbench.scores import (
    BUILTINS,
    GROUPS,
    ScoreMatrix,
    diagonal_warnings,
    load_scores,
    read_score_csv,
)

FIGURE = "explain_grad_norm.png"
SOFTWARE = "lossbench explain"  # the figure's PNG Software field: explain replaces only its own figure
Rest = Literal["uniform", "worst"]  # where the probability not on the true class goes
# (label, q_y, rest) of the three states in the table; q_y=None means 1/C, i.e. uniform q (initialisation).
STATES: list[tuple[str, float | None, Rest]] = [
    ("init (q uniform)", None, "uniform"),
    ("confidently wrong", 0.01, "worst"),
    ("half right", 0.5, "uniform"),
]
TOP_SOFT = 3  # soft-label entries shown per row: enough to see the neighbours, readable at 100 classes


@dataclass
class Explanation:
    source: str
    scores: ScoreMatrix
    tau: float
    warnings: list[str]
    soft_labels: Tensor  # (C, C): softmax(Ŝ[y,:] / tau), read from the soft_label_ce module
    states: dict[str, dict[str, float]]  # state label -> loss -> mean gradient norm over true classes
    curve_q: list[float]
    curve: dict[Rest, dict[str, list[float]]]  # rest -> loss -> gradient norm at each curve_q
    scale_error: float  # max |g(2S) - 2 g(S)| of the linear loss
    shift_error: float  # max |g(S + 5) - g(S)| of the linear loss
    misses: dict[str, list[str]]  # loss -> true classes for which it does not prefer answering the true class


def parse_classes(text: str | None) -> list[str] | None:
    """--classes: comma-separated names, or a count N for N generic names."""
    if text is None:
        return None
    if text.strip().isdigit():
        require(int(text) >= 2, f"--classes {text}: needs at least 2 classes")
        return [f"class_{i}" for i in range(int(text))]
    names = [c.strip() for c in text.split(",") if c.strip()]
    require(len(names) >= 2, f"--classes '{text}': needs at least 2 class names")
    require(len(set(names)) == len(names), f"--classes lists a class twice: {names}")
    return names


def load(source: str, classes: list[str] | None) -> ScoreMatrix:
    """S from a built-in name or a CSV file, validated (and restricted to --classes) exactly as training does."""
    if source in BUILTINS:
        own = sorted(c for members in GROUPS.get(source, {}).values() for c in members)
        # identity has no class names of its own: 10 generic ones unless --classes says otherwise.
        names = classes or own or [f"class_{i}" for i in range(10)]
        scores = load_scores(source, names, warn=False)
    else:
        require(Path(source).is_file(), f"--scores {source}: no such file, and not a built-in ({', '.join(BUILTINS)})")
        matrix, header = read_score_csv(source)
        names = classes or header or [f"class_{i}" for i in range(matrix.shape[0])]
        scores = load_scores("file", names, source, warn=False)
    require(len(scores) >= 2, f"--scores {source}: needs at least 2 classes, has {len(scores)}")
    return scores


def probabilities(matrix: Tensor, q_true: Sequence[float], rest: Rest) -> Tensor:
    """(len(q_true), C, C): [i, y] is the model's q for an example of true class y with q_y = q_true[i]."""
    c = matrix.shape[0]
    eye = torch.eye(c)
    if rest == "uniform":
        others = (1 - eye) / (c - 1)
    else:  # all of it on the class row y scores worst (the diagonal excluded)
        worst = matrix.masked_fill(eye.bool(), float("inf")).argmin(dim=1)
        others = torch.nn.functional.one_hot(worst, c).float()
    p = torch.tensor(q_true, dtype=torch.float32).view(-1, 1, 1)
    return p * eye + (1 - p) * others


def logit_gradients(loss: ScoreLoss, q: Tensor) -> Tensor:
    """d loss / d logits per example, with logits = log q; q[..., y, :] is an example of true class y."""
    c = q.shape[-1]
    logits = q.reshape(-1, c).log().requires_grad_()  # exact zeros give -inf logits, which softmax handles
    targets = torch.arange(c).repeat(logits.shape[0] // c)
    # The module averages over the batch; times B gives each row its own example's gradient.
    (loss(logits, targets) * logits.shape[0]).backward()
    return logits.grad.view(q.shape)


def build_losses(matrix: Tensor, tau: float) -> dict[str, ScoreLoss]:
    """Every candidate loss (not the diagnostics) with its default parameters, except soft_label_ce at --tau."""
    return {
        name: build_loss(name, matrix, **({"tau": tau} if name == "soft_label_ce" else {}))
        for name in candidate_losses()
    }


def gradient_norms(
    losses: dict[str, ScoreLoss], matrix: Tensor, q_true: Sequence[float], rest: Rest
) -> dict[str, list[float]]:
    """Per loss, per value of q_y: ||d loss / d logits||_2 for one example, averaged over true classes.
    All values go through the module as one batch: one backward pass per loss."""
    q = probabilities(matrix, q_true, rest)
    return {name: logit_gradients(loss, q).norm(dim=-1).mean(dim=-1).tolist() for name, loss in losses.items()}


def linear_invariance_errors(matrix: Tensor) -> tuple[float, float]:
    """Measured, for the linear loss in the half-right state: scaling S scales the gradient, row shifts do nothing."""
    q = probabilities(matrix, [0.5], "uniform")
    base = logit_gradients(build_loss("expected_score", matrix), q)
    scaled = logit_gradients(build_loss("expected_score", 2 * matrix), q)
    shifted = logit_gradients(build_loss("expected_score", matrix + 5), q)
    return float((scaled - 2 * base).abs().max()), float((shifted - base).abs().max())


def true_class_misses(losses: dict[str, ScoreLoss], scores: ScoreMatrix) -> dict[str, list[str]]:
    """Per loss, the true classes y where a confident answer y (q = 0.9) is not strictly better than the same
    confidence on y's best-scored rival: there the loss will not learn y (off-diagonal maxima, ties, flat rows)."""
    c = len(scores)
    rows = torch.arange(c)
    rival = scores.matrix.masked_fill(torch.eye(c, dtype=torch.bool), float("-inf")).argmax(dim=1)
    on_true, on_rival = torch.full((c, c), 0.1 / (c - 1)), torch.full((c, c), 0.1 / (c - 1))
    on_true[rows, rows], on_rival[rows, rival] = 0.9, 0.9
    misses = {}
    for name, loss in losses.items():
        # per_example: the module's own loss for each example, before the batch reduction
        good, bad = loss.per_example(on_true.log(), rows), loss.per_example(on_rival.log(), rows)
        misses[name] = [scores.classes[y] for y in range(c) if not good[y] < bad[y] - 1e-6 * (1 + abs(bad[y]))]
    return misses


def explain(scores: ScoreMatrix, tau: float, source: str = "") -> Explanation:
    """Compute every number the text and the figure show."""
    losses = build_losses(scores.matrix, tau)
    states = {}
    for label, q, rest in STATES:
        norms = gradient_norms(losses, scores.matrix, [1 / len(scores) if q is None else q], rest)
        states[label] = {name: values[0] for name, values in norms.items()}
    curve_q = np.geomspace(1e-3, 0.99, 60).tolist()
    curve = {rest: gradient_norms(losses, scores.matrix, curve_q, rest) for rest in ("uniform", "worst")}
    scale_error, shift_error = linear_invariance_errors(scores.matrix)
    return Explanation(
        source,
        scores,
        tau,
        diagonal_warnings(scores),
        losses["soft_label_ce"].soft_labels,
        states,
        curve_q,
        curve,
        scale_error,
        shift_error,
        true_class_misses(losses, scores),
    )


def _join(items: Sequence[str], last: str = "and") -> str:
    return ", ".join(items[:-1]) + f" {last} " + items[-1] if len(items) > 1 else "".join(items)


def _ratio(r: float) -> str:
    # two decimals, but keep one significant digit for the tiny ratios that matter most; below 1e-4 is float noise
    return f"{r:.2f}x" if r >= 0.095 else f"{r:.1g}x" if r >= 1e-4 else "0x"


def format_rewards(expl: Explanation) -> list[str]:
    """Per true class: where the linear loss puts all probability, and the soft label soft_label_ce trains on."""
    classes, matrix = expl.scores.classes, expl.scores.matrix
    answers = [
        " = ".join(classes[int(i)] for i in (row == row.max()).nonzero())
        if row.max() > row.min()
        else "(anything: no spread)"
        for row in matrix
    ]
    width = max(len(c) for c in classes + ["true class"]) + 2
    answer_width = max(len(a) for a in answers + ["linear loss answers"]) + 2
    lines = [
        f"What each row rewards (linear loss: the answer(s) maximising S[y,:]; "
        f"soft label: softmax(Ŝ[y,:]/{expl.tau:g}), top {TOP_SOFT} entries):",
        f"  {'true class':<{width}}{'linear loss answers':<{answer_width}}{'soft label on y':<17}"
        "top soft-label entries",
    ]
    for y, name in enumerate(classes):
        soft = expl.soft_labels[y]
        top = soft.topk(min(TOP_SOFT, len(classes)))
        shown = [(classes[int(i)], float(p)) for p, i in zip(top.values, top.indices) if p >= 0.005]
        entries = ", ".join(f"{c} {p:.2f}" for c, p in shown)
        lines.append(f"  {name:<{width}}{answers[y]:<{answer_width}}{float(soft[y]):<17.2f}{entries}")
    return lines


def format_gradients(expl: Explanation) -> list[str]:
    """The gradient-norm table: absolute values and ratios to cross-entropy."""
    labels = [label for label, _, _ in STATES]
    names = list(expl.misses)  # the losses explained: the candidates build_losses built
    width = max(len(name) for name in names) + 2
    lines = [
        f"Gradient norm ||d loss / d logits|| for one example, mean over true classes (ratio to "
        f"{advice.by_role('baseline')}):",
        "  states: init = q uniform; confidently wrong = q_y 0.01, rest on row y's worst-scored class; "
        "half right = q_y 0.5, rest uniform",
        f"  {'loss':<{width}}" + "".join(f"{label:<24}" for label in labels).rstrip(),
    ]
    for name in names:
        base = advice.by_role("baseline")
        cells = [f"{st[name]:#.3g} ({_ratio(st[name] / st[base])})" for st in (expl.states[s] for s in labels)]
        lines.append(f"  {name:<{width}}" + "".join(f"{cell:<24}" for cell in cells).rstrip())
    return lines


def diagnosis(expl: Explanation) -> list[str]:
    """4-7 plain sentences, each built from the computed numbers or from the committed results (advice.py): the
    losses are named by their roles, never here."""
    base, linear = advice.by_role("baseline"), advice.by_role("linear")
    names = list(expl.misses)  # the losses explained: the candidates build_losses built
    init, wrong, half = ({name: norms[name] / norms[base] for name in names} for norms in expl.states.values())
    lin_init, lin_wrong, lin_half = init[linear], wrong[linear], half[linear]
    if lin_wrong < 0.1:
        verdict = "early mistakes are almost never corrected"
    elif lin_wrong < 0.5:
        verdict = "confident mistakes are corrected slowly"
    else:
        verdict = "the scale of S makes up for it here, but only as a larger learning rate would"
    sentences = [
        f"At initialisation the linear loss's gradient is {_ratio(lin_init)} cross-entropy's, and {_ratio(lin_wrong)} "
        f"when the model is confidently wrong (q_y = 0.01): {verdict}."
    ]
    if lin_half > lin_wrong:
        sentences.append(
            f"Its push grows as the model gets the example right ({_ratio(lin_half)} at q_y = 0.5), so it sharpens "
            "what the model already knows rather than fixing what it gets wrong."
        )
    sentences.append(f"Advice: {advice.advice()}. It rests on the committed results: {advice.evidence()}.")
    # Worth comparing: at least half of the baseline's push both at the start and on confident mistakes (a loss
    # weak at the start, like the log loss on a table with generous near misses, trained behind it on CIFAR-10).
    keep = [
        n for n in names if LOSSES[n].role == "score-aware" and min(init[n], wrong[n]) >= 0.5 and not expl.misses[n]
    ]
    if keep:
        sentences.append(
            f"To put this S into training, the candidates worth comparing against that are {_join(keep)}: "
            f"{'they keep' if len(keep) > 1 else 'it keeps'} "
            f"{_join([f'{_ratio(init[n])} / {_ratio(wrong[n])}' for n in keep])} of {base}'s gradient at "
            "initialisation / when the model is confidently wrong, and prefer the true class on every row."
        )
    else:
        sentences.append(
            f"No loss that puts S into training both keeps half of {base}'s gradient and prefers the true class on "
            "every row of this S: nothing here is worth comparing against the advice above."
        )
    tolerance = 1e-5 * max(1.0, float(expl.scores.matrix.abs().max()))
    checked = expl.scale_error <= tolerance and expl.shift_error <= tolerance
    sentences.append(
        "Multiplying S by c multiplies the linear loss's gradient by c, the same as changing the learning rate, "
        "and adding a constant to a row changes nothing for that row"
        + (
            " (checked on this S)."
            if checked
            else f" (yet on this S the code deviates by {expl.scale_error:.2g} and {expl.shift_error:.2g})."
        )
    )
    missing = [n for n in names if expl.misses[n]]
    if missing:
        rows = sorted({y for n in missing for y in expl.misses[n]}, key=expl.scores.classes.index)
        shown = ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        learners = [n for n in names if not expl.misses[n]]
        sentences.append(
            f"On {len(rows)} row(s) of S ({shown}), {_join(missing)} do not prefer the true class, so they will "
            f"learn another answer or none; {'only ' + _join(learners) if learners else 'no loss'} do: fix those "
            "rows if that is not what you want."
        )
    return sentences


def format_text(expl: Explanation) -> str:
    """The whole printed explanation."""
    scores = expl.scores
    lines = [
        f"Score table {expl.source}: {len(scores)} classes, S from {float(scores.matrix.min()):g} "
        f"to {float(scores.matrix.max()):g}",
        "",
    ]
    lines += [f"warning: {m}" for m in expl.warnings] or ["Every row's maximum is on the diagonal."]
    lines += [""] + format_rewards(expl) + [""] + format_gradients(expl)
    lines += ["", "Diagnosis:"] + [f"  {s}" for s in diagnosis(expl)]
    return "\n".join(lines)


def plot(expl: Explanation, path: Path) -> None:
    """Gradient norm vs q_y per loss, log-log; written atomically. Two panels, because spreading the wrong mass
    uniformly hides what the linear loss does to a confident mistake: only the second panel shows it vanish."""
    panels = {"uniform": "rest spread uniformly over the other classes", "worst": "rest on row y's worst-scored class"}
    name = Path(expl.source).name if Path(expl.source).is_file() else expl.source  # a file's name, not its path
    title = f"Gradient norm per loss, score table {name} ({len(expl.scores)} classes)"
    save_figure(gradient_figure(expl.curve_q, expl.curve, panels, len(expl.scores), title), path, SOFTWARE)


def written_by_explain(path: Path) -> bool:
    """Whether the PNG at `path` is one that `lossbench explain` wrote (its Software field says so)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.info.get("Software") == SOFTWARE
    except Exception:  # not an image, unreadable: not ours
        return False


def main(source: str, tau: float | None, out: str, classes: str | None) -> int:
    """`lossbench explain`: print the explanation and write the figure."""
    out_dir = Path(out).expanduser()
    require(not out_dir.exists() or out_dir.is_dir(), f"--out {out}: exists and is not a directory")
    figure = out_dir / FIGURE
    require(
        not (figure.exists() or figure.is_symlink())
        or (figure.is_file() and not figure.is_symlink() and written_by_explain(figure)),
        f"--out {out}: {figure} exists and was not written by lossbench explain; choose another --out or move it away",
    )
    scores = load(source, parse_classes(classes))
    expl = explain(scores, loss_parameters("soft_label_ce")["tau"] if tau is None else tau, source)
    print(format_text(expl))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(expl, out_dir / FIGURE)
    print(f"\nwrote {out_dir / FIGURE}")
    return 0
