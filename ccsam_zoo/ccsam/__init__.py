"""CC-SAM (Class-Conditional Sharpness-Aware Minimization, CVPR 2023) and long-tailed baselines.

Where each equation lives: ``perturbation`` (Eq. 8 radius, Eq. 9 perturbation), ``head`` (the closed form of
the head perturbation), ``block`` (true per-class gradients of several layers), ``stage1`` (Eq. 10-11, the
``CCSAM`` method), ``adversarial`` (Eq. 12 feature shift, Eq. 14 weight), ``stage2`` (Eq. 14 mix, the
``CCSAMAdv`` method), ``baselines`` (CE, Balanced Softmax, LDAM-DRW, mixup, SAM, cRT), ``presets`` (every key,
default and preset, and the recipe-level ``METHODS``), ``methods`` (``build_stage1`` / ``build_stage2``).
Submodules load on first use: ``presets`` alone does not import torch.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "perturbed_head_logits": "head",
    "STAGE1_METHODS": "presets",
    "STAGE2_METHODS": "presets",
    "METHODS": "presets",
    "stage1_defaults": "presets",
    "stage2_defaults": "presets",
    "Stage1Method": "methods",
    "Stage2Method": "methods",
    "build_stage1": "methods",
    "build_stage2": "methods",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
