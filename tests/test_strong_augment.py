"""Strong augmentation: AutoAugment / RandAugment per image (against torchvision's own per-image transform) and
Cutout against DeVries & Taylor's reference code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from ccsam_zoo.data import BatchAugment
from ccsam_zoo.data.augment import _cutout_at, cutout, per_image_augment, strong_augment
from ccsam_zoo.models import CIFAR_MEAN, CIFAR_STD
from ccsam_zoo.training import RecipeError, apply_overrides, load_recipe
from ccsam_zoo.training.config import check_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(
    "spec,reference",
    [
        ("cifar10", lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)),
        (True, lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)),
        ("svhn", lambda: v2.AutoAugment(v2.AutoAugmentPolicy.SVHN)),
        ("rand-m9-n2", lambda: v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11)),
        ("rand-m5-n3", lambda: v2.RandAugment(num_ops=3, magnitude=5, num_magnitude_bins=11)),
    ],
)
def test_strong_augment_equals_torchvision_called_on_each_image(spec, reference):
    x = _batch(96)
    torch.manual_seed(3)
    got = per_image_augment(strong_augment(spec), x)
    ref_t = reference()
    torch.manual_seed(3)
    ref = torch.stack([ref_t(img) for img in x])  # the maintained transform, one call per image
    assert torch.equal(got, ref)
    assert (got != x).flatten(1).any(1).float().mean() > 0.5  # most images really changed
    # the whole module: AutoAugment first, then normalisation (no crop / flip / cutout here)
    torch.manual_seed(3)
    out = BatchAugment(CIFAR_MEAN, CIFAR_STD, padding=0, flip=False, autoaugment=spec)(x)
    plain = BatchAugment(CIFAR_MEAN, CIFAR_STD, augment=False)
    torch.testing.assert_close(out, plain(ref), rtol=0, atol=0)


def test_each_image_draws_its_own_sub_policy():
    x = _batch(1).expand(256, -1, -1, -1).contiguous()  # one image, 256 times
    torch.manual_seed(0)
    out = per_image_augment(strong_augment("cifar10"), x)
    distinct = {bytes(img.numpy().tobytes()) for img in out}
    # 25 sub-policies x 2 coin flips (x signs): one shared draw would give 1 distinct image
    assert len(distinct) > 30
    assert (out == x).flatten(1).all(1).sum() < 128  # and not most left as they were


def _devries_cutout(img: np.ndarray, length: int, y: int, x: int) -> np.ndarray:
    """uoguelph-mlrg/Cutout ``Cutout.__call__`` (one hole), with the centre given instead of drawn by
    ``np.random.randint(h)`` / ``np.random.randint(w)``: the mask multiplies the normalised tensor."""
    h, w = img.shape[1], img.shape[2]
    mask = np.ones((h, w), np.float32)
    y1 = np.clip(y - length // 2, 0, h)
    y2 = np.clip(y + length // 2, 0, h)
    x1 = np.clip(x - length // 2, 0, w)
    x2 = np.clip(x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return img * mask[None]


@pytest.mark.parametrize("length", [16, 8, 15])
def test_cutout_matches_devries_reference(length):
    x = torch.randn(64, 3, 32, 32)
    g = torch.Generator().manual_seed(length)
    centres = torch.randint(0, 32, (64, 2), generator=g)
    centres[:4] = torch.tensor([[0, 0], [31, 31], [0, 31], [16, 16]])  # corners are clipped
    got = _cutout_at(x, length, centres)
    ref = np.stack([_devries_cutout(img.numpy(), length, int(c[0]), int(c[1])) for img, c in zip(x, centres)])
    np.testing.assert_array_equal(got.numpy(), ref)


def test_cutout_centres_are_uniform_over_the_image():
    x = torch.ones(20000, 1, 32, 32)
    torch.manual_seed(0)
    holes = cutout(x, 16)[:, 0] == 0
    rows = holes.any(2)  # [B, H]: rows of the hole
    first = rows.float().argmax(1)
    last = 31 - rows.flip(1).float().argmax(1)
    centre = torch.where(first > 0, first + 8, last + 1 - 8)  # y1 = y - 8 unless clipped at the top
    counts = torch.bincount(centre, minlength=32)
    assert counts.numel() == 32 and counts.min() > 0.75 * 625 and counts.max() < 1.25 * 625
    assert holes.sum((1, 2)).max() == 256 and holes.sum((1, 2)).min() == 64  # 16 x 16, corners 8 x 8


def test_cutout_true_is_the_16_pixel_hole():
    x = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    torch.manual_seed(1)
    a = BatchAugment(CIFAR_MEAN, CIFAR_STD, padding=0, flip=False, cutout=True)(x)
    torch.manual_seed(1)
    b = BatchAugment(CIFAR_MEAN, CIFAR_STD, padding=0, flip=False, cutout=16)(x)
    assert torch.equal(a, b) and (a == 0).any()


@pytest.mark.parametrize("spec", ["nope", "rand-m11-n2", "rand-m9", "rand-m9-n0"])
def test_bad_strong_augment_names_are_clear_errors(spec):
    with pytest.raises(ValueError, match="AutoAugment policy|RandAugment"):
        strong_augment(spec)
    with pytest.raises(RecipeError, match=r"data.autoaugment=.*rand-mM-nN"):
        check_recipe(apply_overrides(load_recipe("cifar10_lt"), [f"data.autoaugment={spec}"]))
