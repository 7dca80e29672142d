"""Build the stage-1 / stage-2 method of a cfg: ``build_stage1(cfg, class_counts)``, ``build_stage2(...)``.

Where each lives: ``presets`` (every key, default and preset; the recipe-level ``METHODS``), ``stage1`` (CC-SAM,
Eq. 8-11), ``stage2`` (adversarial re-training, Eq. 12-14), ``baselines`` (CE, Balanced Softmax, LDAM-DRW,
mixup, SAM, cRT) and the method contract in the ``baselines`` docstring.

cfg keys (``stage1_defaults`` / ``stage2_defaults`` list them with their defaults):

* ``ce``: logit_norm_tau (LogitNorm, Wei et al. 2022: CE on ``logits / (tau ||logits||)``, None = off), oe_weight
  / oe_fraction / oe_grid (outlier exposure on patch-shuffled images of the batch, 0 = off); ``sam``: rho,
  adaptive (ASAM), global_stats; ``balanced_softmax``: tau (1 = Balanced Softmax); ``ldam_drw``: max_m, s,
  drw_epoch (0-based first DRW epoch, None = 80% of the stage), beta; ``mixup``: alpha, logit_norm_tau, oe_*.
* ``ccsam`` (presets "official" (default) / "paper"): scale (s of Eq. 8), norm ("per_tensor" | "global"),
  flat_ratio (None = 0.3 for <= 10 classes else 0.5), class_weighting ("instance" | "class"), mixup_alpha
  (0 = off), grad_targets (the loss whose class gradient is g_c: "mixed" = the mixup loss, authors;
  "first_label"), perturbed_targets ("first_label" | "mixed"), mode ("head" | "block"), blocks (last N timm blocks
  + head, block mode), params (regex instead of blocks), block_batch ("full" | "class"), groups (frequency
  groups instead of classes, block mode), max_ratio (cap on ||eps_c|| / ||w||, None = none), perturbation
  ("ccsam" | "direction" | "magnitude"), tau (logit adjustment of both terms, 0 = plain CE), global_stats
  (class statistics from the global batch under data parallelism), eps (gradient-norm floor), logit_norm_tau
  (LogitNorm in every loss of the step, g_c included; None = off; not with tau), oe_weight / oe_fraction /
  oe_grid (head mode).
* stage 2: ``crt``: bn ("eval" | "train"), reinit (re-initialise the classifier first: Kang et al.),
  logit_norm_tau (also in ``ccsam_adv``); ``none``;
  ``ccsam_adv`` (presets "official" (default) / "paper"):
  adv_lambda, adv_norm ("class" | "batch" | "sample"), class_weight ("log" | "none"), div, weight_loss,
  up_limit (None = 1.0 for <= 10 classes else 0.3), bn, global_stats.

Data parallelism (``global_stats=True``): head mode gathers z, r and labels (padded, uneven batches fine) so
every process uses the global-batch eps_c; per-sample loss weights are scaled so that DDP's gradient mean is
the global objective. Block mode and SAM run their passes under ``no_sync`` and all-reduce: class-sum
gradients (exact global class means), then all gradients (mean). Exact = identical to one process on the
global batch whenever each sample's loss does not depend on the other samples (no train-mode BatchNorm; with
BatchNorm every process normalises with its own batch, as plain DDP does). Stage 2 reduces its norms too.
"""

from __future__ import annotations

from typing import Any

import torch

from .baselines import LDAMDRW, SAM, BalancedSoftmax, Mixup, NoStage2, Stage1Method, Stage2Method
from .presets import _STAGE1, _STAGE2, STAGE1_METHODS, STAGE2_METHODS, resolve_method, stage1_defaults, stage2_defaults
from .stage1 import CCSAM
from .stage2 import CCSAMAdv

__all__ = [
    "STAGE1_METHODS",
    "STAGE2_METHODS",
    "Stage1Method",
    "Stage2Method",
    "build_stage1",
    "build_stage2",
    "stage1_defaults",
    "stage2_defaults",
]

_STAGE1_CLASSES = {"ce": Stage1Method, "sam": SAM, "balanced_softmax": BalancedSoftmax, "ldam_drw": LDAMDRW,
                   "mixup": Mixup, "ccsam": CCSAM}
_STAGE2_CLASSES = {"crt": Stage2Method, "ccsam_adv": CCSAMAdv, "none": NoStage2}


def build_stage1(cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> Stage1Method:
    """Stage-1 method from ``cfg`` (``{"name": ..., ["preset": ...], overrides...}``); unknown keys raise
    ValueError naming the closest valid key."""
    resolved = resolve_method(_STAGE1, "stage-1", cfg, len(class_counts))
    method = _STAGE1_CLASSES[resolved["name"]](resolved, class_counts)
    method.set_epoch(0, 1)
    return method


def build_stage2(cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> Stage2Method:
    """Stage-2 method from ``cfg`` (``crt``, ``ccsam_adv`` with presets "official" / "paper", ``none``)."""
    resolved = resolve_method(_STAGE2, "stage-2", cfg, len(class_counts))
    method = _STAGE2_CLASSES[resolved["name"]](resolved, class_counts)
    method.set_epoch(0, 1)
    return method
