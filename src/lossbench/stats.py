"""Summary statistics for the report, on scipy.stats: mean with a 95% t-interval, paired t-tests against a
baseline with Holm's correction, paired equivalence tests (TOST), a least-squares slope with its 95% interval
("is the score still rising?"), a bootstrap interval over test examples, and the seeds a difference would need.

Seeds are few (often 3), so every interval uses Student's t with the right degrees of freedom, and standard
deviations are sample ones (ddof=1). NaN values (a run that never reached a target, a diverged run) are left out
and `n` says how many values remain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as scipy_stats

if TYPE_CHECKING:  # only for the annotation: the statistics need no pandas
    import pandas as pd

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
BOOTSTRAP_RESAMPLES = 2000
POWER = 0.8  # seeds_needed: the chance of detecting the difference that a seed count is sized for
MAX_SEEDS = 100  # seeds_needed answers "more than" beyond this


@dataclass(frozen=True)
class Summary:
    mean: float
    sd: float  # sample standard deviation (ddof=1); NaN for n < 2
    n: int
    ci95: float  # half-width of the 95% t-interval of the mean; NaN for n < 2


@dataclass(frozen=True)
class Paired:
    diff: float  # mean of a - b over the pairs
    ci95: float  # half-width of its 95% t-interval; NaN for n < 2
    p_value: float  # two-sided paired t-test of mean(a - b) = 0; NaN for n < 2
    n: int


@dataclass(frozen=True)
class Slope:
    slope: float  # least-squares slope of y over x; NaN for n < 2 or constant x
    ci95: float  # half-width of its 95% t-interval; NaN for n < 3
    n: int

    @property
    def rising(self) -> bool:
        """Whether the whole 95% interval of the slope lies above zero (False when it cannot be told)."""
        return bool(self.slope - self.ci95 > 0)


@contextmanager
def _quiet():
    """scipy warns of precision loss on nearly identical values (seeds that agree to the last digit): the
    results are still right for our purpose, and the report must not print a warning per cell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


def t_critical(df: float, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| <= t) = confidence (1.96 for large df, 4.30 for df = 2)."""
    if not df > 0:
        return math.nan
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    return float(2 * scipy_stats.t.sf(abs(t), df))


def summarise(values: Sequence[float]) -> Summary:
    """Mean, sample SD, n and the 95% t-interval half-width of the non-NaN values."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan)
    if n == 1:
        return Summary(float(x[0]), math.nan, 1, math.nan)
    sd = float(np.std(x, ddof=1))
    return Summary(float(np.mean(x)), sd, n, t_critical(n - 1) * sd / math.sqrt(n))


