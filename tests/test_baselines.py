"""Stage-1 baselines and cfg handling against independent formulas / hand-written two-pass SAM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401
from ccsam_zoo.ccsam import STAGE1_METHODS, STAGE2_METHODS, build_stage1, build_stage2, stage1_defaults
from ccsam_zoo.ccsam.losses import drw_weights, ldam_margins, mixup, soft_cross_entropy
from ccsam_zoo.models import FeaturesAndLogits

COUNTS = [1000, 300, 80, 20, 5]


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0, head="linear"):
    torch.manual_seed(seed)
    m = timm.create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 6, 8), head=head)
    return FeaturesAndLogits(m).double().train()


def _batch(seed=1, n=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, len(COUNTS), (n,), generator=g)


def _run(cfg, net, x, y, epoch=0, total=200):
    method = build_stage1(cfg, COUNTS)
    method.set_epoch(epoch, total)
    out = method.forward_backward(net, x, y, None)
    return out, {n: p.grad.clone() for n, p in net.named_parameters()}


def _ref(net, x, loss_fn):
    ref = copy.deepcopy(net)
    _, logits = ref(x)
    loss = loss_fn(logits, ref)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in ref.named_parameters()}


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la["loss"] if isinstance(la, dict) else la, lb, rtol=1e-10, atol=1e-12)
    for n in gb:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-9, atol=1e-12, msg=n)


def test_ce():
    net, (x, y) = _net(), _batch()
    ref = _ref(net, x, lambda lo, _: F.cross_entropy(lo, y))
    _assert_same(_run({"name": "ce"}, net, x, y), ref)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_balanced_softmax_is_ce_on_logits_plus_tau_log_prior(tau):
    net, (x, y) = _net(), _batch()
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)

    def loss(lo, _):
        adj = lo + tau * prior.log()
        return (torch.logsumexp(adj, 1) - adj.gather(1, y[:, None]).squeeze(1)).mean()

    ref = _ref(net, x, loss)
    _assert_same(_run({"name": "balanced_softmax", "tau": tau}, net, x, y), ref)


def test_ldam_margins_and_drw_weights():
    m = ldam_margins(COUNTS, 0.5)
    assert m.max() == pytest.approx(0.5) and int(m.argmax()) == len(COUNTS) - 1
    for i in range(len(COUNTS)):
        assert m[i] / m[-1] == pytest.approx((COUNTS[-1] / COUNTS[i]) ** 0.25)  # m_c proportional to n_c^(-1/4)
    w = drw_weights(COUNTS, 0.9999)
    eff = torch.tensor([(1 - 0.9999**n) / (1 - 0.9999) for n in COUNTS], dtype=torch.float64)  # effective numbers
    assert w.sum() == pytest.approx(len(COUNTS))
    torch.testing.assert_close(w / w[0], eff[0] / eff)


class _KaidicNormedLinear(torch.nn.Module):
    """kaidic/LDAM-DRW models/resnet_cifar.py NormedLinear, written from its definition: weight (in, out)."""

    def __init__(self, weight_in_out):
        super().__init__()
        self.weight = torch.nn.Parameter(weight_in_out.clone())

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


def _kaidic_ldam_loss(x, target, cls_num_list, weight, max_m=0.5, s=30):
    """kaidic/LDAM-DRW losses.py LDAMLoss.forward, line by line (numpy margins, uint8 index, torch.where)."""
    m_list = 1.0 / np.sqrt(np.sqrt(np.array(cls_num_list, dtype=np.float64)))
    m_list = torch.from_numpy(m_list * (max_m / np.max(m_list))).to(x.dtype)
    index = torch.zeros_like(x, dtype=torch.uint8)
    index.scatter_(1, target.data.view(-1, 1), 1)
    batch_m = torch.matmul(m_list[None, :], index.to(x.dtype).transpose(0, 1)).view((-1, 1))
    output = torch.where(index.bool(), x - batch_m, x)
    return F.cross_entropy(s * output, target, weight=weight)


def _kaidic_drw(epoch, cls_num_list):
    """kaidic/LDAM-DRW cifar_train.py, train_rule == 'DRW': idx = epoch // 160, betas = [0, 0.9999]."""
    beta = [0, 0.9999][epoch // 160]
    effective_num = 1.0 - np.power(beta, cls_num_list)
    w = (1.0 - beta) / np.array(effective_num)
    return torch.from_numpy(w / np.sum(w) * len(cls_num_list))


@pytest.mark.parametrize("epoch", [10, 159, 160, 170])
def test_ldam_drw_equals_kaidic_normed_linear_and_ldam_loss(epoch):
    net, (x, y) = _net(head="cosine"), _batch()
    ref = copy.deepcopy(net)
    head = _KaidicNormedLinear(ref.head.weight.detach().T)
    z, _ = ref(x)
    loss = _kaidic_ldam_loss(head(z), y, COUNTS, _kaidic_drw(epoch, COUNTS))
    loss.backward()
    want = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None and "head" not in n}
    want["model.fc.weight"] = head.weight.grad.T
    out, got = _run({"name": "ldam_drw"}, net, x, y, epoch=epoch, total=200)
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-10, atol=1e-12)
    for n, g in want.items():
        torch.testing.assert_close(got[n], g, rtol=1e-9, atol=1e-12, msg=n)
    # the head's output is kaidic's cosine times its scale
    torch.testing.assert_close(net.head(z.detach()) / net.head.scale, head(z.detach()))


