"""Paired comparisons of two methods on the same test set: how sure is a difference?

Two runs evaluated on the same test samples are compared sample by sample:

- :func:`paired_bootstrap`: a percentile bootstrap interval of the difference
  in any statistic of :mod:`mixlab.evaluate.predictions` (top-1, NLL, Brier,
  ECE; RMSE, MAE), drawing the same resampled test set for both runs, so that
  the test set's own difficulty cancels out (Efron & Tibshirani, "An
  Introduction to the Bootstrap", 1993, ch. 13). With several seeds the
  difference is the mean over seeds, every seed seeing the same resamples.
- :func:`mcnemar_exact`: McNemar's exact test of equal top-1 (a binomial test
  on the samples exactly one of the two classifies correctly; McNemar,
  Psychometrika 12, 1947; Dietterich, Neural Computation 10(7), 1998).
- :func:`t_interval`: over seeds, the t-interval of the mean per-seed difference,
  which carries the training's randomness the bootstrap cannot see.

:func:`compare_predictions` does all three. A difference is called clear only
when its interval (the hull of the bootstrap and, with two or more seeds, the
t-interval) excludes zero.

Example:
    >>> import torch
    >>> from mixlab.evaluate.predictions import classification_predictions
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randint(0, 10, (2000,), generator=g)
    >>> run = classification_predictions(torch.randn(2000, 10, generator=g), y)
    >>> c = compare_predictions([run], [run])
    >>> c["top1"].interval.low, c["top1"].interval.high, c.mcnemar_p
    (0.0, 0.0, (1.0,))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from mixlab.errors import MixlabValueError, check_int
from mixlab.evaluate.predictions import SamplePredictions, check_same_samples, statistic_values

#: resamples of the test set drawn by default (the issue-12 contract: 1,000, seeded).
RESAMPLES = 1000
#: rows of resampling weights built at once: bounds the memory to about CHUNK x N float64.
_CHUNK = 250


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at ``level`` (``method``: how it was obtained).

    Example:
        >>> Interval(0.02, 0.01, 0.03).excludes_zero, Interval(0.0, -0.01, 0.02).excludes_zero
        (True, False)
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    method: str = "bootstrap"

    @property
    def excludes_zero(self) -> bool:
        """Whether zero lies outside the interval (a difference this interval calls clear)."""
        return self.low > 0.0 or self.high < 0.0

    def hull(self, other: Interval | None) -> Interval:
        """The smallest interval containing both (the more cautious of two intervals on one estimate)."""
        if other is None:
            return self
        return Interval(self.estimate, min(self.low, other.low), max(self.high, other.high), self.level, "hull")


@dataclass(frozen=True)
class StatisticDifference:
    """The difference ``method − baseline`` in one statistic: per seed, bootstrap and seed intervals."""

    statistic: str
    per_seed: tuple[float, ...]
    bootstrap: Interval
    seeds: Interval | None

    @property
    def estimate(self) -> float:
        """The mean difference over seeds."""
        return self.bootstrap.estimate

    @property
    def interval(self) -> Interval:
        """The interval decisions use: the bootstrap's, widened to the t-interval over seeds when there is one."""
        return self.bootstrap.hull(self.seeds)


@dataclass(frozen=True)
class PairedComparison:
    """Everything :func:`compare_predictions` found: differences per statistic, McNemar per seed, sizes."""

    differences: dict[str, StatisticDifference]
    mcnemar_p: tuple[float, ...] | None
    num_samples: int
    num_seeds: int
    resamples: int

    def __getitem__(self, statistic: str) -> StatisticDifference:
        try:
            return self.differences[statistic]
        except KeyError:
            known = ", ".join(self.differences)
            raise MixlabValueError(f"no comparison of {statistic!r}; compared: {known}") from None


