"""Sharpness diagnostics against independent references (analytic quadratics, direct numpy evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.data import shot_groups
from ccsam_zoo.diagnostics import landscape_2d, loss_curves, worst_case_sharpness
from ccsam_zoo.diagnostics._core import random_direction, resolve_params, select_sample
from ccsam_zoo.models import FeaturesAndLogits

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
# paper rule: 500, 300 many; 100, 50, 20 medium (bounds inclusive); 5 few
COUNTS6 = [500, 300, 100, 50, 20, 5]
GROUP_OF6 = {"many": [0, 1], "medium": [2, 3, 4], "few": [5]}
FAST = dict(progress=False, rho=None)


def half_sq(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * logits.pow(2).sum(1)


class Centered(nn.Module):
    """logits = (W - W0) x + (b - b0): with 0.5 ||logits||^2 and isotropic data, L(theta + eps) = 0.5 ||eps||^2."""

    def __init__(self, d: int = 4, c: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(c, d, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(c, generator=g, dtype=torch.float64))
        self.register_buffer("w0", self.weight.detach().clone())
        self.register_buffer("b0", self.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight - self.w0).T + (self.bias - self.b0)


def isotropic_data(d: int, groups: dict[str, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the 2d inputs +-sqrt(d) e_j (mean 0, second moment I), labels cycling over the group's classes."""
    xs, ys = [], []
    basis = math.sqrt(d) * torch.eye(d, dtype=torch.float64)
    for classes in groups.values():
        x = torch.cat([basis, -basis])
        xs.append(x)
        ys.append(torch.tensor([classes[i % len(classes)] for i in range(len(x))]))
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------- general quadratic


TARGET = 2.0


def quad_problem(seed: int = 0, n: int = 36):
    """nn.Linear(3, 3) in float64 with L = mean 0.5 ||W x + b - 2 onehot(y)||^2 on anisotropic inputs."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 3, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 3, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.3], dtype=torch.float64)
    y = torch.arange(n) % 3
    return model, x, y


def quad_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logits - TARGET * F.one_hot(labels, logits.shape[1]).to(logits.dtype)).pow(2).sum(1)


def np_loss(wb: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Direct numpy evaluation of the quadratic loss at [W | b]."""
    xt = np.hstack([x, np.ones((len(x), 1))])
    t = TARGET * np.eye(wb.shape[0])[y]
    return float(np.mean(0.5 * ((xt @ wb.T - t) ** 2).sum(1)))


