"""The verdict and the report around it, from hand-made run directories with known numbers: the decision rule
chosen on val, the best by test score, Holm-corrected tests against it, ties only from the equivalence test,
the fallback for one seed, the compact table, summary.csv's p-values, report.html and the console text."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from test_report import fake_run

from lossbench.report import build_report
from lossbench.stats import holm

FINAL = {
    "val_score": 1.0,
    "val_score_bayes": 1.0,
    "val_score_bayes_cal": 1.0,
    "test_score_bayes": 1.0,
    "test_score_bayes_cal": 1.0,
    "test_mistake_severity": 1.0,
}


def run_with(root, loss, seed, test=None, val=None, acc=0.7):
    """A two-epoch run whose final row has these test and val scores (rule -> value)."""
    columns = {}
    for split, values in (("test", test or {}), ("val", val or {})):
        for rule, value in values.items():
            column = f"{split}_{'score' if rule == 'argmax' else 'score_' + rule}"
            columns[column] = [value - 0.1, value]
    return fake_run(root, f"{loss}{seed}", loss, seed, [acc - 0.1, acc], columns=columns)


def test_rule_is_chosen_on_val_and_the_best_is_ranked_on_test(tmp_path):
    noise = [0.004, -0.003, 0.001, 0.0, -0.002]
    for seed, e in enumerate(noise):
        # ce: Bayes wins on val (and on test); argmax would be far lower on test
        run_with(
            tmp_path,
            "ce",
            seed,
            test={"argmax": 1.70 + e, "bayes": 1.98 + e, "bayes_cal": 1.97 + e},
            val={"argmax": 1.7, "bayes": 1.9, "bayes_cal": 1.8},
        )
        # soft_label_ce: argmax best on val although Bayes is higher on test: test must not choose
        run_with(
            tmp_path,
            "soft_label_ce",
            seed,
            test={"argmax": 1.90 + 2 * e, "bayes": 2.5, "bayes_cal": 2.5},
            val={"argmax": 1.95, "bayes": 1.9, "bayes_cal": 1.9},
        )
    report = build_report(tmp_path)
    verdict = report.verdict
    by_loss = {c.loss: c for c in verdict.candidates}
    assert by_loss["ce"].rule == "bayes" and by_loss["soft_label_ce"].rule == "argmax"
    assert verdict.best.loss == "ce" and verdict.kind == "winner"
    assert by_loss["soft_label_ce"].relation == "lower"
    assert verdict.headline.startswith("Best: ce + Bayes")
    assert verdict.advice.startswith("Use ce + Bayes")
    # the plain-ce comparison: Bayes lifts ce by 0.28 over argmax, paired by seed
    assert "Against plain ce (argmax), paired by seed: test score +0.280" in " ".join(verdict.lines)


def test_a_non_significant_difference_is_not_a_tie_and_no_winner_is_named(tmp_path):
    diffs = [0.05, -0.04, 0.03]  # noisy: no difference shown, and far too wide for a tie within 0.02
    for seed, d in enumerate(diffs):
        run_with(tmp_path, "ce", seed, test={"argmax": 1.7}, val={"argmax": 1.7})
        run_with(tmp_path, "label_smoothing", seed, test={"argmax": 1.7 + d}, val={"argmax": 1.7})
    verdict = build_report(tmp_path).verdict
    other = next(c for c in verdict.candidates if c.relation != "best")
    assert other.relation == "cannot tell" and verdict.kind == "group"
    assert "cannot be told from it" in verdict.headline
    assert "Settling it would take about" in verdict.lines[0]
    # the advice is the simplest candidate at the top: plain ce before a loss that changes the targets
    assert verdict.recommended.loss == "ce" and verdict.advice.startswith("Use ce + argmax")


def test_a_tie_comes_from_the_equivalence_test(tmp_path):
    for seed, d in enumerate([0.001, -0.001, 0.0005, 0.0, -0.0005]):
        run_with(tmp_path, "ce", seed, test={"argmax": 1.70 + d / 3}, val={"argmax": 1.7})
        run_with(tmp_path, "ce_expected_score", seed, test={"argmax": 1.70 + d}, val={"argmax": 1.7})
    report = build_report(tmp_path, margin=0.02)
    other = next(c for c in report.verdict.candidates if c.relation != "best")
    assert other.relation == "tied" and other.equivalence_p_holm < 0.05
    assert "tied within ±0.02" in report.markdown
    # a margin too small for this spread: no tie any more
    narrow = build_report(tmp_path, margin=0.0001).verdict
    assert next(c for c in narrow.candidates if c.relation != "best").relation == "cannot tell"


def test_one_seed_names_no_winner_and_says_how_to_get_one(tmp_path):
    run_with(tmp_path, "ce", 0, test={"argmax": 1.6}, val={"argmax": 1.6})
    run_with(tmp_path, "expected_score", 0, test={"argmax": 1.2}, val={"argmax": 1.2})
    verdict = build_report(tmp_path).verdict
    assert verdict.kind == "one seed" and verdict.recommended is None
    assert verdict.headline.startswith("Cannot tell from one seed")
    assert "Run at least 3 seeds" in verdict.lines[0]
    assert "results/offdiag4" in verdict.advice  # the fallback names what it rests on


def test_holm_over_the_comparisons_against_ce_and_the_best_in_summary_csv(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(4):
        base = 1.6 + rng.normal(0, 0.01)
        run_with(tmp_path, "ce", seed, test={"argmax": base}, val={"argmax": 1.6}, acc=0.7)
        for k, loss in enumerate(("expected_score", "soft_label_ce", "ce_expected_score")):
            run_with(
                tmp_path,
                loss,
                seed,
                test={"argmax": base - 0.02 * k + rng.normal(0, 0.02)},
                val={"argmax": 1.6},
                acc=0.7 - 0.01 * k,
            )
    build_report(tmp_path)
    table = pd.read_csv(tmp_path / "summary.csv")
    raw = [c for c in table.columns if c.endswith("_p_value") and not c.startswith("vs_best")]
    values = table[raw].to_numpy(float).ravel()
    adjusted = table[[c.replace("_p_value", "_p_holm") for c in raw]].to_numpy(float).ravel()
    keep = ~np.isnan(values)
    assert keep.sum() > 10  # many tests against ce: one family
    np.testing.assert_allclose(adjusted[keep], holm(values[keep]))
    assert {
        "vs_best_p_value",
        "vs_best_p_holm",
        "vs_best_equivalence_p",
        "vs_best_equivalence_p_holm",
        "verdict_rule",
        "final_test_score_equivalence_p_holm",
    } <= set(table.columns)
    best = table[table["vs_best"] == "best"]
    assert len(best) == 1


def test_summary_md_opens_with_the_verdict_and_a_compact_table(tmp_path):
    for seed in range(3):
        for loss, value in (("ce", 1.6), ("expected_score", 1.2), ("soft_label_ce", 1.55)):
            run_with(tmp_path, loss, seed, test={"argmax": value + 0.001 * seed}, val={"argmax": value})
    report = build_report(tmp_path)
    lines = report.markdown.splitlines()
    assert lines[0] == "# Summary" and lines[2] == "## Verdict"
    headings = [li for li in lines if li.startswith("## ")]
    assert headings[:3] == ["## Verdict", "## At a glance", "## Details"]
    glance = report.markdown.split("## At a glance")[1].split("## Details")[0]
    header = next(li for li in glance.splitlines() if li.startswith("| loss |"))
    assert len(header.strip("|").split("|")) <= 8
    assert "(n=1)" not in glance
    assert 'Test-set interval "-"' in glance  # no predictions.npz: said so
    # the console: the verdict first, then the compact table
    console = report.console.splitlines()
    assert console[0] == "Verdict" and any(li.startswith("loss ") for li in console)
    assert console.index(next(li for li in console if li.startswith("loss "))) > 3


def test_report_html_is_self_contained_and_readable_on_a_narrow_screen(tmp_path):
    for seed in range(2):
        for loss, value in (("ce", 1.6), ("expected_score", 1.2)):
            run_with(tmp_path, loss, seed, test={"argmax": value}, val={"argmax": value})
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta name="viewport" content="width=device-width' in page
    assert 'id="verdict"' in page and 'id="glance"' in page and "<details" in page
    # nothing is fetched: no URL in any src, href, url() or @import; every image is a data URI
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "url(" not in page and "@import" not in page and "<script" not in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert len(images) == len([p for p in tmp_path.glob("*.png")])
    # wide tables scroll in their own box; figures shrink to the screen
    assert page.count('<div class="scroll"><table') >= 2 and "max-width:100%" in page
    assert '<table class="cards">' in page and 'data-label="vs best"' in page  # rows become cards when narrow
    assert page.index('id="verdict"') < page.index('id="glance"') < page.index("<figure>")
