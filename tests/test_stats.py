"""Tests for shared.method.stats: paired bootstrap interval, McNemar and sign-flip p-values."""

import numpy as np
import pytest

from shared.method.stats import PairedDifference, format_difference, paired_difference


def _pairs(both: int, b_only: int, a_only: int, neither: int) -> tuple[list[int], list[int]]:
    """0/1 score lists with the given 2x2 contingency counts."""
    a = [1] * both + [0] * b_only + [1] * a_only + [0] * neither
    b = [1] * both + [1] * b_only + [0] * a_only + [0] * neither
    return a, b


def test_mcnemar_exact_p_matches_hand_computation():
    # b_only=7, a_only=1 -> m=8 discordant, X ~ Binomial(8, 1/2):
    # P(X <= 1) = (C(8,0) + C(8,1)) / 2^8 = (1 + 8) / 256 = 9/256
    # p = 2 * 9/256 = 18/256 = 0.0703125
    a, b = _pairs(both=10, b_only=7, a_only=1, neither=2)
    d = paired_difference(a, b)
    assert d.method == "mcnemar-exact"
    assert (d.b_only, d.a_only) == (7, 1)
    assert d.p_value == pytest.approx(0.0703125, abs=1e-12)
    assert d.n == 20
    assert d.mean_a == pytest.approx(11 / 20)
    assert d.mean_b == pytest.approx(17 / 20)
    assert d.diff == pytest.approx(6 / 20)


def test_mcnemar_balanced_split_is_capped_at_one():
    # b_only=3, a_only=3: 2 * P(X <= 3), X ~ Bin(6, 1/2) = 2 * (1+6+15+20)/64 = 84/64 > 1 -> 1.0
    a, b = _pairs(both=4, b_only=3, a_only=3, neither=4)
    assert paired_difference(a, b).p_value == 1.0


def test_no_discordant_pairs_gives_p_one_and_zero_interval():
    a, b = _pairs(both=6, b_only=0, a_only=0, neither=4)
    d = paired_difference(a, b)
    assert d.p_value == 1.0
    assert d.diff == 0.0
    assert (d.ci_low, d.ci_high) == (0.0, 0.0)
    assert (d.b_only, d.a_only) == (0, 0)


