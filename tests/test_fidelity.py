"""Each method is what its name says: schedules, the authors' CC-SAM step under mixup, caps, presets, subsets.

References are written here from the reference code's definition (kaidic/LDAM-DRW, zzpustc/CC-SAM), never from
the project's own output.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.ccsam import build_stage1, stage1_defaults, stage2_defaults
from ccsam_zoo.ccsam.head import head_perturbation
from ccsam_zoo.models import FeaturesAndLogits
from ccsam_zoo.training import RecipeError, apply_overrides, load_recipe
from ccsam_zoo.training.config import resolve_recipe
from ccsam_zoo.training.schedule import lr_at

COUNTS = [500, 150, 45, 12, 3]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ schedule


def _kaidic_lr(epoch: int, lr: float = 0.1) -> float:
    """kaidic/LDAM-DRW cifar_train.py adjust_learning_rate (epoch 0-based on entry)."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * 0.0001
    if epoch > 160:
        return lr * 0.01
    return lr


def test_step_milestone_m_means_epoch_m_is_the_first_at_the_lower_rate():
    cfg = load_recipe("cifar10_lt")["stage1"] | {"gamma": 0.1}
    want = {0: 0.02, 4: 0.1, 5: 0.1, 159: 0.1, 160: 0.01, 179: 0.01, 180: 0.001, 199: 0.001}
    for epoch, lr in want.items():
        assert lr_at(epoch, cfg) == pytest.approx(lr, rel=1e-12), epoch
    short = load_recipe("cifar10_lt_cpu")["stage1"] | {"gamma": 0.1}
    assert [lr_at(e, short) for e in (17, 18, 21, 22, 23)] == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])


def test_ldam_drw_recipe_schedule_equals_kaidics_adjust_learning_rate():
    recipe = resolve_recipe(apply_overrides(load_recipe("cifar10_lt"), ["method=ldam_drw"]))
    for epoch in range(200):
        assert lr_at(epoch, recipe["stage1"]) == pytest.approx(_kaidic_lr(epoch), rel=1e-12), epoch


def test_cosine_and_constant_schedules():
    cfg = {"lr": 0.2, "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1, "epochs": 10}
    assert lr_at(0, cfg) == pytest.approx(0.2)
    assert lr_at(5, cfg) == pytest.approx(0.2e-3 + (0.2 - 0.2e-3) / 2)
    assert lr_at(3, cfg | {"schedule": "constant"}) == 0.2
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_at(0, cfg | {"schedule": "linear"})


# ------------------------------------------------------------------- the authors' CC-SAM step (mixup)


def _net(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 6, 8))
    return FeaturesAndLogits(model).double().train()


def _authors_step(net, x, y, lam, index, noise_ratio, flat_ratio):
    """zzpustc/CC-SAM train_cifar.py ``train()`` (head disturb, mixup) written out line by line, with the
    perturbed classifier applied out of place (w + eps_c is a constant shift, SAM semantics)."""
    images = lam * x + (1 - lam) * x[index, :]  # mixup_data
    targets_a, targets_b = y, y[index]
    fea, o = net(images)
    loss_ori = lam * F.cross_entropy(o, targets_a, reduction="none") + (1 - lam) * F.cross_entropy(
        o, targets_b, reduction="none"
    )  # mixup_criterion
    head = net.head
    disturb = [head.weight, head.bias]
    params_num = sum(p.numel() for p in disturb)
    y_in = y.numpy()
    grad_list = {}
    for y_tmp in np.unique(y_in):
        idx = np.where(y_in == y_tmp)
        grad_list[y_tmp] = torch.autograd.grad(loss_ori[idx].mean(), disturb, retain_graph=True)
    param_norm = torch.sqrt(sum(p.detach().square().sum() for p in disturb)) + 1e-12  # grad_norm(disturb_params)
    loss_list = []
    for y_tmp in np.unique(y_in):
        idx = np.where(y_in == y_tmp)
        noisy = []
        for param, grad_c in zip(disturb, grad_list[y_tmp]):
            grad_c_norm = torch.norm(grad_c)
            rho_c = (noise_ratio * torch.sqrt(param_norm) / torch.sqrt(grad_c_norm) / np.sqrt(2)
                     / np.sqrt(np.sqrt(COUNTS[y_tmp] - 1)) / np.sqrt(np.sqrt(params_num)))
            noise = rho_c * 1.0 * (grad_c / grad_c_norm) * np.sqrt(params_num)
            noisy.append(param + noise.detach())
        o_tmp = F.linear(fea[idx], noisy[0], noisy[1])
        loss_list.extend(F.cross_entropy(o_tmp, y[idx], reduction="none"))
    loss_list = torch.stack(loss_list)
    loss = (1 - flat_ratio) * loss_ori.mean() + flat_ratio * loss_list.mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("scale", [0.3, 1e-6])