def _differences(a: Sequence[float], b: Sequence[float], name: str) -> np.ndarray:
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"{name}: {a_.shape} and {b_.shape} values; a paired comparison needs one of each per pair")
    return _finite(a_ - b_)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Paired comparison of a and b (e.g. one loss against ce, seed by seed): the mean of a - b, its 95% interval
    and the two-sided p-value of the paired t-test (scipy.stats.ttest_1samp on the differences). Pairs with a NaN
    are left out. When every difference is the same, the interval has width 0 and p is 1 for a difference of 0
    and 0 otherwise (no noise to hide it)."""
    d = _differences(a, b, "paired")
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0)
    diff = float(np.mean(d))
    if n == 1:
        return Paired(diff, math.nan, math.nan, 1)
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    if se == 0:
        return Paired(diff, 0.0, 1.0 if diff == 0 else 0.0, n)
    with _quiet():
        test = scipy_stats.ttest_1samp(d, 0.0)
    return Paired(diff, t_critical(n - 1) * se, float(test.pvalue), n)


def equivalence(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """The p-value of a paired equivalence test (two one-sided t-tests, TOST): the null hypothesis is that the
    mean difference a - b lies outside [-margin, +margin]; a small p shows it lies inside, i.e. a tie within the
    margin. It is the larger of the two one-sided p-values. NaN for fewer than 2 pairs or no margin. A
    non-significant difference test never shows a tie; this does."""
    d = _differences(a, b, "equivalence")
    if len(d) < 2 or not margin > 0:
        return math.nan
    if float(np.std(d, ddof=1)) == 0:
        return 0.0 if abs(float(np.mean(d))) < margin else 1.0
    with _quiet():
        lower = scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(lower, upper))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaNs stay NaN and are not counted): reject where the
    adjusted p is below alpha, and the chance of any false rejection in the family stays at most alpha."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = len(present)
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def slope(x: Sequence[float], y: Sequence[float]) -> Slope:
    """Least-squares slope of y over x with its 95% t-interval (n - 2 degrees of freedom; scipy.stats.linregress);
    points with a NaN are left out. For "still rising?", pass the last k evaluations and read `.rising`."""
    x_, y_ = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x_.shape != y_.shape:
        raise ValueError(f"slope: {x_.shape} x values but {y_.shape} y values")
    keep = ~(np.isnan(x_) | np.isnan(y_))
    x_, y_ = x_[keep], y_[keep]
    n = len(x_)
    if n < 2 or float(np.ptp(x_)) == 0:
        return Slope(math.nan, math.nan, n)
    with _quiet():
        fit = scipy_stats.linregress(x_, y_)
    if n == 2:
        return Slope(float(fit.slope), math.nan, n)
    return Slope(float(fit.slope), t_critical(n - 2) * float(fit.stderr), n)


def bootstrap_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the mean of `values` (one per test example; resampled with
    replacement, BOOTSTRAP_RESAMPLES times, seeded) by scipy.stats.bootstrap. It measures the test set's own
    sampling error, which seeds do not: a single run gets an honest interval from it. (NaN, NaN) for < 2 values."""
    x = _finite(values)
    if len(x) < 2:
        return math.nan, math.nan
    if float(np.ptp(x)) == 0:
        return float(x[0]), float(x[0])
    result = scipy_stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        batch=200,
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def seeds_needed(diff: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The number of paired seeds a two-sided paired t-test at `alpha` needs to detect a true mean difference
    `diff` with probability `power`, when the differences scatter with SD `sd` (from the noncentral t
    distribution, scipy.stats.nct). None when it cannot be told (no SD, no difference) or exceeds MAX_SEEDS."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0 or sd <= 0:
        return None
    effect = abs(diff) / sd
    for n in range(2, MAX_SEEDS + 1):
        df = n - 1
        t = scipy_stats.t.ppf(1 - alpha / 2, df)
        shift = effect * math.sqrt(n)
        achieved = scipy_stats.nct.sf(t, df, shift) + scipy_stats.nct.cdf(-t, df, shift)
        if achieved >= power:
            return n
    return None


def seeds_for_tie(diff: float, sd: float, margin: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The number of paired seeds an equivalence test (TOST at `alpha`, margin +-`margin`) needs to show a tie
    with probability at least `power` when the true mean difference is `diff` and the differences scatter with SD
    `sd` (a lower bound on TOST's power from the two one-sided tests, each a noncentral t). None when it cannot
    be told, when |diff| >= margin (no tie to show) or beyond MAX_SEEDS."""
    if not (math.isfinite(diff) and math.isfinite(sd) and margin > 0) or sd <= 0 or abs(diff) >= margin:
        return None
    for n in range(2, MAX_SEEDS + 1):
        df, root = n - 1, math.sqrt(n)
        t = scipy_stats.t.ppf(1 - alpha, df)
        lower = scipy_stats.nct.sf(t, df, (diff + margin) * root / sd)
        upper = scipy_stats.nct.cdf(-t, df, (diff - margin) * root / sd)
        if lower + upper - 1 >= power:
            return n
    return None


def interval_text(values: Sequence[float]) -> str:
    """The mean with its 95% t-interval half-width over seeds, as a table cell; a single value alone."""
    s = summarise(values)
    return f"{s.mean:.3f} ± {s.ci95:.3f}" if s.n > 1 else f"{s.mean:.3f}"


def paired_text(mine: Mapping[int, float], theirs: Mapping[int, float]) -> str:
    """The paired difference (seed -> value) over the seeds both have, as a table cell."""
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return "no shared seed"
    p = paired([mine[seed] for seed in seeds], [theirs[seed] for seed in seeds])
    return f"{p.diff:+.3f} ± {p.ci95:.3f} (p = {p.p_value:.2g})" if p.n > 1 else f"{p.diff:+.3f}"


def paired_column_text(runs: pd.DataFrame, reference: pd.DataFrame, column: str) -> str:
    """paired_text of one column of two tables of runs, each with a `seed` column (one row per run)."""
    return paired_text(*(table.set_index("seed")[column].to_dict() for table in (runs, reference)))
