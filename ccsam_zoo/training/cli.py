"""Command line of ``recipes/train.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import METHODS, RecipeError, apply_overrides, list_recipes, load_recipe

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    recipes = ", ".join(list_recipes()) or "(none found)"
    p = argparse.ArgumentParser(
        prog="recipes/train.py",
        description="Two-stage long-tailed training (stage 1: CC-SAM or a baseline; stage 2: classifier re-training).",
        epilog=f"recipes: {recipes}\nmethods: {', '.join(METHODS)}\n"
        "example: accelerate launch recipes/train.py --recipe cifar10_lt --set data.imbalance_ratio=200 method=ce",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="a shipped recipe name or a YAML file (with --resume: ignored, the run's recipe.yaml is used)",
    )
    p.add_argument("--output-dir", type=Path, default=None, help="run folder (default runs/<recipe>-<method>)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. stage1.epochs=30")
    p.add_argument(
        "--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR from its checkpoint"
    )
    p.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload both stages when done")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.recipe is None and args.resume is None:
        parser.error("give --recipe NAME to start a run, or --resume RUN_DIR to continue one")
    try:
        if args.resume is not None:
            output_dir = args.resume
            saved = output_dir / "recipe.yaml"
            if not saved.exists():
                raise RecipeError(f"--resume {output_dir}: no recipe.yaml there; is it a run folder?")
            recipe = apply_overrides(load_recipe(saved), args.set)
        else:
            recipe = apply_overrides(load_recipe(args.recipe), args.set)
            output_dir = args.output_dir or Path("runs") / f"{recipe['name']}-{recipe['method']}"
        from .trainer import train

        metrics = train(recipe, output_dir, resume=args.resume is not None)
        if args.push_to_hub:
            from accelerate import PartialState

            if PartialState().is_main_process:
                from ..hub import push_to_hub

                push_to_hub(output_dir, args.push_to_hub, private=args.private)
    except (RecipeError, ValueError, FileNotFoundError, FloatingPointError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {k: round(v["top1"], 2) for k, v in metrics.items()}
    print(f"done: {output_dir} top-1 {summary}")
    return 0
