"""Block mode (true per-class gradients of several layers) against hand-written two-pass SAM loops."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.ccsam import build_stage1
from ccsam_zoo.ccsam.block import select_params
from ccsam_zoo.models import FeaturesAndLogits

COUNTS = [400, 120, 40, 9, 1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0, dtype=torch.float64, norm="batchnorm"):
    torch.manual_seed(seed)
    model = timm.create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 6, 8), norm=norm)
    net = FeaturesAndLogits(model).to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.train()


def _batch(labels, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), 3, 8, 8, generator=g).to(dtype), torch.tensor(labels)


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _bn_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def _hand_ccsam(net, x, y, names, *, scale, norm, flat_ratio, sub_batches=False):
    """Class-conditional SAM written out: per-class ascent gradients, Eq. 8-9, descent at w + eps_c."""
    params = dict(net.named_parameters())
    sel = [params["model." + n] for n in names]
    k = sum(p.numel() for p in sel)
    wnorm = math.sqrt(sum(p.detach().square().sum().item() for p in sel))
    B = len(y)
    _, logits = net(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    eps = {}
    for c in torch.unique(y).tolist():
        g = torch.autograd.grad(losses[y == c].mean(), sel, retain_graph=True)
        n1 = max(COUNTS[c] - 1, 1)
        gn_all = math.sqrt(sum(t.square().sum().item() for t in g))
        out = []
        for t in g:
            gn = gn_all if norm == "global" else t.norm().item()
            rho = scale * math.sqrt(wnorm / (2 * gn)) * k**-0.25 * n1**-0.25  # Eq. 8
            out.append(math.sqrt(k) * rho * t / gn)  # Eq. 9
        eps[c] = out
    ((1 - flat_ratio) * losses.mean()).backward()
    bn = _bn_state(net)
    for c, e in eps.items():
        with torch.no_grad():
            for p, d in zip(sel, e):
                p.add_(d)
        if sub_batches:  # block_batch="class": the class's samples alone go through the network
            _, lo = net(x[y == c])
        else:
            _, lo = net(x)
            lo = lo[y == c]
        (flat_ratio * F.cross_entropy(lo, y[y == c], reduction="sum") / B).backward()
        with torch.no_grad():
            for p, d in zip(sel, e):
                p.sub_(d)
    net.load_state_dict(bn, strict=False)  # the reference does not guard BatchNorm: restore by hand
    return _grads(net)


def test_select_params_last_blocks_and_pattern():
    net = _net()
    names = [n for n, _ in select_params(net.model, blocks=1)]
    assert names[-2:] == ["fc.weight", "fc.bias"] and all(n.startswith(("layer3.2", "fc")) for n in names)
    assert [n for n, _ in select_params(net.model, 0)] == ["fc.weight", "fc.bias"]
    assert all("bn" in n for n, _ in select_params(net.model, pattern=r"\.bn\d\."))
    with pytest.raises(ValueError):
        select_params(net.model, pattern="nothing_matches")


def test_single_class_equals_plain_sam_with_eq8_radius():
    net = _net()
    x, y = _batch([2] * 12)
    ref_net = copy.deepcopy(net)
    names = [n for n, _ in select_params(net.model, blocks=1)]
    params = dict(ref_net.named_parameters())
    sel = [params["model." + n] for n in names]
    k = sum(p.numel() for p in sel)
    wnorm = torch.sqrt(sum(p.detach().square().sum() for p in sel))
    _, lo = ref_net(x)
    g = torch.autograd.grad(F.cross_entropy(lo, y), sel)
    gnorm = torch.sqrt(sum(t.square().sum() for t in g))
    rho = 0.1 * torch.sqrt(wnorm / (2 * gnorm)) * k**-0.25 * (COUNTS[2] - 1) ** -0.25  # Eq. 8
    with torch.no_grad():
        for p, t in zip(sel, g):
            p.add_(math.sqrt(k) * rho * t / gnorm)  # plain SAM with radius sqrt(k) rho
    _, lo2 = ref_net(x)
    F.cross_entropy(lo2, y).backward()
    ref = _grads(ref_net)

    method = build_stage1({"name": "ccsam", "preset": "paper", "mode": "block", "blocks": 1, "scale": 0.1,
                           "max_ratio": None}, COUNTS)
    method.forward_backward(net, x, y, None)
    got = _grads(net)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-7, atol=1e-12, msg=n)


@pytest.mark.parametrize("norm,batch", [("per_tensor", "full"), ("global", "full"), ("per_tensor", "class")])
def test_block_mode_equals_hand_written_loop(norm, batch):
    # per-class sub-batches are the same objective only without train-mode BatchNorm: GroupNorm there
    gn = "groupnorm" if batch == "class" else "batchnorm"
    net = _net(seed=3, norm=gn)
    x, y = _batch([0, 0, 0, 1, 1, 2, 0, 3, 1, 4, 0, 2], seed=4)
    names = [n for n, _ in select_params(net.model, blocks=2)]
    ref_net = copy.deepcopy(net)
    before = _bn_state(net)
    ref = _hand_ccsam(ref_net, x, y, names, scale=0.05, norm=norm, flat_ratio=0.6, sub_batches=batch == "class")
    method = build_stage1({"name": "ccsam", "mode": "block", "blocks": 2, "scale": 0.05, "norm": norm,
                           "flat_ratio": 0.6, "mixup_alpha": 0.0, "max_ratio": None, "block_batch": batch}, COUNTS)
    calls = []
    hook = net.model.layer1[0].conv1.register_forward_hook(lambda *a: calls.append(1))
    out = method.forward_backward(net, x, y, None)
    hook.remove()
    # "full": the trunk runs once (clean pass), later passes replay it; "class": once per class and the clean pass
    assert len(calls) == (1 if batch == "full" else 1 + len(torch.unique(y)))
    got = _grads(net)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-7, atol=1e-12, msg=n)
    # weights restored exactly, BatchNorm running statistics updated exactly once (= one train forward)
    for (n, p), (_, q) in zip(net.named_parameters(), ref_net.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14, msg=n)
    once = copy.deepcopy(_net(seed=3, norm=gn))
    once.load_state_dict(before, strict=False)
    with torch.no_grad():
        once(x)
    for key, v in _bn_state(once).items():
        torch.testing.assert_close(net.state_dict()[key], v, rtol=0, atol=0, msg=key)
    assert all(torch.isfinite(v) for v in out.values())


def test_block_mode_head_only_equals_closed_form():
    """blocks=0 (head only) with true per-class gradients == the head-mode closed form (BatchNorm net)."""
    x, y = _batch([0, 1, 1, 2, 0, 0, 3, 4, 0, 1], seed=5)
    grads = []
    for mode in ("head", "block"):
        net = _net(seed=6)
        method = build_stage1({"name": "ccsam", "preset": "paper", "mode": mode, "scale": 0.3, "norm": "per_tensor",
                               "flat_ratio": 0.7, "class_weighting": "class", "max_ratio": 0.2}, COUNTS)
        method.forward_backward(net, x, y, None)
        grads.append(_grads(net))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-7, atol=1e-12, msg=n)


def test_class_batches_are_refused_under_train_mode_batchnorm():
    x, y = _batch([0, 0, 1, 2, 3, 4], seed=7)
    method = build_stage1({"name": "ccsam", "mode": "block", "blocks": 1, "block_batch": "class"}, COUNTS)
    with pytest.raises(ValueError, match="block_batch='class' under train-mode BatchNorm"):
        method.forward_backward(_net(), x, y, None)
    method.forward_backward(_net().eval(), x, y, None)  # frozen statistics: each sample normalised alike


def test_class_batches_groups_and_ablations_are_finite():
    x, y = _batch([0, 0, 0, 1, 1, 2, 3, 4], seed=7, dtype=torch.float32)
    for extra in ({"groups": 2}, {"perturbation": "magnitude"},
                  {"perturbation": "direction", "scale": 0.01}, {"params": r"^layer3\.2\.conv2|^fc", "blocks": 0}):
        net = _net(dtype=torch.float32)
        before = _bn_state(net)
        method = build_stage1({"name": "ccsam", "mode": "block", "blocks": 1} | extra, COUNTS)
        out = method.forward_backward(net, x, y, None)
        assert all(torch.isfinite(v).all() for v in out.values())
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        key = "model.bn1.num_batches_tracked"
        assert int(net.state_dict()[key]) == int(before[key]) + 1
    net = _net(dtype=torch.float32, norm="groupnorm")  # per-class sub-batches with frequency groups
    method = build_stage1({"name": "ccsam", "mode": "block", "blocks": 1, "block_batch": "class", "groups": 2}, COUNTS)
    out = method.forward_backward(net, x, y, None)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_bf16_autocast_block_and_head_finite():
    x, y = _batch([0, 1, 2, 0, 0, 3, 1, 4], seed=8, dtype=torch.float32)
    for mode in ("head", "block"):
        net = _net(dtype=torch.float32)
        method = build_stage1({"name": "ccsam", "preset": "paper", "mode": mode, "blocks": 1 if mode == "block" else 0},
                              COUNTS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method.forward_backward(net, x, y, None)
        assert all(torch.isfinite(v).all() for v in out.values())
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_frozen_bn_stats_restores_momentum_and_counter():
    from ccsam_zoo.ccsam._dist import frozen_bn_stats

    bn = torch.nn.BatchNorm1d(3, momentum=None)  # cumulative average: uses num_batches_tracked
    bn(torch.randn(8, 3))
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_bn_stats(bn):
        out = bn(torch.randn(8, 3) * 5 + 2)
    assert bn.momentum is None and torch.isfinite(out).all()
    for k, v in bn.state_dict().items():
        assert torch.equal(v, state[k]), k
