"""Paired comparison of two models scored on the same problems.

Why paired
----------
When model A (say M0) and model B (say M2) are evaluated on the *same* problems, most of
the problem-to-problem variance is shared: an easy problem is easy for both, a hard one is
hard for both. Two independent 95% intervals (one per model) ignore that and are far too
wide; overlapping per-model intervals do NOT mean "no difference". The quantity of interest
is the per-problem difference ``b_i - a_i``, and its spread is usually a fraction of the
spread of either score, so the paired interval is much tighter.

What is computed
----------------
* ``diff``: mean(b) - mean(a), i.e. positive means B is better.
* ``ci_low``/``ci_high``: paired bootstrap percentile interval of ``diff``. Problems (not
  individual samples) are resampled with replacement, keeping each (a_i, b_i) pair
  together, so the correlation between the models is preserved.
* ``p_value``: two-sided test of "no difference".
  - All scores 0/1 (plain pass/fail): exact McNemar test. Only discordant problems (one
    model right, the other wrong) carry information; under the null each discordant
    problem is equally likely to favour either model, so ``b_only ~ Binomial(m, 1/2)``
    with ``m = b_only + a_only``.
  - Fractional scores (e.g. pass@1 averaged over k samples): paired sign-flip permutation
    test. Under the null the sign of each difference is arbitrary, so the observed
    ``|sum(d)|`` is compared with the sums over random sign assignments (exhaustive when
    n <= 16, otherwise ``resamples`` random flips with the +1 correction so p is never 0).

How to read it
--------------
``+12.5 pts [+4.0, +21.0] p=0.003 (McNemar, 10 vs 2 discordant)`` means B solves 12.5
percentage points more problems than A; the paired 95% interval for that gain is 4 to 21
points; the chance of a split at least this lopsided under "no difference" is 0.003; and
the difference rests on 12 problems where exactly one model was right (10 for B, 2 for A).
A small discordant count is a warning that the result hinges on a handful of problems.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

METHOD_MCNEMAR = "mcnemar-exact"
METHOD_SIGN_FLIP_EXACT = "sign-flip permutation (exact)"
METHOD_SIGN_FLIP_RANDOM = "sign-flip permutation (random)"

# Exhaustive sign-flip enumeration costs 2**n rows; 2**16 = 65536 is still instant.
_EXACT_PERMUTATION_MAX_N = 16
# Cap on elements materialised per batch so large benchmarks x many resamples stay small.
_BATCH_ELEMENTS = 1 << 20
# Differences are sums of fractions like k/m, so genuine ties are common; compare with a
# tolerance so rounding noise does not turn a tie into "less extreme".
_TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PairedDifference:
    """Result of :func:`paired_difference`; ``diff`` is ``mean_b - mean_a``."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    b_only: int  # problems where b > a (for 0/1 scores: only b right)
    a_only: int  # problems where a > b (for 0/1 scores: only a right)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """Compare per-problem scores ``a`` and ``b`` (same problems, same order, in [0, 1])."""
    a_arr, b_arr = _validate(a, b)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    d = b_arr - a_arr
    rng = np.random.default_rng(seed)
    ci_low, ci_high = _bootstrap_interval(d, resamples, confidence, rng)
    b_only = int(np.count_nonzero(d > 0))
    a_only = int(np.count_nonzero(d < 0))

    if _is_binary(a_arr) and _is_binary(b_arr):
        p_value, method = mcnemar_exact_p(b_only, a_only), METHOD_MCNEMAR
    elif len(d) <= _EXACT_PERMUTATION_MAX_N:
        p_value, method = _sign_flip_exact_p(d), METHOD_SIGN_FLIP_EXACT
    else:
        p_value, method = _sign_flip_random_p(d, resamples, rng), METHOD_SIGN_FLIP_RANDOM

    return PairedDifference(
        n=len(d),
        mean_a=float(a_arr.mean()),
        mean_b=float(b_arr.mean()),
        diff=float(d.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        method=method,
        b_only=b_only,
        a_only=a_only,
    )


def mcnemar_exact_p(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min) with X ~ Binomial(m, 1/2)."""
    m = b_only + a_only
    if m == 0:
        return 1.0  # no discordant problems: the data cannot favour either model
    tail = sum(math.comb(m, i) for i in range(min(b_only, a_only) + 1))
    # Exact integer arithmetic; Python's int / int division is correctly rounded.
    return min(1.0, 2 * tail / 2**m)


def format_difference(d: PairedDifference, scale: float = 100.0) -> str:
    """One-line summary, e.g. ``+12.5 pts [+4.0, +21.0] p=0.003 (McNemar, 10 vs 2 discordant)``.

    ``scale=100`` reports percentage points; the counts are "b better vs a better".
    """
    test = "McNemar" if d.method == METHOD_MCNEMAR else "sign-flip"
    return (
        f"{d.diff * scale:+.1f} pts [{d.ci_low * scale:+.1f}, {d.ci_high * scale:+.1f}] "
        f"{_format_p(d.p_value)} ({test}, {d.b_only} vs {d.a_only} discordant)"
    )


def _validate(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.ndim != 1 or b_arr.ndim != 1:
        raise ValueError("scores must be flat sequences of per-problem values")
    if len(a_arr) != len(b_arr):
        raise ValueError(
            f"paired scores must cover the same problems: len(a)={len(a_arr)} != "
            f"len(b)={len(b_arr)}"
        )
    if len(a_arr) == 0:
        raise ValueError("need at least one problem (n == 0)")
    for name, arr in (("a", a_arr), ("b", b_arr)):
        # `~(x in range)` also catches NaN, which would otherwise poison every mean.
        bad = np.flatnonzero(~((arr >= 0.0) & (arr <= 1.0)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"score {name}[{i}]={float(arr[i])!r} is outside [0, 1]")
    return a_arr, b_arr


def _is_binary(arr: np.ndarray) -> bool:
    return bool(np.all((arr == 0.0) | (arr == 1.0)))


def _batches(total: int, width: int) -> Iterator[int]:
    """Split ``total`` rows into batch sizes of at most ~_BATCH_ELEMENTS elements each."""
    step = max(1, _BATCH_ELEMENTS // max(1, width))
    for start in range(0, total, step):
        yield min(step, total - start)


def _bootstrap_interval(
    d: np.ndarray, resamples: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    # Resampling problem indices keeps each (a_i, b_i) pair together: that is the pairing.
    n = len(d)
    means = np.concatenate(
        [d[rng.integers(0, n, size=(size, n))].mean(axis=1) for size in _batches(resamples, n)]
    )
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _sign_flip_exact_p(d: np.ndarray) -> float:
    n = len(d)
    # Row k of `signs` is the binary expansion of k mapped to {-1, +1}: all 2**n flips.
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    sums = (2 * bits - 1) @ d
    extreme = np.count_nonzero(np.abs(sums) >= abs(d.sum()) - _TIE_TOLERANCE)
    return float(extreme / 2**n)


def _sign_flip_random_p(d: np.ndarray, resamples: int, rng: np.random.Generator) -> float:
    n = len(d)
    observed = abs(d.sum()) - _TIE_TOLERANCE
    extreme = 0
    for size in _batches(resamples, n):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= observed))
    # +1 counts the observed labelling itself, so p is a valid test and never exactly 0.
    return (extreme + 1) / (resamples + 1)


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
