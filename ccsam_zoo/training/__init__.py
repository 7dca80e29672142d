"""Two-stage training on Accelerate: recipes, the trainer, checkpoints, logs and plots."""

from __future__ import annotations

from typing import Any

from .config import METHODS, Recipe, RecipeError, apply_overrides, list_recipes, load_recipe

__all__ = ["METHODS", "Recipe", "RecipeError", "apply_overrides", "list_recipes", "load_recipe", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":  # imported on use: the recipe tools stay light
        from .trainer import train

        return train
    raise AttributeError(name)
