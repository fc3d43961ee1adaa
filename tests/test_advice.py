"""The advice that explain gives and a verdict falls back on rests on the committed results: rebuild each named
verdict from results/ and check every claim and number it makes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lossbench import advice
from lossbench.report import build_report

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("where,text", advice.EVIDENCE)
def test_each_claim_holds_on_the_committed_results(tmp_path, where, text):
    copy = tmp_path / Path(where).name
    shutil.copytree(ROOT / where, copy, ignore=shutil.ignore_patterns("*.png", "report.html"))
    report = build_report(copy)
    verdict, summary = report.verdict, report.summary.set_index("loss")
    base, control = advice.by_role("baseline"), advice.by_role("control")
    by_loss = {c.loss: c for c in verdict.candidates}
    ce = by_loss[base]
    # the advice: the baseline decided by a Bayes rule is at the top (the best, tied, or not told from it)
    assert ce.rule in ("bayes", "bayes_cal") and ce.relation in ("best", "tied", "cannot tell")
    claim = advice.fill(text)
    # every "<loss> + <rule> <number>" in the claim is that candidate's mean test score
    words = {"argmax": "argmax", "Bayes": "bayes", "calibrated Bayes": "bayes_cal"}
    quoted = re.findall(r"(\w+) \+ (calibrated Bayes|Bayes|argmax) (\d\.\d{3})", claim)
    assert quoted
    for loss, rule, number in quoted:
        candidate = by_loss[loss]
        if words[rule] == candidate.rule:
            assert f"{candidate.summary.mean:.3f}" == number, (loss, rule)
        else:  # plain argmax, not the rule val chose: the runs' own argmax score
            assert rule == "argmax" and f"{summary.loc[loss, 'final_test_score_mean']:.3f}" == number, loss
    if "is the best" in claim:
        assert verdict.best is ce
    if "the best, " + control in claim:
        assert verdict.best.loss == control
    if "tied within" in claim:
        assert ce.relation == "tied"
    if "cannot be told from the best" in claim:
        assert ce.relation in ("cannot tell", "tied")
    if "every loss that replaces cross-entropy scores lower" in claim:
        replacing = [c for c in verdict.candidates if c.loss not in (base, control, "ce_expected_score")]
        assert replacing and all(c.relation == "lower" for c in replacing)


def test_explain_and_the_fallback_verdict_give_the_same_advice():
    text = advice.advice()
    assert text.startswith("train with ce (or label_smoothing) and decide with a Bayes rule")
    assert all(where in advice.evidence() for where, _ in advice.EVIDENCE)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # the README's recipe says the same, and names the same results
    assert "Train with `ce` (or `label_smoothing`) and decide with a Bayes rule" in readme
