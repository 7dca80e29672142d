"""CC-SAM (Class-Conditional Sharpness-Aware Minimization, CVPR 2023) and long-tailed baselines.

Pure functions carry the equations (``perturbation``: Eq. 8-9, ``head``: the closed form of the head
perturbation, ``adversarial``: Eq. 12-14, ``losses``: baselines); ``methods`` composes them into the
stage-1 / stage-2 methods the trainer uses (``build_stage1`` / ``build_stage2``).
"""

from .head import perturbed_head_logits
from .methods import (
    STAGE1_METHODS,
    STAGE2_METHODS,
    Stage1Method,
    Stage2Method,
    build_stage1,
    build_stage2,
    stage1_defaults,
    stage2_defaults,
)

__all__ = [
    "STAGE1_METHODS",
    "STAGE2_METHODS",
    "Stage1Method",
    "Stage2Method",
    "build_stage1",
    "build_stage2",
    "perturbed_head_logits",
    "stage1_defaults",
    "stage2_defaults",
]
