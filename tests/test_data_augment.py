"""Batched uint8 augmentation: shapes, real shifts and flips, exact normalisation, seeding, Cutout, AutoAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ccsam_zoo.data import BatchAugment
from ccsam_zoo.models import CIFAR_MEAN, CIFAR_STD


def _batch(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _normalise_reference(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ToTensor + Normalize on PIL images: the usual CIFAR eval pipeline."""
    out = []
    for img in x:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        out.append(TF.normalize(TF.to_tensor(pil), CIFAR_MEAN, CIFAR_STD))
    return torch.stack(out)


def test_eval_path_is_exact_normalisation():
    x = _batch()
    out = BatchAugment(CIFAR_MEAN, CIFAR_STD, augment=False)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, _normalise_reference(x), rtol=0, atol=1e-6)
    torch.manual_seed(0)
    again = BatchAugment(CIFAR_MEAN, CIFAR_STD, augment=False)(x)
    assert torch.equal(out, again)  # no randomness


def test_train_path_is_a_shifted_crop_with_flips():
    x = _batch(32)
    torch.manual_seed(1)
    out = BatchAugment(CIFAR_MEAN, CIFAR_STD)(x)
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.float32
    ref = _normalise_reference(x)
    pad_value = ((0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).view(3, 1, 1)
    offsets, flips = [], []
    for i in range(32):
        padded = pad_value.expand(3, 40, 40).clone()
        padded[:, 4:36, 4:36] = ref[i]
        found = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.allclose(
                out[i], (padded.flip(-1) if flip else padded)[:, dy : dy + 32, dx : dx + 32], atol=1e-6
            )
        ]
        assert len(found) == 1, f"sample {i} is not a unique pad-4 crop (+ flip) of its input: {found}"
        offsets.append(found[0][:2])
        flips.append(found[0][2])
    assert len(set(offsets)) > 5 and any(o != (4, 4) for o in offsets)  # crops really shift
    assert 0 < sum(flips) < 32  # some flipped, some not


def test_seeding_reproduces_and_changes_augmentation():
    x = _batch()
    aug = BatchAugment(CIFAR_MEAN, CIFAR_STD, cutout=8)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    torch.manual_seed(8)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutout_erases_a_clipped_square():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)  # normalises to non-zero everywhere
    torch.manual_seed(0)
    out = BatchAugment(CIFAR_MEAN, CIFAR_STD, padding=0, flip=False, cutout=16)(x)
    zero = (out == 0).all(1)  # [B, H, W]
    assert torch.equal(zero, (out == 0).any(1))  # all channels erased together
    for mask in zero:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert int(mask.sum()) == h * w  # a rectangle
        assert 8 <= h <= 16 and 8 <= w <= 16  # a 16 px square, clipped at the border to at least half
    assert (zero.sum((1, 2)) == 256).any()  # some squares fully inside


def test_autoaugment_runs_per_image_on_uint8():
    x = _batch(8)
    torch.manual_seed(0)
    aug = BatchAugment(CIFAR_MEAN, CIFAR_STD, autoaugment=True, padding=0, flip=False)
    out = aug(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert "autoaugment" in repr(aug)
    with pytest.raises(ValueError, match="unknown AutoAugment policy"):
        BatchAugment(CIFAR_MEAN, CIFAR_STD, autoaugment="nope")


def test_float_input_and_bad_shape():
    x = _batch(4)
    aug = BatchAugment(CIFAR_MEAN, CIFAR_STD, augment=False)
    xf = x.float() / 255
    before = xf.clone()
    torch.testing.assert_close(aug(xf), aug(x), rtol=0, atol=1e-6)
    assert torch.equal(xf, before)  # the input is left alone
    with pytest.raises(ValueError, match="expected a batch"):
        aug(x[0])
    assert np.isfinite(aug(x).numpy()).all()
