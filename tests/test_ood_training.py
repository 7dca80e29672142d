"""Training-time options for open-set separation without outside images: LogitNorm (Wei et al., ICML 2022) and
outlier exposure (Hendrycks et al., ICLR 2019) on patch-shuffled training images.

Every check is against an independent re-implementation written here from the papers / reference code
(hongxin001/logitnorm_ood ``LogitNormLoss``; hendrycks/outlier-exposure's OE term), gradients included, float64.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.ccsam import build_stage1, perturbed_head_logits, stage1_defaults
from ccsam_zoo.ccsam.losses import logit_norm, outlier_exposure, patch_shuffle
from ccsam_zoo.models import FeaturesAndLogits
from ccsam_zoo.models.heads import linear_head_params

COUNTS = [1000, 300, 80, 20, 5]
TAU = 0.04

pytestmark = pytest.mark.usefixtures("one_thread")


class LogitNormLoss(torch.nn.Module):
    """hongxin001/logitnorm_ood (``common/loss_function.py``), as published."""

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norms = torch.norm(x, p=2, dim=-1, keepdim=True) + 1e-7
        logit_norm = torch.div(x, norms) / self.t
        return F.cross_entropy(logit_norm, target)


def _ref_soft(x: torch.Tensor, targets: torch.Tensor, t: float) -> torch.Tensor:
    """Per-sample soft-target CE on the reference's normalised logits (mixup targets)."""
    u = torch.div(x, torch.norm(x, p=2, dim=-1, keepdim=True) + 1e-7) / t
    return -(targets * torch.log_softmax(u, dim=1)).sum(1)


def _targets(y, perm, lam):
    """Mixup targets as the trainer feeds them (float32 one-hots: the soft targets carry float32 rounding)."""
    return lam * F.one_hot(y, len(COUNTS)).float() + (1 - lam) * F.one_hot(y[perm], len(COUNTS)).float()


def _net(seed=0, norm="batchnorm"):
    torch.manual_seed(seed)
    m = timm.create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 6, 8), norm=norm)
    return FeaturesAndLogits(m).double().train()


def _batch(seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(COUNTS)  # every class present, class 4 once or more
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), y[torch.randperm(n, generator=g)]


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _assert_grads(got, ref, rtol=1e-8):
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=rtol, atol=1e-11, msg=n)