def bootstrap_weights(num_samples: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``num_samples`` items as count rows ``(chunk, N)``, in chunks, seeded.

    Row ``r`` says how often each sample is drawn in resample ``r`` (each row sums to N).

    Example:
        >>> w = np.concatenate(list(bootstrap_weights(5, 3, seed=0)))
        >>> w.shape, w.sum(axis=1).tolist()
        ((3, 5), [5.0, 5.0, 5.0])
    """
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        draws = rng.integers(0, num_samples, size=(rows, num_samples))
        draws += np.arange(rows)[:, None] * num_samples
        yield np.bincount(draws.ravel(), minlength=rows * num_samples).reshape(rows, num_samples).astype(np.float64)


def paired_bootstrap(
    method: Sequence[SamplePredictions],
    baseline: Sequence[SamplePredictions],
    statistics: Sequence[str] | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[Interval, tuple[float, ...]]]:
    """Percentile bootstrap intervals of the mean (over paired seeds) difference ``method − baseline``.

    ``method[i]`` and ``baseline[i]`` are the same seed's runs, on the same test
    samples. Each resample draws N test samples with replacement, the same ones
    for every run, and recomputes each statistic on them.

    Returns:
        per statistic: the interval and the per-seed differences on the full test set.

    Example:
        >>> import torch
        >>> from mixlab.evaluate.predictions import classification_predictions
        >>> y = torch.arange(4) % 2
        >>> good = classification_predictions(torch.nn.functional.one_hot(y, 2).float(), y)
        >>> bad = classification_predictions(torch.nn.functional.one_hot(1 - y, 2).float(), y)
        >>> interval, per_seed = paired_bootstrap([good], [bad], ["top1"])["top1"]
        >>> interval.estimate, interval.low, per_seed
        (1.0, 1.0, (1.0,))
    """
    statistics = _check_pairs(method, baseline, statistics)
    resamples = check_int("resamples", resamples, minimum=1)
    _check_level(level)
    ones = np.ones((1, len(method[0])))
    full = {s: _differences(method, baseline, s, ones)[:, 0] for s in statistics}
    draws: dict[str, list[np.ndarray]] = {s: [] for s in statistics}
    for weights in bootstrap_weights(len(method[0]), resamples, seed):
        for statistic in statistics:
            draws[statistic].append(_differences(method, baseline, statistic, weights).mean(axis=0))
    tail = 100.0 * (1.0 - level) / 2.0
    out = {}
    for statistic in statistics:
        low, high = np.percentile(np.concatenate(draws[statistic]), [tail, 100.0 - tail])
        estimate = float(full[statistic].mean())
        interval = Interval(estimate, min(float(low), estimate), max(float(high), estimate), level, "bootstrap")
        out[statistic] = (interval, tuple(float(d) for d in full[statistic]))
    return out


def mcnemar_exact(method: SamplePredictions, baseline: SamplePredictions) -> float:
    """McNemar's exact two-sided p-value for equal top-1 of two classifiers on the same test samples.

    Only the discordant samples count: ``b`` that ``method`` gets right and
    ``baseline`` wrong, ``c`` the reverse; under equal accuracy ``b`` is
    Binomial(b + c, 1/2). McNemar, Psychometrika 12, 1947.

    Example:
        >>> import torch
        >>> from mixlab.evaluate.predictions import classification_predictions
        >>> y = torch.zeros(12, dtype=torch.long)
        >>> right = classification_predictions(torch.tensor([[1.0, 0.0]]).repeat(12, 1), y)
        >>> wrong = classification_predictions(torch.tensor([[0.0, 1.0]]).repeat(12, 1), y)
        >>> round(mcnemar_exact(right, wrong), 6)  # 12 discordant samples, all one way: 2 / 2**12
        0.000488
    """
    check_same_samples(method, baseline)
    ahead = int((method.correct & ~baseline.correct).sum())
    behind = int((~method.correct & baseline.correct).sum())
    if ahead + behind == 0:
        return 1.0
    return float(min(1.0, 2.0 * scipy_stats.binom.cdf(min(ahead, behind), ahead + behind, 0.5)))


def t_interval(differences: Sequence[float], level: float = 0.95) -> Interval | None:
    """The t-interval of the mean of per-seed differences; ``None`` with fewer than two seeds.

    Example:
        >>> i = t_interval([0.01, 0.02, 0.03])
        >>> round(i.estimate, 4), round(i.low, 4), round(i.high, 4)
        (0.02, -0.0048, 0.0448)
    """
    _check_level(level)
    values = np.asarray(differences, dtype=np.float64)
    if len(values) < 2:
        return None
    mean = float(values.mean())
    half = float(scipy_stats.t.ppf(0.5 + level / 2.0, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half, level, "t")


def compare_predictions(
    method: Sequence[SamplePredictions],
    baseline: Sequence[SamplePredictions],
    statistics: Sequence[str] | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> PairedComparison:
    """Paired bootstrap intervals, t-intervals over seeds and (for classifiers) McNemar's test.

    Args:
        method, baseline: one prediction set per seed, paired by position, all on the same test samples.
        statistics: which to compare (default: every statistic of the task).
        resamples, seed: the bootstrap's resamples and seed.
        level: the intervals' coverage.

    Example:
        >>> import torch
        >>> from mixlab.evaluate.predictions import classification_predictions
        >>> y = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(1))
        >>> a = classification_predictions(torch.nn.functional.one_hot(y, 3).float(), y)
        >>> b = classification_predictions(torch.zeros(500, 3), y)
        >>> c = compare_predictions([a], [b], ["top1", "ece"])
        >>> c["top1"].interval.excludes_zero, c.mcnemar_p[0] < 1e-6
        (True, True)
    """
    statistics = _check_pairs(method, baseline, statistics)
    boot = paired_bootstrap(method, baseline, statistics, resamples=resamples, seed=seed, level=level)
    differences = {
        s: StatisticDifference(s, per_seed, interval, t_interval(per_seed, level)) for s, (interval, per_seed) in boot.items()
    }
    mcnemar = None
    if method[0].task == "classification":
        mcnemar = tuple(mcnemar_exact(m, b) for m, b in zip(method, baseline, strict=True))
    return PairedComparison(differences, mcnemar, len(method[0]), len(method), resamples)


# ------------------------------------------------------------------ helpers


def _differences(
    method: Sequence[SamplePredictions], baseline: Sequence[SamplePredictions], statistic: str, weights: np.ndarray
) -> np.ndarray:
    """``(seeds, rows)``: each seed's difference under each row of resampling weights."""
    return np.stack(
        [statistic_values(m, statistic, weights) - statistic_values(b, statistic, weights) for m, b in zip(method, baseline, strict=True)]
    )


def _check_pairs(
    method: Sequence[SamplePredictions], baseline: Sequence[SamplePredictions], statistics: Sequence[str] | None
) -> tuple[str, ...]:
    if len(method) == 0 or len(method) != len(baseline):
        raise MixlabValueError(
            f"paired comparisons need one baseline run per method run (paired by seed); got {len(method)} method "
            f"and {len(baseline)} baseline prediction sets"
        )
    for item in (*method, *baseline):
        if not isinstance(item, SamplePredictions):
            raise MixlabValueError(f"expected SamplePredictions; got {type(item).__name__}")
        check_same_samples(method[0], item)
    known = method[0].statistics()
    chosen = tuple(known if statistics is None else statistics)
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        raise MixlabValueError(
            f"statistics {unknown or list(chosen)} cannot be compared for {method[0].task}; known: {', '.join(known)}"
        )
    return chosen


def _check_level(level: float) -> None:
    if not isinstance(level, float | int) or isinstance(level, bool) or not 0.0 < level < 1.0:
        raise MixlabValueError(f"level must be a coverage in (0, 1), e.g. 0.95; got {level!r}")
