"""The verdict: which loss, decided by which rule, a person should use for their score table, and how sure that is.

Candidates are every loss (at its chosen setting) with the decision rule chosen for it on the validation split:
argmax, Bayes (argmax_k sum_i q_i S[i,k]) or calibrated Bayes, whichever has the highest mean final val score
(the simpler rule on a tie; argmax where there is no validation split). Test decides nothing but the ranking
reported. The best candidate is the one with the highest mean final test score; every other is compared with it,
paired by seed, with Holm's correction over those comparisons:
- "lower": its difference from the best is significant after the correction;
- "tied": an equivalence test (two one-sided t-tests, TOST) shows the difference lies within +-margin (Holm
  corrected too); a non-significant difference alone never makes a tie;
- "cannot tell": neither.
A winner is named only when every other candidate is lower. Otherwise the verdict names the candidates that cannot
be told from the best and how many seeds would tell the closest apart, and the advice is the simplest of them
(plain cross-entropy before a loss that needs the table, argmax before the Bayes rule). The best is set against
plain ce (cross-entropy decided by argmax) in score, accuracy and mistake severity. Only finished runs count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lossbench import advice, stats
from lossbench.losses import LOSSES
from lossbench.predictions import RULES, Predictions, example_scores, rule_metrics

REFERENCE = "ce"  # plain ce: the reference loss, decided by argmax
DEFAULT_MARGIN = 0.02  # report.margin: the largest test-score difference that counts as a tie (see docs/outputs.md)
ROLE_ORDER = {"baseline": 0, "control": 1, "score-aware": 2, "linear": 3, "diagnostic": 4}  # simplest first


def role(loss: str) -> str:
    cls = LOSSES.get(loss)
    return getattr(cls, "role", "score-aware") if cls is not None else "score-aware"


def simplicity(loss: str, rule: str) -> tuple[int, int]:
    """Sort key, simplest first: a loss that ignores the table before one that needs it, argmax before Bayes."""
    return ROLE_ORDER.get(role(loss), 2), list(RULES).index(rule)


@dataclass
class Candidate:
    label: str  # the loss and its chosen setting
    loss: str
    rule: str
    rule_source: str  # how the rule was chosen: "val" or why not
    val_means: dict[str, float]  # rule -> mean final val score over seeds
    test: pd.Series  # seed -> final test score under the rule
    acc: pd.Series  # seed -> test accuracy under the rule (NaN where not recorded)
    severity: pd.Series  # seed -> mistake severity under the rule
    auc: float  # mean over seeds of the test score's mean over the evaluations, under the rule
    ece: float
    summary: stats.Summary
    test_interval: tuple[float, float] | None  # bootstrap over test examples of the seeds' mean; None: no predictions
    vs_best: stats.Paired | None = None
    p_holm: float = math.nan
    equivalence_p: float = math.nan
    equivalence_p_holm: float = math.nan
    relation: str = ""  # best / lower / tied / cannot tell / higher / not tested

    @property
    def name(self) -> str:
        return f"{self.label} + {RULES[self.rule][0]}"


@dataclass
class Verdict:
    candidates: list[Candidate]  # best first, then by mean test score
    margin: float
    kind: str  # "winner", "group", "one seed" or "none"
    headline: str = ""
    lines: list[str] = field(default_factory=list)  # the verdict's sentences, after the headline
    advice: str = ""
    recommended: Candidate | None = None

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def _per_seed(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs:
        return pd.Series(math.nan, index=runs["seed"].to_numpy())
    return pd.Series(runs[column].to_numpy(float), index=runs["seed"].to_numpy())


def choose_rule(runs: pd.DataFrame) -> tuple[str, str, dict[str, float]]:
    """The decision rule with the highest mean final val score (the simpler on a tie), how it was chosen, and the
    val means."""
    means = {
        rule: float(np.nanmean(runs[f"final_val_{col}"]))
        if f"final_val_{col}" in runs and runs[f"final_val_{col}"].notna().any()
        else math.nan
        for rule, (_, col) in RULES.items()
    }
    known = {rule: value for rule, value in means.items() if math.isfinite(value)}
    if not known:
        return "argmax", "no validation split: argmax, the rule needing no choice", means
    best = max(known.values())
    return next(rule for rule in RULES if known.get(rule) == best), "val", means


def candidate(label: str, loss: str, runs: pd.DataFrame, predictions: dict[str, Predictions]) -> Candidate:
    """One loss at its setting (its finished runs), with the rule chosen on val."""
    rule, source, val_means = choose_rule(runs)
    column = RULES[rule][1]
    test = _per_seed(runs, f"final_test_{column}")
    if rule == "argmax":
        acc, severity = _per_seed(runs, "final_test_acc"), _per_seed(runs, "final_test_mistake_severity")
    else:
        acc, severity = pd.Series(math.nan, index=test.index), pd.Series(math.nan, index=test.index)
        for seed, run_dir in zip(runs["seed"], runs["run_dir"]):
            found = predictions.get(run_dir)
            if found is not None:
                values = rule_metrics(found.test_probs, found.test_labels, found.scores, rule, found.temperature)
                acc[seed], severity[seed] = values["acc"], values["mistake_severity"]
    auc_column = f"auc_test_{column}"
    auc = float(runs[auc_column].mean()) if auc_column in runs and runs[auc_column].notna().all() else math.nan
    ece = float(runs["final_test_ece"].mean()) if runs["final_test_ece"].notna().any() else math.nan
    return Candidate(
        label,
        loss,
        rule,
        source,
        val_means,
        test,
        acc,
        severity,
        auc,
        ece,
        stats.summarise(test.to_numpy(float)),
        test_interval(runs, rule, predictions),
    )


def test_interval(runs: pd.DataFrame, rule: str, predictions: dict[str, Predictions]) -> tuple[float, float] | None:
    """The 95% bootstrap interval over test examples of the seeds' mean test score under `rule`: the examples are
    resampled together for every seed (they share the test set). None unless every run has predictions.npz on
    the same test examples."""
    found = [predictions.get(d) for d in runs["run_dir"]]
    if not found or any(p is None for p in found):
        return None
    labels = found[0].test_labels
    if any(p.test_labels.shape != labels.shape or not np.array_equal(p.test_labels, labels) for p in found):
        return None
    if rule == "bayes_cal" and not all(math.isfinite(p.temperature) for p in found):
        return None
    per_example = np.mean(
        [example_scores(p.test_probs, p.test_labels, p.scores, rule, p.temperature)[0] for p in found], axis=0
    )
    return stats.bootstrap_interval(per_example)


def _pairs(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return both.iloc[:, 0].to_numpy(float), both.iloc[:, 1].to_numpy(float)


def compare_with_best(candidates: list[Candidate], margin: float) -> None:
    """Paired tests of every candidate against the best (difference, and equivalence within +-margin), each
    family Holm-corrected, and the relation in words."""
    best, others = candidates[0], candidates[1:]
    best.relation = "best"
    for other in others:
        a, b = _pairs(other.test, best.test)
        other.vs_best = stats.paired(a, b)
        other.equivalence_p = stats.equivalence(a, b, margin)
    for adjusted, source in (
        (stats.holm([o.vs_best.p_value for o in others]), "p_holm"),
        (stats.holm([o.equivalence_p for o in others]), "equivalence_p_holm"),
    ):
        for other, value in zip(others, adjusted):
            setattr(other, source, float(value))
    for other in others:
        if other.vs_best.n < 2:
            other.relation = "not tested"
        elif other.p_holm < stats.ALPHA:
            other.relation = "lower" if other.vs_best.diff < 0 else "higher"
        elif other.equivalence_p_holm < stats.ALPHA:
            other.relation = "tied"
        else:
            other.relation = "cannot tell"


def _fmt(value: float, digits: int = 3, sign: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else "< 0.001" if value < 0.001 else f"{value:.2g}"


def score_text(c: Candidate) -> str:
    s = c.summary
    if s.n == 0:
        return "-"
    return f"{s.mean:.3f} ± {s.ci95:.3f}" if s.n > 1 else f"{s.mean:.3f} (1 seed)"


def interval_text(c: Candidate) -> str:
    if c.test_interval is None or not math.isfinite(c.test_interval[0]):
        return "-"
    return f"{c.test_interval[0]:.3f} to {c.test_interval[1]:.3f}"


def relation_text(c: Candidate, margin: float) -> str:
    """The candidate against the best, in words and numbers."""
    if c.relation == "best":
        return "best"
    d = c.vs_best
    if d is None or c.relation == "not tested":
        return "-"  # fewer than 2 paired seeds: the verdict says so once
    numbers = f"{d.diff:+.3f} ± {d.ci95:.3f}, p_Holm {_p(c.p_holm)}"
    if c.relation == "tied":
        return f"tied within ±{margin:g} ({d.diff:+.3f}, TOST p_Holm {_p(c.equivalence_p_holm)})"
    return f"{c.relation} ({numbers})"


def accuracy_text(c: Candidate) -> str:
    values = c.acc.dropna()
    if len(values):
        return f"{values.mean():.3f}"
    return "not recorded"


def gains_against_plain(
    best: Candidate, plain: Candidate | None, runs_plain: pd.DataFrame | None, note_missing: bool = True
) -> str:
    """What the candidate gains or costs against plain ce (argmax), paired by seed."""
    if plain is None or runs_plain is None:
        return f"No {REFERENCE} runs: nothing to set the best against."
    if best.loss == REFERENCE and best.rule == "argmax" and best.label == plain.label:
        return f"The best is plain {REFERENCE} itself (decided by argmax)."
    base_score = _per_seed(runs_plain, "final_test_score")
    base_acc = _per_seed(runs_plain, "final_test_acc")
    base_severity = _per_seed(runs_plain, "final_test_mistake_severity")
    parts, missing = [], []
    for words, mine, base in (
        ("test score", best.test, base_score),
        ("accuracy", best.acc, base_acc),
        ("mistake severity", best.severity, base_severity),
    ):
        a, b = _pairs(mine, base)
        if len(a) == 0:
            missing.append(words)
            continue
        d = stats.paired(a, b)
        spread = (
            f" ± {d.ci95:.3f}, p {'< 0.001' if d.p_value < 0.001 else f'= {d.p_value:.2g}'}" if d.n > 1 else " (1 seed)"
        )
        parts.append(f"{words} {d.diff:+.3f}{spread}")
    text = f"Against plain {REFERENCE} (argmax), paired by seed: " + "; ".join(parts) + "."
    if missing and note_missing:
        why = (
            f"under the {RULES[best.rule][0]} rule it needs predictions.npz, which these runs of an older lossbench "
            "lack"
            if best.rule != "argmax"
            else "these runs of an older lossbench did not log it"
        )
        text += f" Not recorded: {' and '.join(missing)} ({why})."
    return text


def runs_of(runs: pd.DataFrame, setting: pd.Series, swept: list[str]) -> pd.DataFrame:
    """The rows of `runs` (runs or curves) that belong to a setting: its loss and its values of the swept keys."""
    mask = runs["loss"] == setting["loss"]
    for key in swept:
        mask &= runs[key].astype(str) == str(setting[key])
    return runs[mask]


def build_verdict(
    runs: pd.DataFrame,
    chosen: pd.DataFrame,
    swept: list[str],
    predictions: dict[str, Predictions],
    margin: float,
    label_of,
) -> Verdict:
    """The verdict over the chosen settings' finished runs. `label_of(setting row)` names a setting."""
    finished = runs[runs["status"] == "finished"]
    candidates, plain, plain_runs = [], None, None
    for _, setting in chosen.iterrows():
        own = runs_of(finished, setting, swept)
        own = own[own["final_test_score"].notna()]
        if own.empty:
            continue
        c = candidate(label_of(setting), setting["loss"], own, predictions)
        candidates.append(c)
        if setting["loss"] == REFERENCE:
            plain_runs = own
            plain = c if c.rule == "argmax" else candidate_with_rule(c, own)
    if not candidates:
        return Verdict([], margin, "none", "No verdict: no run has finished.")
    candidates.sort(key=lambda c: -c.summary.mean if math.isfinite(c.summary.mean) else math.inf)
    verdict = Verdict(candidates, margin, "group")
    best = candidates[0]
    if len(candidates) > 1:
        compare_with_best(candidates, margin)
    else:
        best.relation = "best"
    tested = [c for c in candidates[1:] if c.vs_best is not None and c.vs_best.n >= 2]
    top = [best] + [c for c in candidates[1:] if c.relation in ("tied", "cannot tell", "higher", "not tested")]
    verdict.recommended = min(top, key=lambda c: simplicity(c.loss, c.rule))
    gains = gains_against_plain(best, plain, plain_runs)
    if best.summary.n < 2 or (len(candidates) > 1 and not tested):
        verdict.kind = "one seed"
        interval = f", test-set interval {interval_text(best)}" if best.test_interval else ""
        verdict.headline = (
            f"Cannot tell from {'one seed' if best.summary.n < 2 else 'these seeds'}: "
            f"{best.name} has the highest test score ({_fmt(best.summary.mean)}{interval}), but "
            "without two paired seeds there is no spread to test a difference against."
        )
        verdict.lines = [
            "Run at least 3 seeds (seeds=[0,1,2]); their spread then says how many would separate the "
            "candidates. The test-set interval covers only the sampling of the test examples, not "
            "training noise.",
            gains,
        ]
        verdict.advice = (
            f"None from these runs. What the committed results support ({advice.sources()}; "
            f"`lossbench explain` gives their numbers): {advice.advice()}."
        )
        verdict.recommended = None
        return verdict
    if len(top) == 1:
        verdict.kind = "winner"
        worst_p = max((c.p_holm for c in candidates[1:]), default=math.nan)
        verdict.headline = (
            f"Best: {best.name}, test score {score_text(best)}; every other candidate scores lower "
            f"(paired over seeds, Holm-adjusted p <= {_p(worst_p)})."
        )
        verdict.lines = [gains]
        verdict.advice = f"Use {best.name}: it beats every other candidate here ({best.summary.n} seeds)."
        return verdict
    rest = [c for c in top if c is not best]
    named = "; ".join(f"{c.name} ({numbers_text(c, margin)})" for c in rest)
    verdict.headline = (
        f"Highest test score: {best.name}, {score_text(best)}; {len(rest)} other candidate"
        f"{'s' if len(rest) > 1 else ''} cannot be told from it: {named}."
    )
    undecided = [c for c in rest if c.relation != "tied" and c.vs_best is not None and c.vs_best.n >= 2]
    lines = []
    if undecided:
        alpha = stats.ALPHA / max(1, len(candidates) - 1)  # Holm's first step: the strictest
        settle = [seeds_to_settle(c, best, margin, alpha) for c in undecided]
        lines.append(
            f"Settling it would take about this many paired seeds each (80% power at this spread; this "
            f"comparison has {best.summary.n}): " + "; ".join(settle) + "."
        )
    lines.append(gains)
    verdict.lines = lines
    simplest = verdict.recommended
    if simplest is best:
        verdict.advice = (
            f"Use {best.name}: the highest mean here ({best.summary.n} seeds), and the simplest of "
            f"the {len(top)} candidates at the top."
        )
    else:
        verdict.advice = (
            f"Use {simplest.name}: it cannot be told from the best here ({best.summary.n} seeds), and "
            f"it is the simplest of the {len(top)} candidates at the top (a loss that ignores the table "
            "before one that needs it, argmax before the Bayes rule)."
        )
        if plain is not None and not (simplest.loss == REFERENCE and simplest.rule == "argmax"):
            verdict.lines.append(
                gains_against_plain(simplest, plain, plain_runs, False).replace(
                    "Against plain", f"{simplest.name} against plain", 1
                )
            )
    return verdict