def test_official_preset_under_mixup_equals_the_authors_training_step(monkeypatch, scale):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 0, 1, 4, 0, 2, 3])
    lam, index = 0.63, torch.randperm(16, generator=g)

    def fixed_mixup(images, labels, alpha, num_classes):
        mixed = lam * images + (1 - lam) * images[index]
        onehot = F.one_hot(labels, num_classes).to(images)
        t = lam * onehot + (1 - lam) * onehot[index]
        return mixed, t, labels, labels[index], lam

    monkeypatch.setattr("ccsam_zoo.ccsam.stage1.mixup", fixed_mixup)
    net = _net()
    ref_loss, ref_grads = _authors_step(copy.deepcopy(net), x, y, lam, index, scale, 0.3)
    method = build_stage1({"name": "ccsam", "preset": "official", "scale": scale}, COUNTS)
    assert method.cfg["grad_targets"] == "mixed" and method.cfg["flat_ratio"] == 0.3
    out = method.forward_backward(net, x, y, None)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-10, atol=1e-12)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-8, atol=1e-12, msg=n)
    if scale == 0.3:  # g_c from first-label CE (the project's old rule) gives a different step
        other = _net()
        build_stage1({"name": "ccsam", "preset": "official", "scale": scale, "grad_targets": "first_label"},
                     COUNTS).forward_backward(other, x, y, None)
        assert not torch.allclose(other.head.weight.grad, ref_grads["model.fc.weight"], rtol=1e-3)


# --------------------------------------------------------------------------------------- the cap


def test_paper_preset_is_uncapped_and_the_cap_is_a_counted_option():
    assert stage1_defaults("ccsam", "paper")["max_ratio"] is None
    assert stage1_defaults("ccsam", "official")["max_ratio"] is None
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 4, 0, 1, 2])
    W = 0.01 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    b = torch.zeros(5, dtype=torch.float64)
    _, free = head_perturbation(z, y, W, b, COUNTS, scale=1.0, norm="global")
    assert free["eps_ratio"] > 1 and free["capped"] == 0  # s = 1 on a small head: ||eps_c|| > ||w||, kept
    _, capped = head_perturbation(z, y, W, b, COUNTS, scale=1.0, norm="global", max_ratio=1.0)
    assert capped["capped"] == 5 and capped["eps_ratio"] == pytest.approx(1.0)
    net = _net()
    out = build_stage1({"name": "ccsam", "preset": "paper", "max_ratio": 1e-9}, COUNTS).forward_backward(
        net, torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), None
    )
    assert out["eps_capped"] == out["eps_classes"] == 5  # what the trainer logs as eps_capped_share


# ------------------------------------------------------------------------------ presets and recipes


def test_crt_reinitialises_and_ldam_has_no_second_stage():
    assert stage2_defaults("crt")["reinit"] is True
    recipe = resolve_recipe(apply_overrides(load_recipe("cifar10_lt_cpu"), ["method=ldam_drw"]))
    assert recipe["model"]["head"] == "cosine" and recipe["stage1"]["gamma"] == 0.01
    from ccsam_zoo.training.config import stage_methods

    assert stage_methods(recipe)[1]["name"] == "none"
    with pytest.raises(RecipeError, match="cosine head"):
        resolve_recipe(apply_overrides(load_recipe("cifar10_lt_cpu"), ["method=ldam_drw", "model.head=linear"]))
    plain = resolve_recipe(load_recipe("cifar10_lt_cpu"))
    assert plain["model"]["head"] == "linear" and plain["stage1"]["gamma"] == 0.1


def test_select_on_accepts_only_what_is_implemented():
    with pytest.raises(RecipeError, match="eval.select_on='best'"):
        resolve_recipe(apply_overrides(load_recipe("quickstart"), ["eval.select_on=best"]))


def test_paper_recipes_use_the_authors_subset_rule():
    for name in ("cifar10_lt", "cifar100_lt", "cifar10_lt_cpu"):
        d = load_recipe(name)["data"]
        assert (d["selection"], d["seed"]) == ("shuffle", 42), name


def test_large_scale_recipes_do_not_use_the_collapsing_paper_preset():
    for name in ("imagenet_lt", "places_lt", "inat2018"):
        recipe = load_recipe(name)
        assert recipe["method"] == "ccsam" and recipe["stage2"]["method"] == {"preset": "paper"}, name


def test_sync_bn_converts_only_for_several_cuda_processes():
    from types import SimpleNamespace

    from ccsam_zoo.training.trainer import _sync_batchnorm

    model = timm.create_model("resnet20_cifar", num_classes=3, widths=(4, 6, 8))
    one = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    assert _sync_batchnorm(model, True, one) is model
    cuda = SimpleNamespace(num_processes=2, device=torch.device("cuda"))
    synced = _sync_batchnorm(copy.deepcopy(model), True, cuda)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert synced.state_dict().keys() == model.state_dict().keys()  # saved checkpoints are unchanged
    with pytest.raises(ValueError, match="model.sync_bn=true needs CUDA"):
        _sync_batchnorm(model, True, SimpleNamespace(num_processes=2, device=torch.device("cpu")))


def test_method_keys_are_checked_before_any_work():
    from ccsam_zoo.training.config import check_recipe

    recipe = apply_overrides(load_recipe("quickstart"), ["stage1.method.scal=0.1"])
    with pytest.raises(RecipeError, match=r"stage1.method: ccsam: unknown cfg key 'scal'; did you mean 'scale'"):
        check_recipe(recipe)
    recipe = apply_overrides(load_recipe("quickstart"), ["stage2.method.adv_norm=global"])
    with pytest.raises(RecipeError, match=r"stage2.method: ccsam_adv: adv_norm must be one of"):
        check_recipe(recipe)
