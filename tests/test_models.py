"""The CIFAR ResNets pass the checks timm applies to its own models (tests/test_models.py in timm)."""

from __future__ import annotations

import pytest
import timm
import torch

import ccsam_zoo  # noqa: F401  (registers the models)
from ccsam_zoo.models import FeaturesAndLogits, NormedLinear, linear_head_params

NAMES = ["resnet20_cifar", "resnet32_cifar", "resnet44_cifar", "resnet56_cifar", "resnet110_cifar"]
DEPTH_BLOCKS = {
    "resnet20_cifar": 3,
    "resnet32_cifar": 5,
    "resnet44_cifar": 7,
    "resnet56_cifar": 9,
    "resnet110_cifar": 18,
}


def test_registered_in_timm():
    listed = timm.list_models("*_cifar")
    assert set(NAMES) <= set(listed)
    assert all(timm.is_model(n) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_layout_and_param_count(name):
    model = timm.create_model(name, num_classes=10)
    n = DEPTH_BLOCKS[name]
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [n, n, n]
    # independent count: stem conv + BN, per block two 3x3 convs + two BNs, option-A shortcuts, fc
    widths, count, in_chs = (16, 32, 64), 3 * 9 * 16 + 2 * 16, 16
    for w in widths:
        for j in range(n):
            count += (in_chs if j == 0 else w) * w * 9 + w * w * 9 + 4 * w
        in_chs = w
    count += 64 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == count
    if name == "resnet32_cifar":
        assert count == 464_154  # the ResNet-32 of LDAM / CC-SAM (0.46 M parameters)


def test_forward_backward_and_default_cfg():
    model = timm.create_model("resnet32_cifar", num_classes=7)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["classifier"] == "fc" and cfg["first_conv"] == "conv1"
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    x = torch.randn(2, *cfg["input_size"])
    out = model(x)
    assert out.shape == (2, 7)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_features_head_and_reset():
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (3, 64, 8, 8)
    z = model.forward_head(feats, pre_logits=True)
    assert z.shape == (3, model.num_features) and model.num_features == 64
    torch.testing.assert_close(model.get_classifier()(z), model(x))
    model.reset_classifier(0)
    assert model(x).shape == (3, 64)
    model.reset_classifier(0, "")
    assert model(x).shape == (3, 64, 8, 8)
    model.reset_classifier(5, "avg")
    assert model(x).shape == (3, 5)


def test_features_only():
    model = timm.create_model("resnet32_cifar", features_only=True, out_indices=(1, 2, 3))
    outs = model(torch.randn(2, 3, 32, 32))
    assert [o.shape[1:] for o in outs] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model.feature_info.channels() == [16, 32, 64]
    assert model.feature_info.reduction() == [1, 2, 4]


def test_option_a_shortcut_has_no_parameters():
    model = timm.create_model("resnet20_cifar")
    assert not list(model.layer2[0].shortcut.parameters())
    b = timm.create_model("resnet20_cifar", shortcut="B")
    assert list(b.layer2[0].shortcut.parameters())


def test_bad_depth_and_head():
    from ccsam_zoo.models import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=33)
    with pytest.raises(ValueError, match="head must be"):
        CifarResNet(head="mlp")


def test_cosine_head_and_wrapper():
    model = timm.create_model("resnet20_cifar", num_classes=4, head="cosine").eval()
    assert isinstance(model.get_classifier(), NormedLinear)
    net = FeaturesAndLogits(model)
    x = torch.randn(2, 3, 32, 32)
    z, logits = net(x)
    w = model.get_classifier().weight
    expected = 16.0 * torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max() <= 16.0 + 1e-5
    with pytest.raises(TypeError, match="linear classifier head"):
        linear_head_params(model.get_classifier())


def test_groupnorm_variant_is_batch_independent():
    model = timm.create_model("resnet20_cifar", norm="groupnorm").train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x)[:2], model(x[:2]))