def numbers_text(c: Candidate, margin: float) -> str:
    d = c.vs_best
    if d is None or d.n < 2:
        return "not tested"
    if c.relation == "tied":
        return f"tied within ±{margin:g}, {d.diff:+.3f}, TOST p_Holm {_p(c.equivalence_p_holm)}"
    return f"{d.diff:+.3f} ± {d.ci95:.3f}, p_Holm {_p(c.p_holm)}"


def seeds_to_settle(c: Candidate, best: Candidate, margin: float, alpha: float) -> str:
    """How many paired seeds would show c tied with the best (when its difference is inside the margin) or
    different from it."""
    a, b = _pairs(c.test, best.test)
    sd = float(np.std(a - b, ddof=1)) if len(a) > 1 else math.nan
    diff = c.vs_best.diff
    if abs(diff) < margin:
        n = stats.seeds_for_tie(diff, sd, margin, alpha)
        goal = f"a tie within ±{margin:g}"
    else:
        n = stats.seeds_needed(diff, sd, alpha)
        goal = "the difference"
    return f"{c.name} {n if n else f'more than {stats.MAX_SEEDS}'} (to show {goal})"


def candidate_with_rule(c: Candidate, runs: pd.DataFrame) -> Candidate:
    """The reference loss decided by argmax whatever rule val chose for it: plain ce."""
    return Candidate(
        c.label,
        c.loss,
        "argmax",
        "plain",
        c.val_means,
        _per_seed(runs, "final_test_score"),
        _per_seed(runs, "final_test_acc"),
        _per_seed(runs, "final_test_mistake_severity"),
        math.nan,
        c.ece,
        stats.summarise(runs["final_test_score"].to_numpy(float)),
        None,
    )


