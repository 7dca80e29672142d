"""Long-tailed class counts (LDAM's profiles) and many / medium / few shot groups."""

from __future__ import annotations

from collections.abc import Sequence

PROFILES = ("exp", "step")
SHOT_RULES = ("paper", "authors")


def long_tailed_counts(
    num_classes: int, max_count: int, imbalance_ratio: float, profile: str = "exp"
) -> list[int]:
    """Per-class image counts of a long-tailed subset, class 0 the head (LDAM, Cao et al. 2019).

    ``"exp"``: ``n_i = int(max_count * (1 / IR) ** (i / (C - 1)))``, computed exactly as LDAM's
    ``get_img_num_per_cls`` (float math, truncation), so CIFAR-10 IR 100 gives
    ``[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]``.
    ``"step"``: the first ``C // 2`` classes get ``max_count``, the others ``int(max_count / IR)``.

    Raises ValueError for IR < 1, non-positive sizes, an unknown profile, or a class left with 0 images.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if int(max_count) != max_count or max_count < 1:
        raise ValueError(f"max_count must be a positive integer, got {max_count!r}")
    if not imbalance_ratio >= 1:  # also rejects NaN
        raise ValueError(
            f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio!r}; "
            "an imbalance factor like 0.01 is written imbalance_ratio=100"
        )
    num_classes, max_count = int(num_classes), int(max_count)
    factor = 1.0 / imbalance_ratio
    if profile == "exp":
        if num_classes == 1:
            counts = [max_count]
        else:
            counts = [int(max_count * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    elif profile == "step":
        head = num_classes // 2
        counts = [max_count] * head + [int(max_count * factor)] * (num_classes - head)
    else:
        raise ValueError(f"unknown profile {profile!r}: use one of {PROFILES}")
    if min(counts) < 1:
        first = counts.index(0)
        raise ValueError(
            f"max_count={max_count} with imbalance_ratio={imbalance_ratio} ({profile} profile) leaves class "
            f"{first} with 0 images: raise max_count or lower imbalance_ratio"
        )
    return counts


def shot_groups(
    class_counts: Sequence[int], thresholds: tuple[int, int] = (100, 20), rule: str = "paper"
) -> list[str]:
    """"many" / "medium" / "few" per class from its training count.

    ``thresholds = (many, few)``. ``rule="paper"``: many if n > many, few if n < few (the usual
    OLTR / CC-SAM paper split); ``rule="authors"``: many if n >= many, few if n <= few (CC-SAM's code).
    """
    many, few = thresholds
    if few > many:
        raise ValueError(f"shot_thresholds must be (many, few) with many >= few, got {thresholds!r}")
    if rule == "paper":
        return ["many" if n > many else "few" if n < few else "medium" for n in class_counts]
    if rule == "authors":
        return ["many" if n >= many else "few" if n <= few else "medium" for n in class_counts]
    raise ValueError(f"unknown shot_rule {rule!r}: use one of {SHOT_RULES}")
