"""Long-tailed counts and shot groups against independently computed references."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest

from ccsam_zoo.data import long_tailed_counts, shot_groups

# (classes, max per class, imbalance ratio) -> total in the literature (LDAM / CC-SAM tables)
CIFAR_SETTINGS = {
    (10, 5000, 200): 11203,
    (10, 5000, 100): 12406,
    (10, 5000, 50): 13996,
    (100, 500, 200): 9502,
    (100, 500, 100): 10847,
    (100, 500, 50): 12608,
}


def _exact_counts(c: int, n_max: int, ir: int) -> list[int]:
    """floor(n_max * IR^(-i/(C-1))) in 50-digit decimal arithmetic (an independent reference)."""
    getcontext().prec = 50
    out = []
    for i in range(c):
        value = Decimal(n_max) * (Decimal(1) / Decimal(ir)) ** (Decimal(i) / Decimal(c - 1))
        out.append(int((value + Decimal("1e-30")).to_integral_value(rounding="ROUND_FLOOR")))
    return out


@pytest.mark.parametrize(("c", "n_max", "ir"), list(CIFAR_SETTINGS))
def test_cifar_settings_match_references(c, n_max, ir):
    counts = long_tailed_counts(c, n_max, ir)
    reference = np.floor(n_max * np.power(float(ir), -np.arange(c) / (c - 1))).astype(int).tolist()
    assert counts == reference
    assert counts == _exact_counts(c, n_max, ir)
    assert sum(counts) == CIFAR_SETTINGS[(c, n_max, ir)]
    assert counts[0] == n_max and counts[-1] == n_max // ir
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_cifar10_ir100_paper_list():
    assert long_tailed_counts(10, 5000, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile():
    assert long_tailed_counts(10, 5000, 100, profile="step") == [5000] * 5 + [50] * 5
    assert long_tailed_counts(5, 100, 10, profile="step") == [100, 100, 10, 10, 10]


def test_edge_cases():
    assert long_tailed_counts(10, 100, 1) == [100] * 10
    assert long_tailed_counts(1, 7, 100) == [7]
    counts = long_tailed_counts(4, 1000, 12.5)  # non-integer ratio
    assert counts == [math.floor(1000 * 12.5 ** (-i / 3)) for i in range(4)]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 5000, 0.01), "imbalance_ratio must be >= 1.*imbalance_ratio=100"),
        ((10, 5000, 0.5), "imbalance_ratio must be >= 1"),
        ((10, 5000, float("nan")), "imbalance_ratio must be >= 1"),
        ((0, 5000, 100), "num_classes"),
        ((10, 0, 100), "max_count"),
        ((10, 50, 100), "leaves class 8 with 0 images"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        long_tailed_counts(*args)


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'linear'"):
        long_tailed_counts(10, 100, 10, profile="linear")


def test_shot_groups_rules():
    counts = [101, 100, 99, 21, 20, 19]
    assert shot_groups(counts) == ["many", "medium", "medium", "medium", "medium", "few"]
    assert shot_groups(counts, rule="authors") == ["many", "many", "medium", "medium", "few", "few"]
    assert shot_groups(counts, thresholds=(50, 21)) == ["many", "many", "many", "medium", "few", "few"]
    with pytest.raises(ValueError, match="unknown shot_rule"):
        shot_groups(counts, rule="other")


def test_cifar10_lt_has_no_few_shot_class():
    groups = shot_groups(long_tailed_counts(10, 5000, 100))
    assert groups.count("few") == 0 and groups.count("medium") == 2  # 83 and 50