def markdown(verdict: Verdict) -> list[str]:
    """The Verdict section of summary.md."""
    lines = ["## Verdict", "", verdict.headline, ""]
    lines += [f"- {line}" for line in verdict.lines]
    if verdict.advice:
        lines += ["", f"**Advice:** {verdict.advice}"]
    rules = (
        "Candidates: each loss at its chosen setting, decided by the rule (argmax, Bayes, calibrated Bayes) with "
        "the highest mean final val score; ranked by final test score. Against the best: paired by seed, "
        f'Holm-corrected over the candidates; "tied" only where an equivalence test (TOST) puts the difference '
        f"within ±{verdict.margin:g} (report.margin)."
    )
    return lines + ["", rules, ""]


def compact_rows(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    """The compact table: at most 8 columns, one row per candidate, best first."""
    header = [
        "loss",
        "decision (chosen on val)",
        "test score (95% over seeds)",
        "test-set 95% (bootstrap)",
        "accuracy",
        "vs best",
        "speed: AUC test score",
        "ECE",
    ]
    rows = []
    for c in verdict.candidates:
        rows.append(
            [
                c.label,
                RULES[c.rule][0] + ("" if c.rule_source == "val" else " (no val split)"),
                score_text(c),
                interval_text(c),
                accuracy_text(c),
                relation_text(c, verdict.margin),
                _fmt(c.auc),
                _fmt(c.ece),
            ]
        )
    return header, rows


def compact_markdown(verdict: Verdict) -> list[str]:
    header, rows = compact_rows(verdict)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    no_boot = any(c.test_interval is None for c in verdict.candidates)
    notes = [
        "Accuracy is under the candidate's own decision rule"
        + (
            '; "not recorded" where a Bayes rule was chosen and the runs have no predictions.npz (made by an older '
            "lossbench)."
            if any(c.acc.isna().all() for c in verdict.candidates)
            else "."
        )
    ]
    if no_boot:
        notes.append(
            'Test-set interval "-": the runs have no predictions.npz (made by an older lossbench), so only '
            "the interval over seeds is known; it leaves out the test set's own sampling error."
        )
    return lines + [""] + notes


def console_text(verdict: Verdict) -> str:
    """The verdict and the compact table as the console shows them at the end of compare and tune."""
    import textwrap

    def wrap(text: str, indent: str = "") -> str:
        return textwrap.fill(text, 110, initial_indent=indent, subsequent_indent=" " * len(indent))

    lines = ["Verdict", "=======", wrap(verdict.headline)]
    lines += [wrap(line, "- ") for line in verdict.lines]
    if verdict.advice:
        lines += [wrap("Advice: " + verdict.advice)]
    header, rows = compact_rows(verdict)
    if rows:
        short = ["loss", "decision", "test score", "test-set 95%", "accuracy", "vs best", "AUC", "ECE"]
        table = [short] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(short))]
        lines += ["", "  ".join(h.ljust(w) for h, w in zip(short, widths)).rstrip()]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def summary_columns(verdict: Verdict) -> dict[str, dict[str, object]]:
    """Per candidate label: the verdict's columns for summary.csv."""
    columns = {}
    for c in verdict.candidates:
        d = c.vs_best
        columns[c.label] = {
            "verdict_rule": c.rule,
            "verdict_rule_source": c.rule_source,
            **{f"verdict_val_{rule}_mean": value for rule, value in c.val_means.items()},
            "verdict_test_score_mean": c.summary.mean,
            "verdict_test_score_ci95": c.summary.ci95,
            "verdict_test_score_n": c.summary.n,
            "verdict_test_set_low": c.test_interval[0] if c.test_interval else math.nan,
            "verdict_test_set_high": c.test_interval[1] if c.test_interval else math.nan,
            "verdict_acc_mean": float(c.acc.mean()) if c.acc.notna().any() else math.nan,
            "verdict_severity_mean": float(c.severity.mean()) if c.severity.notna().any() else math.nan,
            "verdict_auc_test_score_mean": c.auc,
            "vs_best_diff": d.diff if d else math.nan,
            "vs_best_diff_ci95": d.ci95 if d else math.nan,
            "vs_best_p_value": d.p_value if d else math.nan,
            "vs_best_p_holm": c.p_holm,
            "vs_best_equivalence_p": c.equivalence_p,
            "vs_best_equivalence_p_holm": c.equivalence_p_holm,
            "vs_best_pairs": d.n if d else math.nan,
            "vs_best": c.relation,
        }
    return columns
