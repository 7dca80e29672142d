"""Command line of training: ``ccsam-zoo train``, ``python -m ccsam_zoo.train`` and ``recipes/train.py``.

A user error (bad recipe, key, value, folder or data) is one ``error: ...`` line with the fix and exit
code 1, before any work where it can be found before; ``--debug`` shows the traceback. Bugs keep theirs.
Under ``accelerate launch`` the line is printed by the main process only; ``accelerate launch --quiet`` (``-q``)
keeps the launcher from adding its own ``CalledProcessError`` traceback (with the child's output again).
Ctrl-C prints one line (where the run stopped, ``--resume DIR``) and exits with 130.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .config import METHODS, Recipe, RecipeError, apply_overrides, list_recipes, load_recipe

__all__ = ["main"]

# Errors that mean "the user asked for something that cannot work": one line, no traceback.
_USER_ERRORS = (ValueError, OSError, FloatingPointError)  # OSError: folders, files, disks (said with the path)


def _parser(prog: str) -> argparse.ArgumentParser:
    recipes = ", ".join(list_recipes()) or "(none found)"
    p = argparse.ArgumentParser(
        prog=prog,
        description="Two-stage long-tailed training (stage 1: CC-SAM or a baseline; stage 2: classifier re-training).",
        epilog=f"recipes: {recipes}\nmethods: {', '.join(METHODS)}\n"
        "example: accelerate launch -q -m ccsam_zoo.train --recipe cifar10_lt --set data.imbalance_ratio=200 "
        "method=ce\n(-q: accelerate's launcher adds no traceback of its own when the run stops with an error)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="a shipped recipe name or a YAML file (with --resume: ignored, the run's recipe.yaml is used)",
    )
    p.add_argument(
        "--output-dir", type=Path, default=None, help="run folder, new or empty (default runs/<recipe>-<method>)"
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. stage1.epochs=30")
    p.add_argument(
        "--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR from its newest checkpoint"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --output-dir first (only a run's files)"
    )
    p.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload both stages when done")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.recipe is None and args.resume is None:
        return "give --recipe NAME to start a run, or --resume RUN_DIR to continue one"
    if args.resume is not None and args.overwrite:
        return "--resume continues a run and --overwrite deletes it: give only one of them"
    if args.resume is not None and args.output_dir is not None and args.output_dir != args.resume:
        return "--resume DIR continues the run in DIR: leave out --output-dir"
    repo = args.push_to_hub
    if repo is not None:  # found now, not after hours of training
        if repo.count("/") != 1 or not all(repo.split("/")):
            return f"--push-to-hub {repo}: expected ORG/NAME, e.g. my-org/ccsam-cifar10-lt"
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "--push-to-hub needs the Hub but HF_HUB_OFFLINE is set: unset it, or push the run later"
        from huggingface_hub import get_token

        if not get_token():
            return "--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"
    return None


def main(argv: list[str] | None = None, prog: str = "recipes/train.py") -> int:
    """Returns the exit code: 0 done, 1 a user error or a failed push (one ``error:`` line), 2 bad usage."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
        problem = _usage_problem(args)
        if problem:
            parser.error(problem)
    except SystemExit as e:  # --help: 0; usage errors: 2 (argparse printed the message)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    repo = args.push_to_hub
    try:
        if args.resume is not None:
            output_dir = args.resume
            saved = output_dir / "recipe.yaml"
            if not saved.is_file():
                raise RecipeError(f"--resume {output_dir}: no recipe.yaml there; is it a run folder?")
            recipe = Recipe.build(apply_overrides(load_recipe(saved), args.set))
        else:
            recipe = Recipe.build(apply_overrides(load_recipe(args.recipe), args.set))  # checked and resolved once
            output_dir = args.output_dir or Path("runs") / f"{recipe.name}-{recipe.method}"
        from .trainer import train  # torch, timm, accelerate: only once the command line is known to be good

        metrics = train(recipe, output_dir, resume=args.resume is not None, overwrite=args.overwrite)
    except KeyboardInterrupt as err:  # the trainer's TrainingInterrupted says where and how to continue
        if args.debug:
            raise
        if _is_main_process():
            print(_one_line(err) if str(err) else "interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if args.debug:
            raise
        if _is_main_process():  # every process stops with the same error: say it once
            print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    summary = {k: round(v["top1"], 2) for k, v in metrics.items()}
    print(f"done: {output_dir} top-1 {summary}")
    if repo:
        return _push(output_dir, repo, args.private, args.debug)
    return 0


def _push(output_dir: Path, repo: str, private: bool, debug: bool) -> int:
    """Upload the run; a failure leaves the run's files as they are and says where they are."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    try:
        from ..hub import push_to_hub

        push_to_hub(output_dir, repo, private=private)
    except Exception as err:  # noqa: BLE001  (network, auth, repo: the run is saved either way)
        if debug:
            raise
        print(f"error: saved in {output_dir}; push failed: {_one_line(err)}", file=sys.stderr)
        return 1
    print(f"pushed: https://huggingface.co/{repo}")
    return 0


def _is_main_process() -> bool:
    """Rank 0 of a launched run (torchrun / accelerate set RANK), or a plain process."""
    return os.environ.get("RANK", "0") in ("", "0")


_OS_FIXES = {
    errno.ENAMETOOLONG: "a file or folder name is too long (at most 255 bytes each): choose a shorter path",
    errno.EEXIST: "it exists and is not a folder (a file, or a link to nothing): remove it or choose another path",
    errno.EACCES: "permission denied: choose a folder you can write to (--output-dir) or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to (--output-dir)",
    errno.EROFS: "the file system is read-only: choose another --output-dir",
    errno.ENOSPC: "no space left on the device: free some space or choose another --output-dir",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.ELOOP: "too many levels of symbolic links: check the links on the path",
}


def _one_line(err: BaseException) -> str:
    """The error as one line; an OS error names its path and says what to do, not ``[Errno N] ...``."""
    if isinstance(err, OSError) and err.errno is not None and err.filename is not None:
        fix = _OS_FIXES.get(err.errno, err.strerror or "")
        text = f"{err.filename}: {fix}"
        if err.filename2 is not None:
            text = f"{err.filename} -> {err.filename2}: {fix}"
    else:
        text = " ".join(str(err).split())
    if "DecompressionBomb" in text:
        text += (
            "; PIL refuses images this large (a guard against decompression bombs): shrink or remove that image, "
            "or raise PIL.Image.MAX_IMAGE_PIXELS in Python if you trust the file"
        )
    return text or type(err).__name__