@pytest.mark.parametrize("t", [TAU, 1.0])
def test_logit_norm_loss_and_gradient_equal_the_reference(t):
    g = torch.Generator().manual_seed(0)
    x = (5 * torch.randn(16, 10, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(0, 10, (16,), generator=g)
    got = F.cross_entropy(logit_norm(x, t), y)
    (g_got,) = torch.autograd.grad(got, x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = LogitNormLoss(t)(x2, y)
    ref.backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_got, x2.grad, rtol=1e-10, atol=1e-14)
    # the loss cannot fall by scaling the logits (what makes plain CE over-confident)
    torch.testing.assert_close(F.cross_entropy(logit_norm(7.0 * x.detach(), t), y), got.detach(), rtol=1e-6, atol=0)
    assert F.cross_entropy(7.0 * x.detach(), y) != pytest.approx(F.cross_entropy(x.detach(), y).item())


def test_logit_norm_none_bf16_and_bad_tau():
    x = torch.randn(4, 3, dtype=torch.bfloat16)
    assert logit_norm(x, None).dtype == torch.float32 and torch.equal(logit_norm(x, None), x.float())
    out = logit_norm(x, 0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.full((4,), 2.0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"logit_norm_tau must be > 0 \(e\.g\. 0\.04"):
        logit_norm(x, 0.0)


def test_ce_with_logit_norm_equals_reference_step():
    net, (x, y) = _net(), _batch()
    ref_net = copy.deepcopy(net)
    out = build_stage1({"name": "ce", "logit_norm_tau": TAU}, COUNTS).forward_backward(net, x, y, None)
    _, logits = ref_net(x)
    loss = LogitNormLoss(TAU)(logits, y)
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-12, atol=0)
    _assert_grads(_grads(net), _grads(ref_net))
    # and it is not plain CE
    assert abs(out["loss"].item() - F.cross_entropy(logits.detach(), y).item()) > 1e-3


def test_mixup_with_logit_norm_equals_reference_step():
    net, (x, y) = _net(), _batch()
    ref_net = copy.deepcopy(net)
    torch.manual_seed(11)
    out = build_stage1({"name": "mixup", "logit_norm_tau": TAU}, COUNTS).forward_backward(net, x, y, None)
    torch.manual_seed(11)  # the same lam and permutation, drawn as losses.mixup draws them
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    perm = torch.randperm(x.shape[0])
    _, logits = ref_net(lam * x + (1 - lam) * x[perm])
    loss = _ref_soft(logits, _targets(y, perm, lam), TAU).mean()
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-10, atol=0)
    _assert_grads(_grads(net), _grads(ref_net))
    # = lam CE(y) + (1 - lam) CE(y[perm]) on the normalised logits, up to the float32 rounding of the targets
    mixed = lam * LogitNormLoss(TAU)(logits, y) + (1 - lam) * LogitNormLoss(TAU)(logits, y[perm])
    torch.testing.assert_close(out["loss"], mixed.detach(), rtol=1e-6, atol=0)


def _eq9_eps(z, y, W, b, counts, scale, loss_of_class):
    """eps_c (per-tensor norms, Eq. 8-9) of every class present, one autograd call per class."""
    C, D = W.shape
    k = C * D + C
    wnorm = math.sqrt(W.detach().square().sum().item() + b.detach().square().sum().item())
    eps = {}
    for c in torch.unique(y).tolist():
        Wc, bc = W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
        grads = torch.autograd.grad(loss_of_class(c, z.detach() @ Wc.T + bc), [Wc, bc])
        n1 = max(int(counts[c]) - 1, 1)
        out = []
        for gr in grads:
            gn = gr.norm().item()
            rho = scale * math.sqrt(wnorm / (2 * gn)) * k**-0.25 * n1**-0.25  # Eq. 8
            out.append(math.sqrt(k) * rho * gr / gn)  # Eq. 9
        eps[c] = out
    return eps


@pytest.mark.parametrize("soft", [False, True])
def test_head_closed_form_uses_the_logit_norm_gradient(soft):
    """The closed-form class perturbation under LogitNorm == Eq. 8-9 from autograd on the reference loss."""
    g = torch.Generator().manual_seed(2)
    B, D, C = 20, 6, len(COUNTS)
    z = torch.randn(B, D, generator=g, dtype=torch.float64)
    W, b = torch.randn(C, D, generator=g, dtype=torch.float64), 0.1 * torch.randn(C, generator=g, dtype=torch.float64)
    y = torch.arange(B) % C
    targets = None
    if soft:
        lam, perm = 0.6, torch.randperm(B, generator=g)
        targets = lam * F.one_hot(y, C).double() + (1 - lam) * F.one_hot(y[perm], C).double()

    def loss_of_class(c, logits):
        sel = y == c
        if targets is None:
            return LogitNormLoss(0.5)(logits[sel], y[sel])
        return _ref_soft(logits[sel], targets[sel], 0.5).mean()

    eps = _eq9_eps(z, y, W, b, torch.tensor(COUNTS), 1.0, loss_of_class)
    ref = torch.stack([z[j] @ (W + eps[int(y[j])][0]).T + b + eps[int(y[j])][1] for j in range(B)])
    got = perturbed_head_logits(z, y, W, b, COUNTS, scale=1.0, targets=targets, logit_norm_tau=0.5)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    plain = perturbed_head_logits(z, y, W, b, COUNTS, scale=1.0, targets=targets)
    assert (plain - got).abs().max() > 1e-2  # the CE direction would have been a different perturbation


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_ccsam_step_with_logit_norm_equals_reference_step(preset):
    """One CC-SAM step (head mode) with LogitNorm == the objective written out: clean term (mixup targets in
    the official preset), eps_c from the class gradients of the LogitNorm loss, the perturbed term."""
    net, (x, y) = _net(seed=3), _batch(seed=4)
    ref_net = copy.deepcopy(net)
    scale, f = 0.5, 0.7  # a perturbation that matters
    cfg = {"name": "ccsam", "preset": preset, "logit_norm_tau": TAU, "scale": scale, "flat_ratio": f,
           "class_weighting": "instance", "norm": "per_tensor"}
    torch.manual_seed(5)
    out = build_stage1(cfg, COUNTS).forward_backward(net, x, y, None)

    torch.manual_seed(5)
    xm, targets = x, None
    if preset == "official":  # mixup_alpha 1: same draws as losses.mixup
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        perm = torch.randperm(x.shape[0])
        xm = lam * x + (1 - lam) * x[perm]
        targets = _targets(y, perm, lam)
    z, logits = ref_net(xm)
    clean = LogitNormLoss(TAU)(logits, y) if targets is None else _ref_soft(logits, targets, TAU).mean()

    def loss_of_class(c, lo):  # g_c: the mixed loss (official, authors) or first-label LogitNorm CE (paper)
        sel = y == c
        if targets is None:
            return LogitNormLoss(TAU)(lo[sel], y[sel])
        return _ref_soft(lo[sel], targets[sel], TAU).mean()

    W, b = linear_head_params(ref_net.head)
    eps = _eq9_eps(z, y, W, b, torch.tensor(COUNTS), scale, loss_of_class)
    ew = torch.stack([eps[int(c)][0] for c in y])  # constants (SAM)
    eb = torch.stack([eps[int(c)][1] for c in y])
    pert_logits = torch.einsum("bcd,bd->bc", W[None] + ew, z) + b + eb
    pert = LogitNormLoss(TAU)(pert_logits, y)  # first-label CE at w + eps_c (both presets)
    loss = (1 - f) * clean + f * pert
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-9, atol=0)
    _assert_grads(_grads(net), _grads(ref_net), rtol=1e-7)