def test_ldam_drw_refuses_a_linear_head_and_scales_drw_to_short_schedules():
    net, (x, y) = _net(head="linear"), _batch()
    with pytest.raises(ValueError, match="cosine"):
        _run({"name": "ldam_drw"}, net, x, y)
    method = build_stage1({"name": "ldam_drw"}, COUNTS)
    method.set_epoch(0, 24)
    assert method.drw_epoch == 19  # 80% of the stage, as 160 of 200
    method.set_epoch(18, 24)
    assert method.weights is None
    method.set_epoch(19, 24)
    torch.testing.assert_close(method.weights, _kaidic_drw(160, COUNTS))


def test_kaidic_normed_linear_init_has_unit_rows():
    from ccsam_zoo.models.heads import NormedLinear

    head = NormedLinear(64, 10)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_two_pass_matches_hand_computation(adaptive):
    net, (x, y) = _net(seed=2), _batch(seed=3)
    ref = copy.deepcopy(net)
    params = [p for p in ref.parameters()]
    _, lo = ref(x)
    g = torch.autograd.grad(F.cross_entropy(lo, y), params)
    rho = 0.05
    if adaptive:
        norm = torch.sqrt(sum(((p.abs() * t) ** 2).sum() for p, t in zip(params, g)))
        eps = [rho * p.detach() ** 2 * t / norm for p, t in zip(params, g)]
    else:
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        eps = [rho * t / norm for t in g]
    bn = {k: v.clone() for k, v in ref.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    _, lo2 = ref(x)
    loss = F.cross_entropy(lo2, y)
    loss.backward()
    orig = copy.deepcopy(net)
    got_out, got = _run({"name": "sam", "rho": rho, "adaptive": adaptive}, net, x, y)
    torch.testing.assert_close(got_out["loss"], loss.detach())
    for (n, _), q in zip(ref.named_parameters(), params):
        torch.testing.assert_close(got[n], q.grad, rtol=1e-9, atol=1e-12, msg=n)
    for k, v in bn.items():  # BatchNorm statistics: updated by the first pass only
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0, msg=k)
    for p, q in zip(net.parameters(), orig.parameters()):  # weights restored exactly
        assert torch.equal(p, q)


def test_mixup_targets_and_loss():
    torch.manual_seed(0)
    x, y = _batch(n=12)
    mixed, targets, y_a, y_b, lam = mixup(x, y, 1.0, len(COUNTS))
    assert 0 <= lam <= 1 and torch.equal(y_a, y)
    torch.testing.assert_close(targets.sum(1), torch.ones(12))
    logits = torch.randn(12, len(COUNTS))
    ref = lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
    torch.testing.assert_close(soft_cross_entropy(logits, targets, "mean"), ref)
    out = build_stage1({"name": "mixup"}, COUNTS).forward_backward(_net(), x, y, None)
    assert torch.isfinite(out["loss"]) and 0 <= float(out["acc"]) <= 1


def test_cfg_validation_and_defaults():
    with pytest.raises(ValueError, match="did you mean 'flat_ratio'"):
        build_stage1({"name": "ccsam", "flat_ratoi": 0.3}, COUNTS)
    with pytest.raises(ValueError, match="did you mean 'ccsam'"):
        build_stage1({"name": "ccsm"}, COUNTS)
    with pytest.raises(ValueError, match="norm must be one of"):
        build_stage1({"name": "ccsam", "norm": "layer"}, COUNTS)
    with pytest.raises(ValueError, match="scale must be float"):
        build_stage1({"name": "ccsam", "scale": "1e-6"}, COUNTS)
    with pytest.raises(ValueError, match="no presets"):
        build_stage1({"name": "ce", "preset": "paper"}, COUNTS)
    with pytest.raises(ValueError, match="did you mean 'adv_lambda'"):
        build_stage2({"name": "ccsam_adv", "adv_lamda": 1.0}, COUNTS)
    assert build_stage1({"name": "ccsam"}, [5] * 10).cfg["flat_ratio"] == 0.3
    assert build_stage1({"name": "ccsam"}, [5] * 100).cfg["flat_ratio"] == 0.5
    assert build_stage1({"name": "ccsam", "flat_ratio": 0.1}, [5] * 100).cfg["flat_ratio"] == 0.1
    off = stage1_defaults("ccsam", "official", num_classes=10)
    assert (off["scale"], off["norm"], off["flat_ratio"], off["mixup_alpha"]) == (1e-6, "per_tensor", 0.3, 1.0)
    for name in STAGE1_METHODS:
        assert build_stage1(stage1_defaults(name, num_classes=5), COUNTS).name == name
    for name in STAGE2_METHODS:
        assert build_stage2({"name": name}, COUNTS).name == name
