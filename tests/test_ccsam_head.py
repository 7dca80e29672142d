"""Closed-form head perturbation against the slow, obvious per-class autograd loop (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ccsam_zoo.ccsam import perturbed_head_logits
from ccsam_zoo.ccsam.head import head_perturbation
from ccsam_zoo.ccsam.perturbation import characteristic_radius, class_factors

pytestmark = pytest.mark.usefixtures("one_thread")


def _class_loss(z, y, W, b, targets, adj):
    logits = z @ W.T + (b if b is not None else 0.0)
    if adj is not None:
        logits = logits + adj
    if targets is None:
        return F.cross_entropy(logits, y)
    return -(targets * torch.log_softmax(logits, 1)).sum(1).mean()


def loop_eps(z, y, W, b, counts, scale, norm, targets=None, adj=None, max_ratio=None, kind="ccsam"):
    """eps_c for every class present, written directly from Eq. 8-9 with one autograd call per class."""
    C, D = W.shape
    k = C * D + (C if b is not None else 0)
    wnorm = math.sqrt(W.detach().square().sum().item() + (b.detach().square().sum().item() if b is not None else 0))
    eps = {}
    for c in torch.unique(y).tolist():
        idx = y == c
        Wc = W.detach().clone().requires_grad_(True)
        bc = b.detach().clone().requires_grad_(True) if b is not None else None
        t = targets[idx] if targets is not None else None
        loss = _class_loss(z.detach()[idx], y[idx], Wc, bc, t, adj)
        grads = torch.autograd.grad(loss, [Wc] + ([bc] if bc is not None else []))
        n1 = max(int(counts[c]) - 1, 1)
        if norm == "global":
            gn = math.sqrt(sum(g.square().sum().item() for g in grads))
            norms = [gn] * len(grads)
        else:
            norms = [g.norm().item() for g in grads]
        out = []
        for g, gn in zip(grads, norms):
            if kind == "direction":
                out.append(scale * g / gn)
                continue
            rho = scale * math.sqrt(wnorm / (2 * gn)) * k**-0.25 * n1**-0.25  # Eq. 8
            out.append(math.sqrt(k) * rho * g / gn)  # Eq. 9
        if max_ratio is not None:
            tot = math.sqrt(sum(e.square().sum().item() for e in out))
            if tot > max_ratio * wnorm:
                out = [e * (max_ratio * wnorm / tot) for e in out]
        eps[c] = out
    return eps


def loop_logits(z, y, W, b, counts, scale, norm, **kw):
    eps = loop_eps(z, y, W, b, counts, scale, norm, **kw)
    rows = []
    for j in range(z.shape[0]):
        e = eps[int(y[j])]
        row = z[j] @ (W + e[0]).T
        if b is not None:
            row = row + b + e[1]
        rows.append(row)
    return torch.stack(rows)


def _problem(B=24, D=7, C=6, seed=0, absent=(4,), single=(5,), bias=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_(True)
    W = (0.3 * torch.randn(C, D, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = (0.1 * torch.randn(C, generator=g, dtype=torch.float64)).requires_grad_(True) if bias else None
    allowed = [c for c in range(C) if c not in absent and c not in single]
    y = torch.tensor(allowed, dtype=torch.long)[torch.randint(len(allowed), (B,), generator=g)]
    for i, c in enumerate(single):
        y[i] = c
    counts = torch.tensor([500, 200, 60, 20, 5, 1][:C] + [3] * max(0, C - 6))
    return z, y, W, b, counts


@pytest.mark.parametrize("norm", ["per_tensor", "global"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_matches_loop(norm, soft, bias):
    z, y, W, b, counts = _problem(bias=bias)
    targets = None
    if soft:
        g = torch.Generator().manual_seed(3)
        perm = torch.randperm(len(y), generator=g)
        lam = 0.7
        targets = lam * F.one_hot(y, W.shape[0]).double() + (1 - lam) * F.one_hot(y[perm], W.shape[0]).double()
    for scale in (1.0, 1e-2):
        got = perturbed_head_logits(z, y, W, b, counts, scale=scale, norm=norm, targets=targets)
        ref = loop_logits(z, y, W, b, counts, scale, norm, targets=targets)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-10)
        # the perturbation is large enough to matter at scale 1
    diff = (perturbed_head_logits(z, y, W, b, counts, norm=norm) - z @ W.T - (b if b is not None else 0)).abs().max()
    assert diff > 1e-2


def test_absent_and_single_classes_and_counts_one():
    z, y, W, b, counts = _problem(absent=(2, 4), single=(5,))
    assert (y == 5).sum() == 1 and counts[5] == 1  # m_c = 1 and n_c = 1 (max(n_c - 1, 1))
    got = perturbed_head_logits(z, y, W, b, counts, scale=0.5)
    ref = loop_logits(z, y, W, b, counts, 0.5, "per_tensor")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-10)
    assert torch.isfinite(got).all()


def test_logit_adjustment_cap_and_direction():
    z, y, W, b, counts = _problem(seed=1)
    adj = torch.log(counts.double() / counts.sum())
    got = perturbed_head_logits(z, y, W, b, counts, logit_adjustment=adj, max_ratio=0.05, norm="global")
    ref = loop_logits(z, y, W, b, counts, 1.0, "global", adj=adj, max_ratio=0.05)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-10)
    got = perturbed_head_logits(z, y, W, b, counts, kind="direction", scale=0.3)
    ref = loop_logits(z, y, W, b, counts, 0.3, "per_tensor", kind="direction")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("norm", ["per_tensor", "global"])
def test_mixed_loss_gradient_equals_class_gradients_at_perturbed_points(norm):
    """grad of (1-f) mean l(w) + f mean l(w + eps_y) wrt W, b, z == sum of class gradients at w + eps_c."""
    z, y, W, b, counts = _problem(seed=2)
    f = 0.4
    out, _ = head_perturbation(z, y, W, b, counts, norm=norm)
    clean = z @ W.T + b
    loss = (1 - f) * F.cross_entropy(clean, y) + f * F.cross_entropy(out, y)
    got = torch.autograd.grad(loss, [W, b, z])
    eps = loop_eps(z, y, W, b, counts, 1.0, norm)
    B = len(y)
    ref_loss = (1 - f) * F.cross_entropy(z @ W.T + b, y)
    for c, (e_w, e_b) in eps.items():
        idx = y == c
        e_w, e_b = e_w.detach(), e_b.detach()
        logits_c = z[idx] @ (W + e_w).T + b + e_b  # the class's samples at w + eps_c
        ref_loss = ref_loss + f * F.cross_entropy(logits_c, y[idx], reduction="sum") / B
    ref = torch.autograd.grad(ref_loss, [W, b, z])
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-10)


def test_reuses_given_logits_graph():
    z, y, W, b, counts = _problem(seed=4)
    logits = z @ W.T + b
    a = perturbed_head_logits(z, y, W, b, counts, logits=logits)
    c = perturbed_head_logits(z, y, W, b, counts)
    torch.testing.assert_close(a, c)


def test_gather_uses_global_statistics():
    """Splitting a batch in two 'ranks' with a fake gather gives the same logits as the whole batch."""
    z, y, W, b, counts = _problem(B=20, seed=5)
    full = perturbed_head_logits(z, y, W, b, counts)
    halves = [slice(0, 10), slice(10, 20)]
    store = {}

    def fake_gather(t):  # every "rank" sees the concatenation of both halves, label padding included
        key = t.shape[1:] if t.dim() > 1 else ("labels",)
        return torch.cat([store[key][0], store[key][1]]) if key in store else t

    parts = []
    for s in halves:
        zs = z[s]
        store.clear()
        store[(z.shape[1],)] = (z.detach()[halves[0]], z.detach()[halves[1]])
        r = torch.softmax((z @ W.T + b).detach(), 1) - F.one_hot(y, W.shape[0]).double()
        store[(W.shape[0],)] = (r[halves[0]], r[halves[1]])
        store[("labels",)] = (y[halves[0]], y[halves[1]])
        parts.append(perturbed_head_logits(zs, y[s], W, b, counts, gather=fake_gather))
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-6, atol=1e-10)


def test_factors_safe_cases():
    counts = torch.tensor([1, 2, 100])
    rho = characteristic_radius(1.0, torch.tensor([1.0, 1.0, 1.0]), 16, counts)
    assert torch.isfinite(rho).all() and rho[0] == rho[1]  # n_c = 1 uses max(n_c - 1, 1) = 1
    a = class_factors(torch.tensor([[0.0, 1e-30, 1.0]]), 1.0, 16, counts, max_ratio=0.5)
    assert torch.isfinite(a).all()
    eps_norm = a[0] * torch.tensor([0.0, 1e-15, 1.0])
    assert eps_norm[0] == 0 and (eps_norm <= 0.5 + 1e-6).all()


def test_zero_features_and_bf16_are_finite():
    z, y, W, b, counts = _problem(seed=6)
    zero = torch.zeros_like(z, requires_grad=True)
    out = perturbed_head_logits(zero, y, W, b, counts)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(zero.grad).all()
    zb = z.detach().float().bfloat16().requires_grad_(True)
    Wb, bb = W.detach().float().bfloat16().requires_grad_(True), b.detach().float().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = zb @ Wb.T + bb
        out = perturbed_head_logits(zb, y, Wb, bb, counts, logits=logits, scale=1e-6)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    assert all(torch.isfinite(t.grad).all() for t in (zb, Wb, bb))


def test_magnitude_kind_has_eq9_norm_and_random_direction():
    z, y, W, b, counts = _problem(seed=7, bias=True)
    g = torch.Generator().manual_seed(0)
    out, info = head_perturbation(z, y, W, b, counts, kind="magnitude", generator=g, norm="global")
    eps = loop_eps(z, y, W, b, counts, 1.0, "global")
    want = torch.tensor([math.sqrt(sum(e.square().sum().item() for e in v)) for v in eps.values()]).mean()
    wnorm = torch.cat([W.detach().flatten(), b.detach()]).norm()
    torch.testing.assert_close(info["eps_ratio"], want / wnorm, rtol=1e-6, atol=0)
    ref = loop_logits(z, y, W, b, counts, 1.0, "global")
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)