def test_ccsam_block_mode_head_only_equals_closed_form_under_logit_norm():
    """Block mode's autograd class gradients (head only) agree with the closed form's LogitNorm residual."""
    x, y = _batch(seed=6, n=10)
    grads = []
    for mode in ("head", "block"):
        net = _net(seed=7)
        method = build_stage1({"name": "ccsam", "preset": "paper", "mode": mode, "scale": 0.3, "flat_ratio": 0.6,
                               "logit_norm_tau": TAU}, COUNTS)
        method.forward_backward(net, x, y, None)
        grads.append(_grads(net))
    _assert_grads(grads[1], grads[0], rtol=1e-7)


def test_logit_norm_settings_are_validated():
    assert stage1_defaults("ccsam")["logit_norm_tau"] is None
    assert stage1_defaults("ce")["logit_norm_tau"] is None and stage1_defaults("mixup")["logit_norm_tau"] is None
    with pytest.raises(ValueError, match=r"ccsam: logit_norm_tau must be a finite number > 0 \(LogitNorm's temp"):
        build_stage1({"name": "ccsam", "logit_norm_tau": -0.1}, COUNTS)
    with pytest.raises(ValueError, match="ce: logit_norm_tau must be float, got '0.04'"):
        build_stage1({"name": "ce", "logit_norm_tau": "0.04"}, COUNTS)
    with pytest.raises(ValueError, match=r"logit adjustment \(tau\) and LogitNorm \(logit_norm_tau\) cannot be"):
        build_stage1({"name": "ccsam", "tau": 1.0, "logit_norm_tau": TAU}, COUNTS)
    with pytest.raises(ValueError, match="balanced_softmax: unknown cfg key 'logit_norm_tau'"):
        build_stage1({"name": "balanced_softmax", "logit_norm_tau": TAU}, COUNTS)
    assert build_stage1({"name": "ccsam", "logit_norm_tau": 1}, COUNTS).cfg["logit_norm_tau"] == 1


def test_recipe_override_reaches_the_method_and_bad_values_name_the_key():
    from ccsam_zoo.training.config import RecipeError, apply_overrides, check_recipe, load_recipe, stage_methods

    recipe = apply_overrides(load_recipe("cifar10_lt_cpu"), ["stage1.method.logit_norm_tau=0.04"])
    check_recipe(recipe)
    assert stage_methods(recipe)[0] == {"name": "ccsam", "preset": "official", "logit_norm_tau": 0.04}
    bad = apply_overrides(load_recipe("cifar10_lt_cpu"), ["stage1.method.logit_norm_tau=0"])
    with pytest.raises(RecipeError, match="logit_norm_tau must be a finite number > 0"):
        check_recipe(bad)


