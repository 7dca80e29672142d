"""Checkpoint folders (timm schema + ccsam_zoo extras), model cards, loading, aliases and publishing.

- ``save_pretrained(model, folder, info=...)`` writes a folder that ``timm.create_model("local-dir:...")``,
  ``"hf-hub:ORG/NAME"`` and ``from_pretrained`` load with identical logits.
- ``from_pretrained(name_or_path, revision=None, device=None)`` returns an ``inference.Classifier`` from a
  folder, a Hub repo id (through the Hugging Face cache; works offline once cached) or an alias.
- ``list_pretrained()`` / ``register_pretrained(...)``: the alias registry.
- ``push_to_hub(run_dir, repo_id)``: stage 2 to ``main``, stage 1 to branch ``stage1``.
- ``render_model_card(folder)``: the card (README.md) of a checkpoint folder.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# Loaded on first use (``ccsam-zoo list`` needs the registry only, not torch).
_LAZY = {
    "CheckpointError": "_format",
    "save_pretrained": "checkpoint",
    "push_to_hub": "publish",
    "render_model_card": "card",
    "from_pretrained": "registry",
    "list_pretrained": "registry",
    "register_pretrained": "registry",
}

__all__ = [
    "CheckpointError",
    "from_pretrained",
    "list_pretrained",
    "push_to_hub",
    "register_pretrained",
    "render_model_card",
    "save_pretrained",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
