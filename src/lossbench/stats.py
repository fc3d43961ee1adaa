"""Summary statistics for the report: mean with a 95% t-interval, a paired t-test against a baseline, and a
least-squares slope with its 95% interval ("is the score still rising?").

Seeds are few (often 3), so every interval uses Student's t with the right degrees of freedom, and standard
deviations are sample ones (ddof=1). NaN values (a run that never reached a target, a diverged run) are left out
and `n` says how many values remain. The t distribution is computed here (regularised incomplete beta function)
so that the package needs no scipy at run time; the tests check it against scipy.stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


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


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes, betacf)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only for x < (a + 1) / (a + b + 2); use the symmetry I_x(a, b) = 1 - I_1-x(b, a).
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0
    return _incomplete_beta(df / 2, 0.5, df / (df + t * t))


@lru_cache(maxsize=256)
def t_critical(df: float, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| <= t) = confidence (1.96 for large df, 4.30 for df = 2), by bisection on the p-value."""
    if not df > 0:
        return math.nan
    alpha = 1 - confidence
    low, high = 0.0, 2.0
    while t_two_sided_p(high, df) > alpha:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) > alpha else (low, middle)
        if high - low <= 1e-14 * high:
            break
    return (low + high) / 2


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


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Paired comparison of a and b (e.g. one loss against ce, seed by seed): the mean of a - b, its 95% interval
    and the two-sided p-value of the paired t-test. Pairs with a NaN are left out. When every difference is the
    same, the interval has width 0 and p is 1 for a difference of 0 and 0 otherwise (no noise to hide it)."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired: {a_.shape} and {b_.shape} values; a paired comparison needs one of each per pair")
    d = _finite(a_ - b_)
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0)
    diff = float(np.mean(d))
    if n == 1:
        return Paired(diff, math.nan, math.nan, 1)
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    if se == 0:
        return Paired(diff, 0.0, 1.0 if diff == 0 else 0.0, n)
    return Paired(diff, t_critical(n - 1) * se, t_two_sided_p(diff / se, n - 1), n)


def slope(x: Sequence[float], y: Sequence[float]) -> Slope:
    """Least-squares slope of y over x with its 95% t-interval (n - 2 degrees of freedom); points with a NaN are
    left out. For "still rising?", pass the last k evaluations and read `.rising`."""
    x_, y_ = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x_.shape != y_.shape:
        raise ValueError(f"slope: {x_.shape} x values but {y_.shape} y values")
    keep = ~(np.isnan(x_) | np.isnan(y_))
    x_, y_ = x_[keep], y_[keep]
    n = len(x_)
    sxx = float(np.sum((x_ - x_.mean()) ** 2)) if n else 0.0
    if n < 2 or sxx == 0:
        return Slope(math.nan, math.nan, n)
    b = float(np.sum((x_ - x_.mean()) * (y_ - y_.mean()))) / sxx
    if n == 2:
        return Slope(b, math.nan, n)
    residuals = y_ - y_.mean() - b * (x_ - x_.mean())
    se = math.sqrt(float(np.sum(residuals**2)) / (n - 2) / sxx)
    return Slope(b, t_critical(n - 2) * se, n)
