"""A run's final predictions (predictions.npz) and the decisions taken from them.

At the end of a run, its final model's probabilities on the test set (and on the validation split, where the
decision rule is chosen), float16, with the labels, the temperature fit on the validation split, the class names
and the score table the run was trained with. From them alone, without the model or the run's config, a run can
be re-decided (argmax, Bayes, calibrated Bayes), re-scored under another table (`lossbench rescore`) and
bootstrapped over test examples (the report's test-set interval). float16 keeps three significant digits of each
probability: decisions on near-ties may differ from the float32 ones of metrics.csv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lossbench.atomic import NPZ_READ_ERRORS, savez_atomic
from lossbench.data.batching import eval_batches
from lossbench.errors import LossbenchError, one_line
from lossbench.metrics import fit_temperature

if TYPE_CHECKING:  # run imports this module
    from lossbench.run import Run

PREDICTIONS_FILE = "predictions.npz"
# decision rules: name -> (words, the metrics.csv column suffix of its score)
RULES = {
    "argmax": ("argmax", "score"),
    "bayes": ("Bayes", "score_bayes"),
    "bayes_cal": ("calibrated Bayes", "score_bayes_cal"),
}


@torch.inference_mode()
def _probabilities(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's final model's logits on (x, y) in float32, batched as evaluation batches them, and the labels."""
    model, dtype = run.model.eval(), run.precision.dtype
    logits = []
    for xb, _ in eval_batches(x, y, int(run.cfg.train.eval_batch_size), run.mean, run.std):
        with torch.autocast(xb.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits.append(model(xb).float())
    return torch.cat(logits), y


def save_predictions(run: Run) -> torch.Tensor:
    """Write run_dir/predictions.npz from the run's final model (atomically): test_probs, test_labels, and where
    the run has a validation split val_probs, val_labels and the temperature fit on it (NaN without). Returns the
    test logits (float32, on the device), from which the run's end takes what it has not evaluated."""
    data = run.data
    test_logits, test_y = _probabilities(run, data.test_x, data.test_y)
    arrays = {
        "test_probs": test_logits.softmax(-1).half().cpu().numpy(),
        "test_labels": test_y.cpu().numpy(),
        "temperature": np.float32(math.nan),
    }
    if data.val_y is not None:
        val_logits, val_y = _probabilities(run, data.val_x, data.val_y)
        arrays.update(
            val_probs=val_logits.softmax(-1).half().cpu().numpy(),
            val_labels=val_y.cpu().numpy(),
            temperature=np.float32(float(fit_temperature(val_logits, val_y))),
        )
    arrays.update(classes=np.array(run.classes), scores=run.scores.float().cpu().numpy(), epoch=np.int64(run.epoch))
    savez_atomic(run.run_dir / PREDICTIONS_FILE, arrays)
    return test_logits


@dataclass
class Predictions:
    test_probs: np.ndarray  # [N, C] float32 (stored float16)
    test_labels: np.ndarray  # [N] int
    val_probs: np.ndarray | None
    val_labels: np.ndarray | None
    temperature: float  # fit on val; NaN without a validation split
    classes: list[str]
    scores: np.ndarray  # [C, C]: the table the run is scored on
    trained_scores: np.ndarray  # [C, C]: the table the run was trained with (the same unless rescored)

    @property
    def rescored(self) -> bool:
        """Whether the run is scored on another table than the one it was trained with."""
        return self.trained_scores.shape != self.scores.shape or not np.array_equal(self.trained_scores, self.scores)


def read_predictions(run_dir: Path) -> tuple[Predictions | None, str | None]:
    """A run's predictions.npz, or (None, None) when it has none (runs of older versions), or (None, a phrase
    naming the damaged file, to which each caller adds what it leaves out)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.exists():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as f:
            scores = f["scores"].astype(np.float64)
            val = "val_probs" in f.files
            found = Predictions(
                f["test_probs"].astype(np.float32),
                f["test_labels"].astype(np.int64),
                f["val_probs"].astype(np.float32) if val else None,
                f["val_labels"].astype(np.int64) if val else None,
                float(f["temperature"]),
                [str(c) for c in f["classes"]],
                scores,
                f["trained_scores"].astype(np.float64) if "trained_scores" in f.files else scores,
            )
        c = len(found.classes)
        if found.test_probs.ndim != 2 or found.test_probs.shape[1] != c or found.scores.shape != (c, c):
            raise ValueError("shapes do not match its classes")
        if (
            len(found.test_labels) != len(found.test_probs)
            or not ((0 <= found.test_labels) & (found.test_labels < c)).all()
        ):
            raise ValueError("labels do not match its probabilities")
        return found, None
    except (*NPZ_READ_ERRORS, KeyError, LossbenchError) as err:
        return None, f"{path}: unreadable ({one_line(err)})"


def decisions(probs: np.ndarray, scores: np.ndarray, rule: str, temperature: float = math.nan) -> np.ndarray:
    """The answer per example: argmax q; the Bayes decision argmax_k sum_i q_i S[i,k]; or the Bayes decision on
    the temperature-scaled q (softmax(log q / T)). Calibrated without a temperature: None of them (ValueError)."""
    if rule == "argmax":
        return probs.argmax(-1)
    if rule == "bayes_cal":
        if not math.isfinite(temperature):
            raise ValueError("calibrated Bayes needs a temperature fit on a validation split")
        with np.errstate(divide="ignore"):
            logits = np.log(probs.astype(np.float64)) / temperature
        logits -= logits.max(-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(-1, keepdims=True)
    return (probs.astype(np.float64) @ scores).argmax(-1)


def example_scores(
    probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, rule: str, temperature: float = math.nan
) -> tuple[np.ndarray, np.ndarray]:
    """(S[y, answer] per example, the answers) under a decision rule."""
    answers = decisions(probs, scores, rule, temperature)
    return scores[labels, answers], answers


def rule_confusion(found: Predictions, rule: str) -> np.ndarray:
    """C x C test counts of (true class, answer) under a decision rule: the confusion.csv a run would have had if it
    had answered by that rule (confusion.csv itself holds the argmax decision's)."""
    answers = decisions(found.test_probs, found.scores, rule, found.temperature)
    c = len(found.classes)
    return np.bincount(found.test_labels * c + answers, minlength=c * c).reshape(c, c)


def rule_metrics(
    probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, rule: str, temperature: float = math.nan
) -> dict[str, float]:
    """score, acc and mistake_severity (mean S[y,y] - S[y,answer] over mistakes) of one decision rule."""
    if rule == "bayes_cal" and not math.isfinite(temperature):
        return {"score": math.nan, "acc": math.nan, "mistake_severity": math.nan}
    values, answers = example_scores(probs, labels, scores, rule, temperature)
    wrong = answers != labels
    severity = float((scores[labels, labels] - values)[wrong].mean()) if wrong.any() else math.nan
    return {"score": float(values.mean()), "acc": float((~wrong).mean()), "mistake_severity": severity}