def _unpaired_interval(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> float:
    """Width of the naive interval that resamples each model independently."""
    rng = np.random.default_rng(seed)
    n = len(a)
    mean_a = a[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    mean_b = b[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(mean_b - mean_a, [0.025, 0.975])
    return float(high - low)


def test_paired_interval_contains_truth_and_beats_unpaired_on_correlated_data():
    # Population: A solves each problem with prob 0.5; B solves everything A solves plus
    # 10% of A's failures. True difference = 0.5 * 0.1 = 0.05; a and b are highly correlated.
    rng = np.random.default_rng(123)
    n = 400
    a = (rng.random(n) < 0.5).astype(float)
    b = np.where((a == 0) & (rng.random(n) < 0.1), 1.0, a)
    d = paired_difference(a, b, resamples=4000, seed=1)
    assert d.ci_low <= 0.05 <= d.ci_high
    assert d.ci_low <= d.diff <= d.ci_high
    paired_width = d.ci_high - d.ci_low
    assert paired_width < 0.5 * _unpaired_interval(a, b, resamples=4000, seed=1)


def test_fractional_scores_use_exact_sign_flip_hand_computed():
    # differences b - a = [0.5, 0.25, -0.125], observed |sum| = 0.625.
    # The 8 sign flips (s1*0.5 + s2*0.25 + s3*0.125 up to the sign of the last term):
    #  +0.5 +0.25 -0.125 =  0.625  extreme
    #  +0.5 +0.25 +0.125 =  0.875  extreme
    #  +0.5 -0.25 -0.125 =  0.125
    #  +0.5 -0.25 +0.125 =  0.375
    #  -0.5 +0.25 -0.125 = -0.375
    #  -0.5 +0.25 +0.125 = -0.125
    #  -0.5 -0.25 -0.125 = -0.875  extreme
    #  -0.5 -0.25 +0.125 = -0.625  extreme
    # 4 of 8 have |sum| >= 0.625 -> p = 0.5
    a = [0.25, 0.5, 0.75]
    b = [0.75, 0.75, 0.625]
    d = paired_difference(a, b)
    assert d.method.startswith("sign-flip")
    assert d.method != "mcnemar-exact"
    assert d.p_value == pytest.approx(0.5)
    assert (d.b_only, d.a_only) == (2, 1)
    assert d.diff == pytest.approx(0.625 / 3)


def test_exact_sign_flip_all_same_sign():
    # d = [0.25, 0.5, 0.75, 1.0], all positive and distinct: only all-plus and all-minus
    # reach |sum| = 2.5, so p = 2 / 2^4 = 0.125.
    d = paired_difference([0.0] * 4, [0.25, 0.5, 0.75, 1.0])
    assert d.p_value == pytest.approx(0.125)


def test_random_sign_flip_uses_plus_one_correction():
    # n=20 identical positive differences: only 2 of 2^20 flips are as extreme, so with 999
    # random flips essentially none hit and p = (0 + 1) / (999 + 1) = 0.001, never 0.
    a = [0.0] * 20
    b = [0.5] * 20
    d = paired_difference(a, b, resamples=999, seed=0)
    assert d.method.startswith("sign-flip")
    assert d.p_value == pytest.approx(1 / 1000)


def test_deterministic_for_fixed_seed_and_seed_matters():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 5, size=40) / 4
    b = np.clip(a + rng.integers(-1, 3, size=40) / 4, 0, 1)
    first = paired_difference(a, b, resamples=2000, seed=3)
    again = paired_difference(a, b, resamples=2000, seed=3)
    other = paired_difference(a, b, resamples=2000, seed=4)
    assert first == again
    assert (first.ci_low, first.ci_high, first.p_value) != (
        other.ci_low,
        other.ci_high,
        other.p_value,
    )


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match=r"len\(a\)=3 != len\(b\)=2"):
        paired_difference([1, 0, 1], [1, 0])


def test_empty_raises():
    with pytest.raises(ValueError, match="n == 0"):
        paired_difference([], [])


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([0.0, 1.5], [0.0, 1.0], r"a\[1\]=1\.5 is outside \[0, 1\]"),
        ([0.0, 1.0], [-0.1, 1.0], r"b\[0\]=-0\.1 is outside \[0, 1\]"),
        ([0.0, float("nan")], [0.0, 1.0], r"a\[1\]=nan is outside \[0, 1\]"),
    ],
)
def test_out_of_range_scores_raise(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(a, b)


def test_format_difference_fixed_example():
    d = PairedDifference(
        n=80,
        mean_a=0.5,
        mean_b=0.625,
        diff=0.125,
        ci_low=0.04,
        ci_high=0.21,
        p_value=0.0031,
        method="mcnemar-exact",
        b_only=10,
        a_only=2,
    )
    assert format_difference(d) == "+12.5 pts [+4.0, +21.0] p=0.003 (McNemar, 10 vs 2 discordant)"
    assert format_difference(d, scale=1.0) == (
        "+0.1 pts [+0.0, +0.2] p=0.003 (McNemar, 10 vs 2 discordant)"
    )


def test_format_difference_small_p_and_sign_flip_label():
    a = [0.25, 0.5, 0.75]
    b = [0.75, 0.75, 0.625]
    d = paired_difference(a, b, seed=0)
    text = format_difference(d)
    assert text.startswith("+20.8 pts [")
    assert text.endswith("p=0.500 (sign-flip, 2 vs 1 discordant)")
    tiny = PairedDifference(
        n=500,
        mean_a=0.3,
        mean_b=0.5,
        diff=0.2,
        ci_low=0.15,
        ci_high=0.25,
        p_value=1e-9,
        method="mcnemar-exact",
        b_only=110,
        a_only=10,
    )
    expected = "+20.0 pts [+15.0, +25.0] p<0.001 (McNemar, 110 vs 10 discordant)"
    assert format_difference(tiny) == expected
