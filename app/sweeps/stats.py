"""Statistics over seeds and settings of a sweep: pure Python, no database, no SciPy.

A sweep runs every setting with several seeds; the questions are how large the seed-to-seed noise
is (mean, sample std, Student t interval, coefficient of variation), whether the best setting is
really better than the runner-up (do their intervals overlap?), and which swept parameter moves the
main metric (range of its per-value means, share of the variance of the setting means it explains).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE_LEVEL = 0.95
# Seed std above 10% of the mean's magnitude: differences between settings smaller than that noise
# cannot be trusted from a handful of seeds, so the setting is flagged.
HIGH_SEED_CV = 0.1

_BETA_EPS = 1e-15
_BETA_TINY = 1e-300
_BETA_MAX_ITER = 500


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _BETA_TINY else _BETA_TINY)
    h = d
    for m in range(1, _BETA_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _BETA_TINY else _BETA_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _BETA_TINY else _BETA_TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _BETA_TINY else _BETA_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _BETA_TINY else _BETA_TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _BETA_EPS:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (``t_quantile(0.975, 4) == 2.776…``), by bisection on the CDF."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Summary:
    """Spread of one metric over seeds. ``std`` is the sample std (ddof=1); None below two values."""

    n: int
    mean: float
    std: float | None
    min: float
    max: float
    ci: tuple[float, float] | None

    @property
    def cv(self) -> float | None:
        """Coefficient of variation std / |mean|; None without a std or with a zero mean."""
        if self.std is None or self.mean == 0:
            return None
        return self.std / abs(self.mean)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "ci": list(self.ci) if self.ci is not None else None,
        }


Bounds = tuple[float | None, float | None]
UNBOUNDED: Bounds = (None, None)
# The range each metric lives in (accuracy-like scores in [0, 1], errors and losses >= 0, smape in
# percent up to 200, r2 at most 1); an interval of a mean never leaves it.
_UNIT: Bounds = (0.0, 1.0)
_NON_NEGATIVE: Bounds = (0.0, None)
METRIC_BOUNDS: dict[str, Bounds] = {
    **dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "span_f1"), _UNIT),
    **dict.fromkeys(("mae", "rmse", "mse", "mase", "mape", "log_loss", "loss"), _NON_NEGATIVE),
    "smape": (0.0, 200.0),
    "r2": (None, 1.0),
}


def metric_bounds(name: str) -> Bounds:
    return METRIC_BOUNDS.get(name, UNBOUNDED)


def transformed_interval(mean: float, half_width: float, bounds: Bounds) -> tuple[float, float]:
    """``mean ± half_width`` mapped through the transform that fits the metric's range and back.

    Two bounds: logit of the position in the range; one bound: log of the distance to it; none: the
    plain interval. The half width is carried to the transformed scale by the delta method
    (``half / |g'(mean)|``), so for a mean far from its bounds this is the Student t interval, and
    near a bound it becomes asymmetric and stays inside the range. A mean on a bound (every value on
    it) has the degenerate interval [mean, mean].
    """
    low, high = bounds
    if low is None and high is None:
        return mean - half_width, mean + half_width
    if low is not None and high is not None:
        width = high - low
        p = (mean - low) / width
        if p <= 0.0 or p >= 1.0:
            return mean, mean
        z, dz = math.log(p / (1.0 - p)), half_width / (width * p * (1.0 - p))
        return low + width * _expit(z - dz), low + width * _expit(z + dz)
    distance = mean - low if low is not None else high - mean  # type: ignore[operator]
    if distance <= 0.0:
        return mean, mean
    near, far = distance * math.exp(-half_width / distance), distance * math.exp(half_width / distance)
    return (low + near, low + far) if low is not None else (high - far, high - near)  # type: ignore[operator]


def _expit(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE_LEVEL, bounds: Bounds = UNBOUNDED) -> Summary:
    """n, mean, sample std, min, max and a 95% interval of the mean (None when n < 2).

    The interval is Student t's ``mean ± t·std/√n`` on the scale that respects ``bounds``
    (:func:`transformed_interval`); unbounded, it is the plain Student t interval.
    """
    if not values:
        raise ValueError("summarize needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, None, float(min(values)), float(max(values)), None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, float(min(values)), float(max(values)), transformed_interval(mean, half, bounds))


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@dataclass(frozen=True)
class Ranked:
    """Best and runner-up settings, and whether their intervals tell them apart."""

    best: Hashable
    runner_up: Hashable | None
    distinguishable: bool | None
    explanation: str


def rank_settings(summaries: Mapping[Hashable, Summary], lower_is_better: bool) -> tuple[list[Hashable], Ranked | None]:
    """Settings ordered best first by mean; the best compared with the runner-up.

    ``distinguishable`` is True when their 95% intervals do not overlap, False when they do, and
    None when either has fewer than two seeds (no interval), when every seed of either gave the same
    value (no spread to judge by), or there is no runner-up. Non-overlap of two 95% intervals is a
    strict test (about the 0.5% level for two normal means): "not distinguishable" often means "not
    shown with these seeds", rarely "equal".
    """
    if not summaries:
        return [], None
    order = sorted(summaries, key=lambda k: summaries[k].mean, reverse=not lower_is_better)
    best = summaries[order[0]]
    if len(order) < 2:
        return order, Ranked(order[0], None, None, "only one setting has results; nothing to compare")
    second = summaries[order[1]]
    flat = [name for name, s in (("best", best), ("runner-up", second)) if s.std == 0.0]
    if flat and best.ci is not None and second.ci is not None:
        # Every seed gave the same value (accuracy on a small test part comes in steps; a bound such
        # as 1.0): the interval is a point, not a spread, and any gap would read as "distinguishable".
        return order, Ranked(
            order[0],
            order[1],
            None,
            f"undecided: every seed of the {' and the '.join(flat)} gave the same value, so the spread over "
            "seeds cannot be estimated from them; add seeds",
        )
    if best.ci is None or second.ci is None:
        return order, Ranked(
            order[0],
            order[1],
            None,
            "undecided: an interval needs at least two succeeded seeds per setting "
            f"(best has {best.n}, runner-up has {second.n})",
        )
    overlap = intervals_overlap(best.ci, second.ci)
    relation = "overlap" if overlap else "do not overlap"
    verdict = "not distinguishable" if overlap else "distinguishable"
    explanation = (
        f"{verdict}: 95% intervals of the best [{best.ci[0]:.4g}, {best.ci[1]:.4g}] and the runner-up "
        f"[{second.ci[0]:.4g}, {second.ci[1]:.4g}] {relation}"
    )
    return order, Ranked(order[0], order[1], not overlap, explanation)


@dataclass(frozen=True)
class ParameterEffect:
    """How one swept parameter moves the main metric across the setting means."""

    value_means: list[tuple[Any, float, int]]  # (value, mean of the setting means with it, settings)
    range: float
    share_of_variance: float | None


def parameter_effect(setting_means: Sequence[tuple[Mapping[str, Any], float]], path: str) -> ParameterEffect:
    """Group setting means by the value of ``path``.

    ``range``: max - min of the per-value means (each setting weighted equally). ``share_of_variance``:
    between-group sum of squares / total sum of squares of the setting means (eta squared, 0..1);
    None when the setting means do not vary (nothing to explain) or every value has a setting of its
    own (then it is 1 whatever the parameter does).
    """
    if not setting_means:
        raise ValueError("parameter_effect needs at least one setting mean")
    groups: dict[str, tuple[Any, list[float]]] = {}
    for setting, mean in setting_means:
        value = setting.get(path)
        groups.setdefault(_value_key(value), (value, []))[1].append(mean)
    means = [mean for _, mean in setting_means]
    grand = math.fsum(means) / len(means)
    total_ss = math.fsum((m - grand) ** 2 for m in means)
    value_means = [(value, math.fsum(ms) / len(ms), len(ms)) for value, ms in groups.values()]
    between_ss = math.fsum(count * (gm - grand) ** 2 for _, gm, count in value_means)
    group_means = [gm for _, gm, _ in value_means]
    # Every value with a setting of its own (one swept parameter; a continuous tpe parameter): the
    # groups are the settings, and the share would be 1 even for pure seed noise.
    share = None if total_ss <= 0 or len(groups) == len(setting_means) else min(1.0, between_ss / total_ss)
    return ParameterEffect(value_means, max(group_means) - min(group_means), share)


def _value_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