def np_moments(wb: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """L, gradient R (C x D+1) and input second moment S: L(wb + E) = L + <R, E> + 0.5 tr(E S E^T)."""
    xt = np.hstack([x, np.ones((len(x), 1))])
    r = xt @ wb.T - TARGET * np.eye(wb.shape[0])[y]
    return np_loss(wb, x, y), r.T @ xt / len(x), xt.T @ xt / len(x)


def np_tr_argmax(grad: np.ndarray, s: np.ndarray, radius: float) -> np.ndarray:
    """argmax of <grad, E> + 0.5 tr(E S E^T) over ||E||_F <= radius (S psd): the trust-region secular equation,
    E(lam) = grad (lam I - S)^-1 with ||E(lam)|| = radius, solved by bisection for lam > max eig(S)."""
    w, v = np.linalg.eigh(s)
    gv = grad @ v

    def e_of(lam: float) -> np.ndarray:
        return (gv / (lam - w)) @ v.T

    lo, hi = w[-1] + 1e-14, w[-1] + 1e8
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.linalg.norm(e_of(mid)) > radius else (lo, mid)
    return e_of(hi)


def np_worst_case(wb: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> float:
    """Exact max of the convex quadratic over ||E||_F <= radius."""
    loss, grad, s = np_moments(wb, x, y)
    e = np_tr_argmax(grad, s, radius)
    return loss + float((grad * e).sum()) + 0.5 * float(np.trace(e @ s @ e.T))


def wb_of(model: nn.Linear) -> np.ndarray:
    return torch.cat([model.weight.detach(), model.bias.detach()[:, None]], 1).numpy().copy()


# ------------------------------------------------------------------------------------------- tests: curves


def test_isotropic_quadratic_exact_per_direction_and_group():
    model = Centered(d=4, c=3)
    x, y = isotropic_data(4, GROUP_OF6)
    norms = {"global": [0.0, 0.25, 1.0], "local": [0.0, 0.01, 0.05]}
    out = loss_curves(model, x, y, COUNTS6, params="all", relative_norms=norms, loss_fn=half_sq, **FAST)
    theta2 = float(model.weight.detach().pow(2).sum() + model.bias.detach().pow(2).sum())
    assert out["config"]["theta_norm"] == pytest.approx(math.sqrt(theta2), rel=1e-14)
    assert set(out["clean"]) == {"overall", "many", "medium", "few"}
    for name, rs in norms.items():
        curve = out["curves"][name]
        assert curve["relative_norms"] == rs
        for g in out["clean"]:
            expected = [0.5 * r * r * theta2 for r in rs]
            np.testing.assert_allclose(curve["mean"][g], expected, rtol=1e-9, atol=1e-12)
            for per_dir in curve["per_direction"][g]:  # every direction, not only on average
                np.testing.assert_allclose(per_dir, expected, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(curve["std"][g], 0.0, atol=1e-9 * theta2)
    pc = loss_curves(model, x, y, COUNTS6 + [7], params="all", relative_norms=norms, loss_fn=half_sq, per_class=True,
                     num_directions=2, **FAST)["per_class"]  # fmt: skip
    assert pc["clean"] == [0.0] * 6 + [None]  # class 6 has no sample
    counts = torch.bincount(y, minlength=7).double()
    for j, r in enumerate(norms["global"]):  # the count-weighted class means give the overall mean
        weighted = sum(v * c for v, c in zip(pc["curves"]["global"][j], counts.tolist()) if v is not None)
        assert weighted / len(y) == pytest.approx(0.5 * r * r * theta2, rel=1e-9, abs=1e-12)
    inc = out["summary"]["loss_increase"]
    assert inc["0.01"]["few"] == pytest.approx(0.5 * 0.01**2 * theta2, rel=1e-9)
    assert inc["0.05"]["overall"] == pytest.approx(0.5 * 0.05**2 * theta2, rel=1e-9)


def test_general_quadratic_matches_direct_evaluation_and_closed_form_expectation():
    model, x, y = quad_problem()
    counts = [200, 50, 5]  # one class per group
    rec: list[np.ndarray] = []
    model.register_forward_hook(lambda m, i, o: rec.append(wb_of(m)))
    norms = [0.0, 0.02, 0.3]
    k = 64
    out = loss_curves(
        model, x, y, counts, params="all", relative_norms=norms, num_directions=k, loss_fn=quad_loss,
        batch_size=1000, summary_norms=(0.02,), **FAST,
    )  # fmt: skip
    wb0 = wb_of(model)
    theta = np.linalg.norm(wb0)
    xn, yn = x.numpy(), y.numpy()
    curve = out["curves"]["custom"]
    assert len(rec) == 1 + k * 2  # clean once, then every direction at every non-zero norm (one batch each)
    for g, cls in {"overall": [0, 1, 2], "many": [0], "medium": [1], "few": [2]}.items():
        sel = np.isin(yn, cls)
        loss0, grad, s = np_moments(wb0, xn[sel], yn[sel])
        assert out["clean"][g] == pytest.approx(loss0, rel=1e-12)
        assert curve["mean"][g][0] == out["clean"][g]  # zero noise: the clean loss, exactly
        for j, r in enumerate(norms[1:], start=1):
            applied = [p for p in rec[1:] if abs(np.linalg.norm(p - wb0) / theta - r) < 1e-9 * max(r, 1)]
            assert len(applied) == k  # the perturbation has exactly the requested relative norm
            direct = sorted(np_loss(p, xn[sel], yn[sel]) for p in applied)
            np.testing.assert_allclose(sorted(curve["per_direction"][g][i][j] for i in range(k)), direct, rtol=1e-10)
            # E over the sphere of radius s in dimension n: L + 0.5 s^2 C tr(S) / n
            s2, dim = (r * theta) ** 2, wb0.size
            expected = loss0 + 0.5 * s2 * wb0.shape[0] * np.trace(s) / dim
            sd = (max(curve["std"][g][j], 1e-12)) / math.sqrt(k)
            assert abs(curve["mean"][g][j] - expected) < 4 * sd
    # parameters are back
    np.testing.assert_array_equal(wb_of(model), wb0)


def test_zero_noise_is_the_clean_loss_on_a_resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=4)
    x, y = torch.randn(12, 3, 8, 8), torch.arange(12) % 4
    with torch.no_grad():
        model.eval()
        ref = F.cross_entropy(model(x), y, reduction="none").double()
    model.train()
    out = loss_curves(model, x, y, [300, 50, 50, 10], relative_norms=[0.0, 0.01], num_directions=2, **FAST)
    assert out["config"]["features_cached"] is True
    assert out["clean"]["overall"] == pytest.approx(float(ref.mean()), rel=1e-6)
    assert out["clean"]["many"] == pytest.approx(float(ref[y == 0].mean()), rel=1e-6)
    assert out["clean"]["medium"] == pytest.approx(float(ref[(y == 1) | (y == 2)].mean()), rel=1e-6)
    assert out["clean"]["few"] == pytest.approx(float(ref[y == 3].mean()), rel=1e-6)
    for g, mean in out["curves"]["custom"]["mean"].items():
        assert mean[0] == out["clean"][g]
        assert out["curves"]["custom"]["std"][g][0] == 0.0
    # the feature cache is an optimisation only
    full = loss_curves(model, x, y, [300, 50, 50, 10], relative_norms=[0.0, 0.01], num_directions=2,
                       cache_features=False, **FAST)  # fmt: skip
    assert full["config"]["features_cached"] is False
    for g in out["clean"]:
        np.testing.assert_allclose(full["curves"]["custom"]["mean"][g], out["curves"]["custom"]["mean"][g], rtol=1e-5)


# ------------------------------------------------------------------------------------------- tests: groups / sample


def test_shot_groups_partition_by_thresholds():
    assert shot_groups(COUNTS6) == ["many", "many", "medium", "medium", "medium", "few"]
    assert shot_groups(COUNTS6, rule="authors") == ["many", "many", "many", "medium", "few", "few"]
    assert shot_groups(CIFAR10_LT_100) == ["many"] * 8 + ["medium"] * 2
    assert shot_groups([10, 5, 1], thresholds=(5, 2)) == ["many", "medium", "few"]
    with pytest.raises(ValueError):
        shot_groups([1], thresholds=(20, 100))
    counts = list(np.random.default_rng(0).integers(1, 500, size=200))
    groups = shot_groups(counts)
    assert len(groups) == len(counts)
    for n, g in zip(counts, groups):
        assert g == ("many" if n > 100 else "few" if n < 20 else "medium")


def test_result_groups_partition_classes_and_samples():
    model = Centered(d=2, c=3)
    x = torch.randn(40, 2, dtype=torch.float64)
    y = torch.arange(40) % 10
    out = loss_curves(model, x, y, CIFAR10_LT_100, params="all", relative_norms=[0.0], loss_fn=half_sq, **FAST)
    assert out["groups"] == {"many": list(range(8)), "medium": [8, 9], "few": []}
    assert out["config"]["empty_groups"] == ["few"]
    assert "few" not in out["clean"]
    assert out["group_samples"] == {"overall": 40, "many": 32, "medium": 8}
    seen = sorted(c for classes in out["groups"].values() for c in classes)
    assert seen == list(range(10))  # every class in exactly one group
    only = loss_curves(model, x, y, CIFAR10_LT_100, params="all", relative_norms=[0.0], loss_fn=half_sq,
                       groups=("medium",), **FAST)  # fmt: skip
    assert set(only["clean"]) == {"overall", "medium"}
    nogroups = loss_curves(model, x, y, None, params="all", relative_norms=[0.0], loss_fn=half_sq, **FAST)
    assert set(nogroups["clean"]) == {"overall"}


def test_select_sample_is_stratified_and_seeded():
    labels = torch.tensor([0] * 500 + [1] * 100 + [2] * 10 + [3] * 2)
    idx = select_sample(labels, 40, seed=3)
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 40
    counts = torch.bincount(labels[idx], minlength=4).tolist()
    assert counts[3] == 2 and counts[2] == 10 and counts[0] + counts[1] == 28 and abs(counts[0] - counts[1]) <= 1
    assert torch.equal(idx, select_sample(labels, 40, seed=3))
    assert not torch.equal(idx, select_sample(labels, 40, seed=4))
    assert torch.equal(select_sample(labels, None), torch.arange(len(labels)))


# ------------------------------------------------------------------------------------------- tests: model state


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().reshape(-1).view(torch.uint8)


def test_model_restored_bit_exactly_including_modes_and_flags():
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=3, drop_rate=0.5)
    model.train()
    model.layer1.eval()  # a mixed mode must come back as it was
    model.conv1.weight.requires_grad_(False)
    before = {k: _bits(v) for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    out = loss_curves(model, x, y, [200, 50, 5], params="all", relative_norms=[0.0, 0.3], num_directions=2,
                      summary_norms=(), rho=0.01, ascent_steps=1, progress=False)  # fmt: skip
    assert out["config"]["num_params"] == sum(p.numel() for p in model.parameters())
    landscape_2d(model, x, y, params="blocks:1", alphas=[-0.5, 0.5], progress=False)

    def boom(logits, labels):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # an error mid-run restores too
        loss_curves(model, x, y, params="all", loss_fn=boom, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(_bits(v), before[k]), k
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_deterministic_for_a_fixed_seed():
    model, x, y = quad_problem(seed=1)
    kw = dict(params="all", relative_norms=[0.0, 0.1, 0.5], num_directions=3, loss_fn=quad_loss, progress=False)
    a = loss_curves(model, x, y, [200, 50, 5], seed=7, **kw)
    b = loss_curves(model, x, y, [200, 50, 5], seed=7, **kw)
    c = loss_curves(model, x, y, [200, 50, 5], seed=8, **kw)
    assert a == b
    assert a["curves"] != c["curves"]
    fa = loss_curves(model, x, y, seed=7, filter_normalize=True, **kw)
    assert fa == loss_curves(model, x, y, seed=7, filter_normalize=True, **kw)


def test_filter_normalised_direction_and_relative_norm():
    model, x, y = quad_problem(seed=2)
    theta = [model.weight.detach(), model.bias.detach()]
    dw, db = random_direction(theta, seed=0, index=0, filter_normalize=True)
    np.testing.assert_allclose(dw.norm(dim=1), model.weight.detach().norm(dim=1), rtol=1e-6)
    assert torch.count_nonzero(db) == 0  # 1-D parameters are not moved (Li et al., ignore='biasbn')
    rec: list[np.ndarray] = []
    model.register_forward_hook(lambda m, i, o: rec.append(wb_of(m)))
    wb0 = wb_of(model)
    loss_curves(model, x, y, params="all", relative_norms=[0.0, 0.2], num_directions=2, filter_normalize=True,
                loss_fn=quad_loss, batch_size=1000, summary_norms=(), **FAST)  # fmt: skip
    for p in rec[1:]:
        assert np.linalg.norm(p - wb0) / np.linalg.norm(wb0) == pytest.approx(0.2, rel=1e-9)
        np.testing.assert_array_equal(p[:, -1], wb0[:, -1])  # bias untouched


def test_param_sets():
    model = timm.create_model("resnet32_cifar", num_classes=10)
    assert [n for n, _ in resolve_params(model, "head")] == ["fc.weight", "fc.bias"]
    names = [n for n, _ in resolve_params(model, "blocks:1")]
    assert names[-2:] == ["fc.weight", "fc.bias"] and all(n.startswith("layer3.4.") for n in names[:-2])
    assert len(resolve_params(model, "blocks:2")) == len(names) + 6
    assert len(resolve_params(model, "all")) == len(list(model.parameters()))
    wrapped = FeaturesAndLogits(model)
    assert [n for n, _ in resolve_params(wrapped, "head")] == ["model.fc.weight", "model.fc.bias"]
    assert [n for n, _ in resolve_params(model, ["fc.bias"])] == ["fc.bias"]
    for bad in ("blocks:x", "blocks:99", "heads"):
        with pytest.raises(ValueError):
            resolve_params(model, bad)
    with pytest.raises(KeyError):
        resolve_params(model, ["nope"])
    with pytest.raises(ValueError, match="get_classifier"):
        resolve_params(nn.Linear(2, 2), "head")


def test_wrappers_and_uint8_inputs_with_transform():
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=3)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(TypeError, match="transform"):
        loss_curves(model, images, y, relative_norms=[0.0], **FAST)

    def transform(b: torch.Tensor) -> torch.Tensor:
        return b.float() / 255.0 - 0.5

    kw = dict(relative_norms=[0.0, 0.1], num_directions=2, transform=transform, **FAST)
    plain = loss_curves(model, images, y, **kw)
    wrapped = loss_curves(FeaturesAndLogits(model), images, y, **kw)  # (z, logits) outputs
    assert wrapped["config"]["param_names"] == ["model.fc.weight", "model.fc.bias"]
    np.testing.assert_allclose(wrapped["curves"]["custom"]["mean"]["overall"],
                               plain["curves"]["custom"]["mean"]["overall"], rtol=1e-6)  # fmt: skip


# ------------------------------------------------------------------------------------------- tests: worst case


def test_worst_case_matches_exact_maximum_of_quadratic():
    model, x, y = quad_problem(seed=3)
    counts = [200, 50, 5]
    wb0 = wb_of(model)
    out = worst_case_sharpness(model, x, y, counts, params="all", rho=0.1, rho_mode="relative", steps=40,
                               loss_fn=quad_loss, progress=False)  # fmt: skip
    radius = 0.1 * np.linalg.norm(wb0)
    assert out["radius"] == pytest.approx(radius, rel=1e-12)
    xn, yn = x.numpy(), y.numpy()
    for g, cls in {"overall": [0, 1, 2], "many": [0], "medium": [1], "few": [2]}.items():
        sel = np.isin(yn, cls)
        exact = np_worst_case(wb0, xn[sel], yn[sel], radius)
        assert out["loss"][g] == pytest.approx(exact, rel=1e-6)
        assert out["increase"][g] == pytest.approx(exact - np_loss(wb0, xn[sel], yn[sel]), rel=1e-5)
        hist = out["history"][g]
        assert all(b >= a - 1e-12 for a, b in zip(hist, hist[1:]))  # monotone on a convex loss
    np.testing.assert_array_equal(wb_of(model), wb0)
    # absolute radius
    absolute = worst_case_sharpness(model, x, y, params="all", rho=0.2, rho_mode="absolute", steps=40,
                                    loss_fn=quad_loss, progress=False)  # fmt: skip
    assert absolute["loss"]["overall"] == pytest.approx(np_worst_case(wb0, xn, yn, 0.2), rel=1e-6)


def np_block_worst_case(wb: np.ndarray, x: np.ndarray, y: np.ndarray, w_blocks: list, r_b: float) -> float:
    """Max of the quadratic over a product of balls by exact block-coordinate maximisation.

    ``w_blocks``: [(rows of W, radius)], e.g. all rows together (per-tensor ball) or one row each
    (per-filter ball); the bias is one block of radius ``r_b``. With E = [E_W | e_b]: for the other blocks
    fixed, the problem in a block of W rows is a trust-region one (``np_tr_argmax``) with linear term
    R_W + e_b s_Wb^T and Hessian s_WW; for E_W fixed, the one in e_b has the isotropic Hessian s_bb I, so
    its maximiser is r_b along its linear term R_b + E_W s_Wb. Best of several starts.
    """
    loss, grad, s = np_moments(wb, x, y)
    d = s.shape[0] - 1
    s_ww, s_wb, s_bb = s[:d, :d], s[:d, d], s[d, d]

    def value(e_w: np.ndarray, e_b: np.ndarray) -> float:
        e = np.hstack([e_w, e_b[:, None]])
        return loss + float((grad * e).sum()) + 0.5 * float(np.trace(e @ s @ e.T))

    rng = np.random.default_rng(0)
    best = -np.inf
    for _ in range(8):
        e_b = rng.standard_normal(wb.shape[0])
        e_b *= r_b / np.linalg.norm(e_b)
        e_w = np.zeros((wb.shape[0], d))
        for _ in range(200):
            for rows, radius in w_blocks:  # rows of W do not interact through S: each block is exact
                e_w[rows] = np_tr_argmax(grad[rows, :d] + np.outer(e_b[rows], s_wb), s_ww, radius)
            g_b = grad[:, d] + e_w @ s_wb + s_bb * e_b
            e_b = r_b * g_b / np.linalg.norm(g_b)
        best = max(best, value(e_w, e_b))
    return best


def test_per_tensor_and_per_filter_balls_match_block_coordinate_maximum():
    model, x, y = quad_problem(seed=5)
    wb0 = wb_of(model)
    xn, yn = x.numpy(), y.numpy()
    r_b = 0.1 * np.linalg.norm(wb0[:, -1])
    blocks = {
        "per_tensor": [([0, 1, 2], 0.1 * np.linalg.norm(wb0[:, :-1]))],
        "per_filter": [([c], 0.1 * np.linalg.norm(wb0[c, :-1])) for c in range(3)],
    }
    found = {}
    for mode, w_blocks in blocks.items():
        out = worst_case_sharpness(model, x, y, params="all", rho=0.1, rho_mode=mode, steps=60, loss_fn=quad_loss,
                                   progress=False)  # fmt: skip
        exact = np_block_worst_case(wb0, xn, yn, w_blocks, r_b)
        assert out["loss"]["overall"] == pytest.approx(exact, rel=1e-6)
        assert out["radius"] == pytest.approx(math.sqrt(sum(r * r for _, r in w_blocks) + r_b**2), rel=1e-12)
        found[mode] = exact
    # nested sets: per-filter balls inside the per-tensor ones inside the global ball of the same rho
    glob = worst_case_sharpness(model, x, y, params="all", rho=0.1, rho_mode="relative", steps=60,
                                loss_fn=quad_loss, progress=False)  # fmt: skip
    assert found["per_filter"] < found["per_tensor"] - 1e-6 < glob["loss"]["overall"] - 2e-6
    np.testing.assert_array_equal(wb_of(model), wb0)


def test_per_tensor_ball_ignores_a_tiny_scale_invariant_tensor():
    """A tensor whose scale the loss ignores (as for weights followed by BatchNorm) but that is tiny can take
    the whole budget of a global ball; the per-tensor ball bounds it by its own norm."""

    class ScaleInvariant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.u = nn.Parameter(torch.tensor([1e-3, 0.0], dtype=torch.float64))  # loss sees u / ||u|| only
            self.w = nn.Parameter(torch.full((2,), 10.0, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.u / self.u.norm()
            return (x * (z * 3.0)).sum(1, keepdim=True).expand(-1, 2) * torch.tensor([1.0, -1.0]) + 0 * self.w.sum()

    model = ScaleInvariant()
    x = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    rel = worst_case_sharpness(model, x, y, params="all", rho=0.05, rho_mode="relative", steps=5, progress=False)
    # relative: ||eps|| = 0.05 * ||theta|| ~ 0.7 rotates u freely (u is 1e-3): logits -> -+3, the loss -> log(1+e^6)
    assert rel["increase"]["overall"] == pytest.approx(math.log1p(math.exp(6.0)) - math.log(2.0), rel=1e-3)
    for mode in ("per_tensor", "per_filter"):
        per = worst_case_sharpness(model, x, y, params="all", rho=0.05, rho_mode=mode, steps=5, progress=False)
        # u moves by at most 5% of its norm: u / ||u|| turns by at most asin(0.05), logits shift by 3 * 0.05
        shift = 3.0 * 0.05
        assert per["increase"]["overall"] == pytest.approx(math.log1p(math.exp(2 * shift)) - math.log(2.0), rel=1e-3)
    with pytest.raises(ValueError, match="rho_mode must be one of"):
        worst_case_sharpness(model, x, y, params="all", rho_mode="global", progress=False)


def test_worst_case_at_stationary_point_and_isotropic_loss():
    model = Centered(d=3, c=2)
    x, y = isotropic_data(3, {"all": [0]})
    theta2 = float(model.weight.detach().pow(2).sum() + model.bias.detach().pow(2).sum())
    for mode in ("per_tensor", "relative"):  # L = 0.5 ||eps||^2: both balls reach 0.5 rho^2 ||theta||^2
        out = worst_case_sharpness(model, x, y, params="all", rho=0.05, rho_mode=mode, steps=2, loss_fn=half_sq,
                                   progress=False)  # fmt: skip
        assert out["increase"]["overall"] == pytest.approx(0.5 * 0.05**2 * theta2, rel=1e-9)


def test_worst_case_dominates_random_directions():
    model, x, y = quad_problem(seed=4)
    out = loss_curves(model, x, y, [200, 50, 5], params="all", relative_norms=[0.0, 0.05], num_directions=8,
                      loss_fn=quad_loss, summary_norms=(0.05,), rho=0.05, rho_mode="relative", ascent_steps=5,
                      progress=False)  # fmt: skip
    worst = out["summary"]["worst_case"]
    assert worst["relative_radius"] == 0.05
    for g, clean in out["clean"].items():
        random_incs = [row[1] - clean for row in out["curves"]["custom"]["per_direction"][g]]
        assert worst["ascent_increase"][g] >= max(random_incs)
        assert worst["ascent_increase"][g] > out["summary"]["loss_increase"]["0.05"][g]
        assert worst["increase"][g] >= worst["ascent_increase"][g]


# ------------------------------------------------------------------------------------------- tests: 2D


def test_landscape_2d_matches_isotropic_closed_form():
    model = Centered(d=4, c=3)
    x, y = isotropic_data(4, GROUP_OF6)
    grid = [-1.0, -0.5, 0.0, 0.5, 1.0]
    out = landscape_2d(model, x, y, COUNTS6, params="all", alphas=grid, betas=grid[1:4], filter_normalize=False,
                       loss_fn=half_sq, progress=False)  # fmt: skip
    theta2 = float(model.weight.detach().pow(2).sum() + model.bias.detach().pow(2).sum())
    np.testing.assert_allclose(out["direction_relative_norms"], [1.0, 1.0], rtol=1e-12)
    cos = out["direction_cosine"]
    assert abs(cos) < 0.9
    for g in ("overall", "many", "medium", "few"):
        losses = np.array(out["losses"][g])
        assert losses.shape == (3, 5)
        for i, b in enumerate(out["betas"]):
            for j, a in enumerate(out["alphas"]):
                assert losses[i, j] == pytest.approx(
                    0.5 * theta2 * (a * a + b * b + 2 * a * b * cos), rel=1e-9, abs=1e-12
                )
        assert losses[1, 2] == out["clean"][g] == 0.0


def test_landscape_2d_directions_are_those_of_loss_curves():
    model, x, y = quad_problem(seed=5)
    out = landscape_2d(model, x, y, params="all", alphas=[0.0, 0.3], betas=[0.0, 0.3], filter_normalize=False,
                       loss_fn=quad_loss, progress=False)  # fmt: skip
    curves = loss_curves(model, x, y, params="all", relative_norms=[0.3], num_directions=2, loss_fn=quad_loss, **FAST)
    per_dir = curves["curves"]["custom"]["per_direction"]["overall"]
    assert out["losses"]["overall"][0][1] == pytest.approx(per_dir[0][0], rel=1e-12)  # alpha = 0.3, beta = 0
    assert out["losses"]["overall"][1][0] == pytest.approx(per_dir[1][0], rel=1e-12)  # alpha = 0, beta = 0.3
    assert out["losses"]["overall"][0][0] == out["clean"]["overall"]
