"""Classifier heads and the (features, logits) view of a timm model used by the training code."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NormedLinear", "FeaturesAndLogits", "linear_head_params", "unwrap"]


class NormedLinear(nn.Module):
    """Cosine classifier: ``scale * normalize(z) @ normalize(W).T`` (no bias)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 16.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.register_buffer("scale", torch.tensor(float(scale)))
        # kaidic/LDAM-DRW's NormedLinear: uniform(-1, 1) rows renormalised to unit norm
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(z, dim=1), F.normalize(self.weight, dim=1))


class FeaturesAndLogits(nn.Module):
    """Wraps a timm model so that one call returns ``(z, logits)``.

    ``z = forward_head(forward_features(x), pre_logits=True)`` is the penultimate feature vector and
    ``logits = get_classifier()(z)``. Going through one ``forward`` keeps DDP's hooks working when the
    wrapper (not the timm model) is what Accelerate prepares. The wrapped model's state dict is
    unchanged: ``wrapper.model.state_dict()`` is a plain timm state dict.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return z, self.model.get_classifier()(z)


def linear_head_params(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` of a linear head, with a clear error for heads the closed forms cannot use."""
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"this operation needs a linear classifier head (nn.Linear), got {type(head).__name__}; "
            "use head='linear' or a block-mode perturbation"
        )
    return head.weight, head.bias


def _is_timm_model(module: nn.Module) -> bool:
    return isinstance(getattr(module, "pretrained_cfg", None), dict) and hasattr(module, "get_classifier")


def unwrap(module: nn.Module, *, timm_model: bool = True) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``.module``) wrappers; with
    ``timm_model`` (default) also inside ``FeaturesAndLogits`` / ``Classifier`` (``.model``), down to the timm
    model (ValueError when there is none). The one place the project unwraps models."""
    for _ in range(8):
        compiled = getattr(module, "_orig_mod", None)  # torch.compile forwards attributes: unwrap it first
        if isinstance(compiled, nn.Module):
            module = compiled
            continue
        inner = getattr(module, "module", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        if not timm_model or _is_timm_model(module):
            return module
        inner = getattr(module, "model", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    raise ValueError(
        f"expected a timm model (with .pretrained_cfg) inside {type(module).__name__}: create it with "
        "timm.create_model(...) after `import ccsam_zoo`"
    )