# ------------------------------------------------------------------ outlier exposure on patch-shuffled images


def _ref_patch_shuffle(images, grid):
    """Patch g x g of each image, moved to place k where ``argsort(rand)`` puts it (the same draws), by loops."""
    B, _, H, W = images.shape
    ph, pw = H // grid, W // grid
    order = torch.argsort(torch.rand(B, grid * grid), dim=1)
    out = torch.empty_like(images)
    for i in range(B):
        for k in range(grid * grid):
            src = int(order[i, k])
            r, c = divmod(k, grid)
            sr, sc = divmod(src, grid)
            patch = images[i, :, sr * ph:(sr + 1) * ph, sc * pw:(sc + 1) * pw]
            out[i, :, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = patch
    return out


def _hendrycks_oe(x):
    """hendrycks/outlier-exposure (train.py): ``-(x.mean(1) - torch.logsumexp(x, dim=1)).mean()`` (before 0.5)."""
    return -(x.mean(1) - torch.logsumexp(x, dim=1)).mean()


def test_patch_shuffle_moves_whole_patches_within_each_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    got = patch_shuffle(x, 4)
    torch.manual_seed(1)
    torch.testing.assert_close(got, _ref_patch_shuffle(x, 4), rtol=0, atol=0)
    assert got.shape == x.shape and not torch.equal(got, x)

    def patches(img):
        cells = [(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)]
        return sorted(tuple(img[:, r:r + 2, c:c + 2].flatten().tolist()) for r, c in cells)

    for i in range(6):  # the same multiset of patches, nothing from another image
        assert patches(got[i]) == patches(x[i])
    with pytest.raises(ValueError, match=r"oe_grid=3 must divide the image size 8x8; pick a divisor"):
        patch_shuffle(x, 3)
    with pytest.raises(ValueError, match="oe_grid must be >= 2"):
        patch_shuffle(x, 1)


def test_outlier_exposure_is_cross_entropy_to_uniform():
    g = torch.Generator().manual_seed(2)
    x = (3 * torch.randn(9, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    got = outlier_exposure(x)
    ref = -torch.log_softmax(x, 1).mean()  # CE(uniform, softmax(x)), averaged over outliers
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(got, _hendrycks_oe(x), rtol=1e-12, atol=0)
    (gg,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(gg, (torch.softmax(x, 1) - 1 / 7).detach() / 9, rtol=1e-10, atol=1e-14)
    assert outlier_exposure(torch.zeros(2, 7)).item() == pytest.approx(math.log(7))  # the minimum: uniform


@pytest.mark.parametrize("tau", [None, TAU])
def test_ce_with_outlier_exposure_equals_reference_step(tau):
    net, (x, y) = _net(), _batch()
    ref_net = copy.deepcopy(net)
    cfg = {"name": "ce", "oe_weight": 0.5, "oe_fraction": 0.5, "oe_grid": 4, "logit_norm_tau": tau}
    torch.manual_seed(3)
    out = build_stage1(cfg, COUNTS).forward_backward(net, x, y, None)
    torch.manual_seed(3)
    xo = _ref_patch_shuffle(x[:6], 4)
    _, logits = ref_net(torch.cat([x, xo]))  # one forward: BatchNorm normalises in- and outliers together (OE)
    ce, oe = (F.cross_entropy(logits[:12], y), _hendrycks_oe(logits[12:])) if tau is None else (
        LogitNormLoss(tau)(logits[:12], y),
        _hendrycks_oe(logits[12:] / ((logits[12:].norm(dim=1, keepdim=True) + 1e-7) * tau)))
    loss = ce + 0.5 * oe
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["loss_oe"], 0.5 * oe.detach(), rtol=1e-12, atol=0)
    _assert_grads(_grads(net), _grads(ref_net))


def test_ccsam_with_outlier_exposure_adds_the_oe_gradient():
    """GroupNorm (samples independent): the CC-SAM step with OE = the step without OE + 0.5 grad OE(outliers)."""
    x, y = _batch(seed=8)
    cfg = {"name": "ccsam", "preset": "official", "scale": 0.5}
    nets = [_net(seed=9, norm="groupnorm") for _ in range(3)]
    torch.manual_seed(4)
    with_oe = build_stage1(cfg | {"oe_weight": 0.5}, COUNTS).forward_backward(nets[0], x, y, None)
    torch.manual_seed(4)
    plain = build_stage1(cfg, COUNTS).forward_backward(nets[1], x, y, None)
    torch.manual_seed(4)
    torch.distributions.Beta(1.0, 1.0).sample()  # the draws mixup makes before the outliers are cut
    torch.randperm(12)
    _, lo = nets[2](_ref_patch_shuffle(x[:6], 4))
    oe = 0.5 * _hendrycks_oe(lo)
    oe.backward()
    torch.testing.assert_close(with_oe["loss"], plain["loss"] + oe.detach(), rtol=1e-10, atol=0)
    g_with, g_plain, g_oe = _grads(nets[0]), _grads(nets[1]), _grads(nets[2])
    for n in g_with:
        torch.testing.assert_close(g_with[n], g_plain[n] + g_oe[n], rtol=1e-7, atol=1e-11, msg=n)


def test_outlier_exposure_settings_are_validated():
    assert {k: stage1_defaults("ccsam")[k] for k in ("oe_weight", "oe_fraction", "oe_grid")} == {
        "oe_weight": 0.0, "oe_fraction": 0.5, "oe_grid": 4}
    with pytest.raises(ValueError, match=r"ce: oe_weight must be a finite number >= 0 \(0 = off; 0.5 = Hendrycks"):
        build_stage1({"name": "ce", "oe_weight": -1}, COUNTS)
    with pytest.raises(ValueError, match=r"mixup: oe_fraction must be a finite number > 0 and <= 1"):
        build_stage1({"name": "mixup", "oe_fraction": 0.0}, COUNTS)
    with pytest.raises(ValueError, match="ccsam: oe_grid must be int, got 2.5"):
        build_stage1({"name": "ccsam", "oe_grid": 2.5}, COUNTS)
    with pytest.raises(ValueError, match=r"outlier exposure \(oe_weight > 0\) applies to mode='head' only"):
        build_stage1({"name": "ccsam", "mode": "block", "oe_weight": 0.5}, COUNTS)
    with pytest.raises(ValueError, match="sam: unknown cfg key 'oe_weight'"):
        build_stage1({"name": "sam", "oe_weight": 0.5}, COUNTS)


# ------------------------------------------------------------------ LogitNorm in the classifier re-training


def test_stage2_crt_and_ccsam_adv_with_logit_norm_equal_reference():
    from ccsam_zoo.ccsam import build_stage2

    net, (x, y) = _net(seed=10), _batch(seed=11)
    ref_net = copy.deepcopy(net)
    out = build_stage2({"name": "crt", "logit_norm_tau": TAU}, COUNTS).forward_backward(net, x, y, None)
    ref_net.eval()  # crt: bn=eval
    _, logits = ref_net(x)
    loss = LogitNormLoss(TAU)(logits, y)
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-12, atol=0)
    _assert_grads(_grads(net), _grads(ref_net))
    # ccsam_adv with a zero shift (adv_lambda 0): (1 - a_t) L + a_t L = the LogitNorm loss on the clean features
    net, ref_net = _net(seed=10), _net(seed=10)
    m = build_stage2({"name": "ccsam_adv", "preset": "paper", "adv_lambda": 0.0, "logit_norm_tau": TAU}, COUNTS)
    m.set_epoch(1, 4)
    out = m.forward_backward(net, x, y, None)
    ref_net.eval()  # paper preset: bn=eval
    _, logits = ref_net(x)
    loss = LogitNormLoss(TAU)(logits, y)
    loss.backward()
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(net.head.weight.grad, ref_net.head.weight.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(net.head.bias.grad, ref_net.head.bias.grad, rtol=1e-8, atol=1e-12)
    # with a shift, the adversarial direction follows the LogitNorm loss: a different step from plain CE's
    a, b = _net(seed=10), _net(seed=10)
    for model, tau in ((a, TAU), (b, None)):
        m = build_stage2({"name": "ccsam_adv", "preset": "paper", "logit_norm_tau": tau}, COUNTS)
        m.set_epoch(1, 4)
        m.forward_backward(model, x, y, None)
    assert not torch.allclose(a.head.weight.grad, b.head.weight.grad, rtol=1e-3)
