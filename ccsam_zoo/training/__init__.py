"""Two-stage training on Accelerate: recipes, the trainer, checkpoints, logs and plots."""

from .config import METHODS, RecipeError, apply_overrides, list_recipes, load_recipe
from .trainer import train

__all__ = ["METHODS", "RecipeError", "apply_overrides", "list_recipes", "load_recipe", "train"]
