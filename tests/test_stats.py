"""The report's statistics against scipy.stats, and their edge cases (few seeds, NaN, zero variance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lossbench.stats import Paired, paired, slope, summarise, t_critical, t_two_sided_p


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 10, 30, 100, 1000])
def test_t_distribution_matches_scipy(df):
    assert t_critical(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)
    for t in (0.0, 0.3, 1.0, 2.5, 8.0, 40.0):
        assert t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-300)
    assert t_two_sided_p(-1.5, df) == t_two_sided_p(1.5, df)


def test_known_quantiles():
    assert t_critical(2) == pytest.approx(4.302652729911275)
    assert t_critical(10**6) == pytest.approx(1.959966, rel=1e-5)


def test_summary_matches_scipy():
    values = [0.71, 0.74, 0.69, 0.75]
    s = summarise(values)
    half = scipy_stats.t.ppf(0.975, 3) * scipy_stats.sem(values)
    assert (s.mean, s.n) == (pytest.approx(np.mean(values)), 4)
    assert s.sd == pytest.approx(np.std(values, ddof=1))
    assert s.ci95 == pytest.approx(half)
    low, high = scipy_stats.t.interval(0.95, 3, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (s.mean - s.ci95, s.mean + s.ci95) == (pytest.approx(low), pytest.approx(high))


def test_summary_of_few_values_and_nan():
    assert summarise([2.0, math.nan, 4.0]) == summarise([2.0, 4.0])  # a NaN (target not reached) is left out
    one = summarise([3.0, math.nan])
    assert one.mean == 3.0 and one.n == 1 and math.isnan(one.sd) and math.isnan(one.ci95)
    none = summarise([])
    assert none.n == 0 and math.isnan(none.mean)
    assert summarise([1.0, 1.0, 1.0]).ci95 == 0.0


def test_paired_matches_scipy():
    a = np.array([1.70, 1.69, 1.71, 1.72, 1.66])
    b = np.array([1.69, 1.70, 1.68, 1.70, 1.65])
    result = paired(a, b)
    reference = scipy_stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert result.n == 5 and result.diff == pytest.approx(np.mean(a - b))
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.diff - result.ci95 == pytest.approx(interval.low)
    assert result.diff + result.ci95 == pytest.approx(interval.high)


def test_paired_with_three_seeds_like_the_readme_claim():
    """t = 1.5 with df = 2 is far from significant: p = 0.27, and the interval holds 0."""
    d = 1.5 * 0.006 / math.sqrt(3) + np.array([-0.006, 0.0, 0.006])  # mean / (sd / sqrt(3)) = 1.5
    result = paired(1.7 + d, np.full(3, 1.7))
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(1.5, 2))
    assert result.p_value == pytest.approx(0.272, abs=1e-3)
    assert result.diff - result.ci95 < 0 < result.diff + result.ci95


def test_paired_edge_cases():
    assert paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == Paired(0.0, 0.0, 1.0, 3)  # identical: no difference
    constant = paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # always +1: no noise, so certain
    assert constant.diff == 1.0 and constant.ci95 == 0.0 and constant.p_value == 0.0
    single = paired([2.0, math.nan], [1.0, 5.0])  # the NaN pair is dropped: one pair left
    assert single.n == 1 and single.diff == 1.0 and math.isnan(single.ci95) and math.isnan(single.p_value)
    assert paired([], []).n == 0
    with pytest.raises(ValueError, match="one of each per pair"):
        paired([1.0, 2.0], [1.0])


def test_slope_matches_scipy_linregress():
    x = np.arange(1, 9, dtype=float)
    y = np.array([1.20, 1.31, 1.35, 1.42, 1.41, 1.47, 1.46, 1.50])
    result = slope(x, y)
    reference = scipy_stats.linregress(x, y)
    assert result.n == 8
    assert result.slope == pytest.approx(reference.slope)
    assert result.ci95 == pytest.approx(scipy_stats.t.ppf(0.975, 6) * reference.stderr)
    assert result.rising


def test_slope_flat_or_noisy_is_not_rising():
    x = np.arange(5, dtype=float)
    assert not slope(x, [1.5, 1.52, 1.49, 1.51, 1.50]).rising
    assert not slope(x, [2.0, 1.9, 1.8, 1.7, 1.6]).rising
    exact = slope(x, 0.1 * x + 1)
    assert exact.slope == pytest.approx(0.1) and exact.ci95 == pytest.approx(0.0, abs=1e-12) and exact.rising


def test_slope_edge_cases():
    two = slope([1.0, 2.0], [1.0, 3.0])
    assert two.slope == 2.0 and math.isnan(two.ci95) and not two.rising  # no degrees of freedom left
    assert math.isnan(slope([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).slope)  # constant x
    assert slope([1.0, 2.0, math.nan, 4.0], [1.0, 2.0, 5.0, 4.0]).n == 3
    with pytest.raises(ValueError):
        slope([1.0, 2.0], [1.0])


def test_holm_matches_its_definition():
    from lossbench.stats import holm

    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    adjusted = holm(p)
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), each at least the one before
    assert adjusted[4] == pytest.approx(0.02) and adjusted[0] == pytest.approx(0.03)
    assert adjusted[2] == pytest.approx(0.06) and adjusted[1] == pytest.approx(0.06)
    assert math.isnan(adjusted[3])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_equivalence_is_two_one_sided_t_tests():
    from lossbench.stats import equivalence

    a = np.array([1.701, 1.695, 1.699, 1.702, 1.697])
    b = np.array([1.700, 1.698, 1.697, 1.700, 1.699])
    d = a - b
    lower = scipy_stats.ttest_1samp(d, -0.02, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(d, 0.02, alternative="less").pvalue
    assert equivalence(a, b, 0.02) == pytest.approx(max(lower, upper))
    assert equivalence(a, b, 0.02) < 0.05  # a tie within 0.02 is shown
    # a large, noisy difference is no tie, and neither is a non-significant one with 3 seeds
    assert equivalence([1.0, 1.2, 0.8], [1.0, 1.0, 1.0], 0.02) > 0.05
    assert math.isnan(equivalence([1.0], [1.0], 0.02))


def test_bootstrap_interval_of_a_mean_covers_it_and_shrinks_with_n():
    from lossbench.stats import bootstrap_interval

    rng = np.random.default_rng(1)
    small, large = rng.choice([2.0, 1.0, -1.0], 400), rng.choice([2.0, 1.0, -1.0], 10000)
    low, high = bootstrap_interval(small)
    assert low < small.mean() < high
    wide, narrow = high - low, np.subtract(*bootstrap_interval(large)[::-1])
    assert narrow < wide / 3  # about sqrt(25) = 5 times narrower
    # the normal approximation: 1.96 standard errors each side
    assert wide / 2 == pytest.approx(1.96 * small.std(ddof=1) / math.sqrt(400), rel=0.15)
    assert bootstrap_interval(np.array([1.0, 1.0])) == (1.0, 1.0)


def test_seeds_needed_follows_the_noncentral_t():
    from lossbench.stats import seeds_for_tie, seeds_needed

    n = seeds_needed(0.03, 0.03)  # effect size 1: about 10 pairs for 80% power at 0.05
    assert 9 <= n <= 11
    assert seeds_needed(0.06, 0.03) < n < seeds_needed(0.015, 0.03)
    assert seeds_needed(0.0, 0.03) is None and seeds_needed(0.01, math.nan) is None
    tie = seeds_for_tie(0.0, 0.01, 0.02)
    assert tie is not None and tie >= 3 and seeds_for_tie(0.0, 0.005, 0.02) <= tie
    assert seeds_for_tie(0.03, 0.01, 0.02) is None  # outside the margin: no tie to show


def test_the_table_cells_give_the_interval_and_the_paired_difference_over_shared_seeds():
    from lossbench.stats import interval_text, paired_text

    assert interval_text([0.5]) == "0.500" and interval_text([0.4, 0.6]).startswith("0.500 ± ")
    assert paired_text({0: 1.0}, {1: 0.5}) == "no shared seed"
    assert paired_text({0: 1.0, 5: 2.0}, {0: 0.5}) == "+0.500"  # seed 5 has no partner
    assert paired_text({0: 1.0, 1: 1.2}, {0: 0.5, 1: 0.6}).startswith("+0.550 ± ")


def test_a_column_of_two_tables_of_runs_is_paired_by_their_seed_column_not_their_row_order():
    import pandas as pd

    from lossbench.stats import paired_column_text, paired_text

    runs = pd.DataFrame({"seed": [1, 0, 7], "acc": [0.9, 0.8, 0.1]})
    reference = pd.DataFrame({"seed": [0, 1], "acc": [0.7, 0.8]})
    assert paired_column_text(runs, reference, "acc") == paired_text({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.8})
