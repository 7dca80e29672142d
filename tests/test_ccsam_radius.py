"""The acting CC-SAM (``method=ccsam_block``: SAM-size class-conditional radius over the last stage + head)
against hand-written references: davda54/sam's first step per class, and plain SAM at the same radius."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.ccsam import build_stage1
from ccsam_zoo.ccsam.presets import METHODS, stage1_defaults
from ccsam_zoo.models import FeaturesAndLogits

COUNTS = [400, 120, 40, 9, 1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0, classes=5):
    torch.manual_seed(seed)
    model = timm.create_model("resnet20_cifar", num_classes=classes, widths=(4, 6, 8))
    net = FeaturesAndLogits(model).to(torch.float64)
    with torch.no_grad():  # non-trivial BatchNorm affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.train()


def _batch(labels, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor(labels)


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _davda54_first_step(grads, rho):
    """davda54/sam ``SAM.first_step``: ``scale = rho / (grad_norm + 1e-12)``, ``e_w = p.grad * scale`` with
    ``grad_norm`` the 2-norm over every parameter's gradient (non-adaptive)."""
    grad_norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
    scale = rho / (grad_norm + 1e-12)
    return [g * scale for g in grads]


def _hand_acting_ccsam(net, x, y, pattern, rho, counts):
    """Per class c: g_c of the class-mean loss over the chosen parameters, davda54's first step with radius
    rho * (n_ref / max(n_c - 1, 1))^(1/4) (n_ref: geometric mean of max(n - 1, 1)), the class's samples at
    w + e_c; gradient of sum over classes of sum_{i in c} l_i(w + e_c) / B (SAM's mean over the batch)."""
    import re

    chosen = [p for n, p in net.named_parameters() if re.search(pattern, n[len("model."):])]
    n1 = [max(n - 1, 1) for n in counts]
    n_ref = math.exp(sum(math.log(v) for v in n1) / len(n1))
    bn = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    _, logits = net(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    steps = {}
    for c in torch.unique(y).tolist():
        g = torch.autograd.grad(losses[y == c].mean(), chosen, retain_graph=True)
        steps[c] = _davda54_first_step(g, rho * (n_ref / n1[c]) ** 0.25)
    net.zero_grad()
    for c, e in steps.items():
        with torch.no_grad():
            for p, d in zip(chosen, e):
                p.add_(d)
        _, lo = net(x)
        (F.cross_entropy(lo[y == c], y[y == c], reduction="sum") / len(y)).backward()
        with torch.no_grad():
            for p, d in zip(chosen, e):
                p.sub_(d)
    net.load_state_dict(bn, strict=False)  # the reference does not guard BatchNorm: restore by hand
    return _grads(net), steps


def test_block_preset_is_the_acting_configuration():
    cfg = stage1_defaults("ccsam", "block")
    assert (cfg["mode"], cfg["perturbation"], cfg["norm"], cfg["flat_ratio"]) == ("block", "radius", "global", 1.0)
    assert (cfg["mixup_alpha"], cfg["class_weighting"], cfg["params"]) == (0.0, "instance", r"^(layer3|fc)\.")
    assert METHODS["ccsam_block"][0] == {"name": "ccsam", "preset": "block"}
    with pytest.raises(ValueError, match="perturbation='radius'.*needs mode='block'"):
        build_stage1({"name": "ccsam", "preset": "paper", "perturbation": "radius"}, COUNTS)


@pytest.mark.parametrize("pattern", [r"^(layer3|fc)\.", r"^fc\."])
def test_acting_ccsam_equals_davda54_first_step_per_class(pattern):
    net = _net()
    x, y = _batch([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 0, 1])
    ref_net = copy.deepcopy(net)
    rho = 0.3
    ref, steps = _hand_acting_ccsam(ref_net, x, y, pattern, rho, COUNTS)
    method = build_stage1({"name": "ccsam", "preset": "block", "scale": rho, "params": pattern}, COUNTS)
    out = method.forward_backward(net, x, y, None)
    got = _grads(net)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-7, atol=1e-12, msg=n)
    # the radii really differ by class: tail classes are perturbed further (1 image -> n - 1 clamped to 1)
    norms = {c: math.sqrt(sum(float(d.square().sum()) for d in e)) for c, e in steps.items()}
    n_ref = (399 * 119 * 39 * 8 * 1) ** (1 / 5)  # geometric mean of max(n - 1, 1)
    assert norms[4] > norms[2] > norms[0] and norms[0] == pytest.approx(rho * (n_ref / 399) ** 0.25, rel=1e-9)
    assert float(out["eps_ratio"]) > 1e-3  # not numerically inert


def test_acting_ccsam_on_balanced_data_is_plain_sam_at_the_same_radius():
    counts = [50, 50, 50]
    net = _net(3, classes=3)
    x, y = _batch([1] * 10, seed=4)  # one class: one ascent direction, as SAM's
    sam_net = copy.deepcopy(net)
    build_stage1({"name": "sam", "rho": 0.2}, counts).forward_backward(sam_net, x, y, None)
    build_stage1({"name": "ccsam", "preset": "block", "scale": 0.2, "params": "."}, counts).forward_backward(
        net, x, y, None
    )
    ref, got = _grads(sam_net), _grads(net)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-7, atol=1e-12, msg=n)
