"""Stage 2 (adversarial features, Eq. 12-14) against per-class autograd loops."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401
from ccsam_zoo.ccsam import build_stage2
from ccsam_zoo.ccsam.adversarial import adversarial_class_weights, adversarial_features, progressive_weight
from ccsam_zoo.models import FeaturesAndLogits

COUNTS = [500, 120, 40, 9, 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _frozen_net(seed=0):
    torch.manual_seed(seed)
    net = FeaturesAndLogits(timm.create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 6, 8))).double()
    for p in net.model.parameters():
        p.requires_grad_(False)
    for p in net.head.parameters():
        p.requires_grad_(True)
    return net.train()


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 1, 2, 3, 4] * 3 + [0, 2, 4])
    return torch.randn(len(y), 3, 8, 8, generator=g, dtype=torch.float64), y


def _reference(net, x, y, *, lam, a_t, variant):
    """Authors' per-class loop ("official") or the paper's Eq. 12-14 ("paper"), written out."""
    with torch.no_grad():
        z, _ = net(x)
    head = net.head
    w_c = torch.tensor([math.log(max(COUNTS) / n + 0.01) / 2 for n in COUNTS], dtype=torch.float64)
    z_adv = z.clone()
    if variant == "official":
        for c in torch.unique(y).tolist():
            zl = z.clone().requires_grad_(True)
            idx = y == c
            g = torch.autograd.grad(F.cross_entropy(head(zl)[idx], y[idx]), zl)[0]  # d(mean_{S_c} l)/dZ
            z_adv = z_adv + lam * w_c[c] * g / g.norm()  # Frobenius norm over the rows of S_c
        adv = (w_c[y] * F.cross_entropy(head(z_adv), y, reduction="none")).mean()
    else:
        zl = z.clone().requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(head(zl), y), zl)[0]
        z_adv = z + lam * g / g.norm()  # Eq. 12, one norm over the batch gradient
        adv = F.cross_entropy(head(z_adv), y)
    loss = (1 - a_t) * F.cross_entropy(head(z), y) + a_t * adv  # Eq. 14
    return loss, torch.autograd.grad(loss, [head.weight, head.bias])


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_stage2_matches_loop(variant):
    x, y = _batch()
    net = _frozen_net()
    ref_net = copy.deepcopy(net)
    method = build_stage2({"name": "ccsam_adv", "preset": variant, "adv_lambda": 0.7, "bn": "eval"}, COUNTS)
    method.set_epoch(3, 10)  # a_t = 4 / 10
    ref_net.model.eval()
    ref_loss, ref_grads = _reference(ref_net, x, y, lam=0.7, a_t=0.4, variant=variant)
    out = method.forward_backward(net, x, y, None)
    torch.testing.assert_close(out["loss"], ref_loss.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(net.head.weight.grad, ref_grads[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net.head.bias.grad, ref_grads[1], rtol=1e-9, atol=1e-12)
    assert float(out["adv_weight"]) == pytest.approx(0.4)
    assert all(p.grad is None for p in net.model.parameters() if not p.requires_grad)


def test_norms_weights_and_schedule():
    g = torch.randn(6, 4, dtype=torch.float64)
    z = torch.zeros(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    step = adversarial_features(z, g, y, lam=0.5, norm="sample")
    torch.testing.assert_close(step.norm(dim=1), torch.full((6,), 0.5, dtype=torch.float64))
    step = adversarial_features(z, g, y, lam=0.5, norm="batch")
    torch.testing.assert_close(step.norm(), torch.tensor(0.5, dtype=torch.float64))
    step = adversarial_features(z, g, y, lam=0.5, norm="class")
    for c in range(3):
        torch.testing.assert_close(step[y == c].norm(), torch.tensor(0.5, dtype=torch.float64))
    w = adversarial_class_weights([5000, 50])
    assert w[0] == pytest.approx(math.log(1.01) / 2) and w[1] == pytest.approx(math.log(100.01) / 2)
    assert [progressive_weight(e, 30, 0.3) for e in (0, 8, 29)] == [pytest.approx(1 / 30), 0.3, 0.3]
    assert progressive_weight(29, 30) == 1.0
    assert build_stage2({"name": "ccsam_adv"}, [5] * 100).cfg["up_limit"] == 0.3
    assert build_stage2({"name": "ccsam_adv"}, [5] * 10).cfg["up_limit"] == 1.0


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_bn_modes(bn):
    x, y = _batch()
    net = _frozen_net()
    before = copy.deepcopy(net.state_dict())
    for name in ("crt", "ccsam_adv"):
        build_stage2({"name": name, "bn": bn}, COUNTS).forward_backward(net, x, y, None)
    changed = not torch.equal(before["model.bn1.running_mean"], net.state_dict()["model.bn1.running_mean"])
    assert changed == (bn == "train")


def test_crt_and_none():
    x, y = _batch()
    net = _frozen_net()
    out = build_stage2({"name": "crt"}, COUNTS).forward_backward(net, x, y, None)
    net.model.eval()
    _, logits = net(x)
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, y).detach())
    net.zero_grad(set_to_none=True)
    none = build_stage2({"name": "none"}, COUNTS)
    assert not none.active and none.sampler == "class_balanced"
    none.forward_backward(net, x, y, None)
    assert all(p.grad is None for p in net.parameters())
