"""Model aliases and ``from_pretrained``: folder, Hub repo id (through the HF cache) or alias.

Stage 2 of a run lives on a repo's ``main`` branch and stage 1 on the ``stage1`` branch; pick stage 1 with
``revision="stage1"`` or a ``":stage1"`` suffix (``"ccsam-cifar10-lt:stage1"``).

Each alias has a status (``list_pretrained``): ``shipped`` (inside the package, works offline), ``local`` (a
registered folder), ``cached`` (in the Hugging Face cache), ``not published`` (a built-in name reserved for
a model nobody has uploaded yet: train it with its recipe), ``not cached`` (a registered Hub repo that is
downloaded on first use), ``missing`` (a registered folder that is gone) or ``not installed`` (an optional
asset too large for the package, looked for in ``$CCSAM_ASSETS/<alias>``, default
``~/.cache/ccsam_zoo/assets/<alias>``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .._lazy import lazy_module
from ._format import (
    CONFIG_NAME,
    EXTRAS_NAME,
    OPEN_SET_STATS_NAME,
    PROTOTYPES_NAME,
    WEIGHTS_NAME,
    CheckpointError,
)
from .loading import load_checkpoint

torch = lazy_module("torch")  # imported on first use: `ccsam-zoo list` stays fast

__all__ = ["PretrainedModel", "from_pretrained", "list_pretrained", "register_pretrained", "resolve_checkpoint"]

ORG = "ccsam-zoo"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
STAGE1_REVISION = "stage1"
_HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, EXTRAS_NAME, PROTOTYPES_NAME, OPEN_SET_STATS_NAME]


@dataclass(frozen=True)
class _Entry:
    alias: str
    repo_id: str | None = None
    revision: str = "main"
    local_dir: Path | None = None
    dataset: str | None = None
    recipe: str | None = None
    architecture: str | None = None  # the backbone its recipe trains (repo names must agree)
    shipped: bool = False  # local_dir is inside the package's assets
    published: bool = True  # False: a reserved Hub name with nothing uploaded yet
    method: str | None = None  # the recipe's `method` flag that trains it
    optional: bool = False  # an optional asset folder outside the package (OPTIONAL_ASSETS_DIR / alias)
    nearest: str | None = None  # a reserved name's nearest trained model (same code path, smaller data)


class PretrainedModel(NamedTuple):
    """One row of ``list_pretrained()``.

    ``status``: "shipped", "local", "cached", "not published", "not cached", "missing", "not shipped"
    (a shipped alias's stage 1, which the package does not include) or "not installed" (an optional asset
    folder that is absent); ``available_locally`` is True for the first three. ``nearest``: for a reserved
    name, the trained model of the same code path to use meanwhile.
    """

    alias: str
    repo_id: str | None
    revision: str | None
    dataset: str | None
    available_locally: bool
    status: str = "not cached"
    architecture: str | None = None
    recipe: str | None = None
    method: str | None = None
    nearest: str | None = None


_REGISTRY: dict[str, _Entry] = {}

# Display names of the datasets of the aliases (errors here, model cards in card.py).
_PRETTY = {
    "cifar10_lt": "CIFAR-10-LT",
    "cifar100_lt": "CIFAR-100-LT",
    "imagenet_lt": "ImageNet-LT",
    "places_lt": "Places-LT",
    "inat2018": "iNaturalist 2018",
}


def pretty_dataset(name: str | None) -> str:
    """The display name of a dataset (``"cifar10_lt"`` -> ``"CIFAR-10-LT"``); unknown names unchanged."""
    return _PRETTY.get(name or "", name or "unknown dataset")


# Reserved Hub names of the paper's settings. Nothing has been uploaded under them yet (published=False):
# each repo name states the backbone that its recipe (recipes/<recipe>.yaml, model.arch) trains.
_BUILTIN_HUB = (
    # alias, repo name, dataset, recipe, architecture
    ("ccsam-cifar100-lt", "ccsam-cifar100-lt-ir100-resnet32", "cifar100_lt", "cifar100_lt", "resnet32_cifar"),
    ("ccsam-imagenet-lt", "ccsam-imagenet-lt-resnext50-32x4d", "imagenet_lt", "imagenet_lt", "resnext50_32x4d"),
    ("ccsam-places-lt", "ccsam-places-lt-resnet152", "places_lt", "places_lt", "resnet152"),
    ("ccsam-inat2018", "ccsam-inat2018-resnet50", "inat2018", "inat2018", "resnet50"),
)


# Models inside the package (ccsam_zoo/assets/<alias>/, made by bench/ship_model.py): a checkpoint folder (stage 2
# only) or a small run folder with stage1/ and stage2/ (ALIAS:stage1). None of them is on the Hub.
_SHIPPED = (
    # alias, dataset, recipe, method (the recipe's `method` flag), architecture
    # stage2.method.preset=paper + AutoAugment + Cutout, mixup off, validation-selected epochs (issue 22)
    ("ccsam-cifar10-lt", "cifar10_lt", "cifar10_lt", "ccsam", "resnet32_cifar"),
    # the same augmentation and selection (issue 22)
    ("ce-crt-cifar10-lt", "cifar10_lt", "cifar10_lt", "ce", "resnet32_cifar"),
    # the same augmentation and selection (issue 22), mixup on (alpha 1.0), stage 2 only
    ("mixup-crt-cifar10-lt", "cifar10_lt", "cifar10_lt", "mixup_crt", "resnet32_cifar"),
    ("ccsam-cifar10-lt-cpu", "cifar10_lt", "cifar10_lt_cpu", "ccsam", "resnet32_cifar"),
)


# Trained models too large for the package (a ResNet-50 is 47 MB in fp16): optional asset folders outside it,
# OPTIONAL_ASSETS_DIR/<alias> (a run folder with stage1/ and stage2/, or a checkpoint folder), made by
# `python bench/tinyimagenet_lt_report.py --export` from a run of the recipe. Download-free: nothing is fetched.
_OPTIONAL = (
    # alias, dataset, recipe, method, architecture
    ("ccsam-tinyimagenet-lt", "tinyimagenet_lt", "tinyimagenet_lt_cpu", "ccsam", "resnet50_64px"),  # preset=paper
    ("ce-crt-tinyimagenet-lt", "tinyimagenet_lt", "tinyimagenet_lt_cpu", "ce", "resnet50_64px"),
)
# Reserved names of the OLTR / large-image code path -> the nearest trained model of that code path.
_NEAREST = {a: "ccsam-tinyimagenet-lt" for a in ("ccsam-imagenet-lt", "ccsam-places-lt", "ccsam-inat2018")}


def optional_assets_dir() -> Path:
    """Where the optional asset folders are: ``$CCSAM_ASSETS``, default ``~/.cache/ccsam_zoo/assets``."""
    return Path(os.environ.get("CCSAM_ASSETS") or "~/.cache/ccsam_zoo/assets").expanduser()


def _builtin_entries() -> dict[str, _Entry]:
    out = {
        alias: _Entry(
            alias, f"{ORG}/{repo}", "main", None, dataset, recipe, arch, published=False, method="ccsam",
            nearest=_NEAREST.get(alias),
        )
        for alias, repo, dataset, recipe, arch in _BUILTIN_HUB
    }  # fmt: skip
    for alias, dataset, recipe, method, arch in _SHIPPED:
        out[alias] = _Entry(alias, None, "main", ASSETS_DIR / alias, dataset, recipe, arch, shipped=True, method=method)
    for alias, dataset, recipe, method, arch in _OPTIONAL:
        folder = optional_assets_dir() / alias
        out[alias] = _Entry(alias, None, "main", folder, dataset, recipe, arch, method=method, optional=True)
    return out


_REGISTRY.update(_builtin_entries())


# ----------------------------------------------------------------------------------------------- registry


def register_pretrained(
    alias: str,
    repo_id: str | None = None,
    revision: str = "main",
    local_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    recipe: str | None = None,
    architecture: str | None = None,
    overwrite: bool = False,
) -> PretrainedModel:
    """Add an alias for a Hub repo (stage 2 at ``revision``, stage 1 on branch "stage1") and/or a local folder.

    ``local_dir`` is a checkpoint folder or a run folder holding ``stage1/`` and ``stage2/``; when both are
    given the folder is tried first. ``recipe`` names the recipe that trains it (used in error messages).
    """
    if not alias or ":" in alias or "/" in alias or "@" in alias:
        raise ValueError(f"alias must be a non-empty name without ':', '/' or '@', got {alias!r}")
    if repo_id is None and local_dir is None:
        raise ValueError("register_pretrained needs repo_id (ORG/NAME) or local_dir (a checkpoint folder)")
    if repo_id is not None and repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like ORG/NAME, got {repo_id!r}")
    if alias in _REGISTRY and not overwrite:
        raise ValueError(f"alias {alias!r} is already registered ({_describe(_REGISTRY[alias])}); pass overwrite=True")
    folder = Path(local_dir).expanduser() if local_dir is not None else None
    entry = _Entry(alias, repo_id, revision or "main", folder, dataset, recipe, architecture)
    _REGISTRY[alias] = entry
    return _row(entry, entry.revision, alias)


def list_pretrained() -> list[PretrainedModel]:
    """Registered aliases (stage 2 and, as ``ALIAS:stage1``, stage 1) and where each one is.

    ``status`` says it honestly: "shipped" (in the package), "local" (a registered folder), "cached" (in the
    Hugging Face cache), "not published" (a reserved name nobody has uploaded a model under: train it with
    its ``recipe``), "not cached" (a registered Hub repo, downloaded on first use), "missing" / "not shipped".
    """
    rows = []
    for entry in _REGISTRY.values():
        rows.append(_row(entry, entry.revision, entry.alias))
        rows.append(_row(entry, STAGE1_REVISION, f"{entry.alias}:{STAGE1_REVISION}"))
    return rows


def _status(entry: _Entry, revision: str) -> str:
    stage1 = revision == STAGE1_REVISION
    if entry.local_dir is not None and _local_checkpoint(entry.local_dir, stage1) is not None:
        return "shipped" if entry.shipped else "local"
    if entry.repo_id is not None:
        if _in_cache(entry.repo_id, revision):
            return "cached"
        return "not cached" if entry.published else "not published"
    if entry.shipped and stage1 and entry.local_dir is not None and entry.local_dir.exists():
        return "not shipped"  # the package holds stage 2 of this model only
    return "not installed" if entry.optional else "missing"


def _row(entry: _Entry, revision: str, name: str) -> PretrainedModel:
    status = _status(entry, revision)
    return PretrainedModel(
        name, entry.repo_id, revision if entry.repo_id else None, entry.dataset,
        status in ("shipped", "local", "cached"), status, entry.architecture, entry.recipe, entry.method,
        entry.nearest,
    )  # fmt: skip


def _in_cache(repo_id: str, revision: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return all(
            isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str)
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        )
    except Exception:  # noqa: BLE001  (an unreadable cache counts as not cached)
        return False


def _describe(entry: _Entry) -> str:
    where = []
    if entry.local_dir is not None:
        where.append(f"folder {entry.local_dir}")
    if entry.repo_id is not None:
        where.append(f"Hub repo {entry.repo_id} @ {entry.revision}")
    return ", ".join(where)


# ---------------------------------------------------------------------------------------------- resolving


def _local_checkpoint(path: Path, stage1: bool) -> Path | None:
    """The checkpoint folder for a stage inside ``path`` (a checkpoint folder or a run folder), or None."""
    if (path / CONFIG_NAME).is_file() and not stage1:
        return path
    sub = path / ("stage1" if stage1 else "stage2")
    if (sub / CONFIG_NAME).is_file():
        return sub
    return None


def _stage_request(name: str, revision: str | None) -> tuple[str, str | None]:
    """Split a ``:stage1`` / ``:stage2`` / ``@rev`` suffix; returns (base name, revision or None)."""
    suffix = None
    base = name
    for sep in (":", "@"):
        if sep in name and not Path(name).exists():
            base, suffix = name.rsplit(sep, 1)
            break
    if suffix == "stage2":
        suffix = "main"
    if revision == "stage2":
        revision = "main"
    if suffix is not None and revision is not None and suffix != revision:
        raise ValueError(f"{name!r} asks for revision {suffix!r} but revision={revision!r} was passed")
    return base, revision or suffix


def _recipe_args(entry: _Entry) -> str:
    """``--recipe R`` plus ``--set method=M`` where the alias's method is not the recipe's own (every built-in
    recipe trains ``method: ccsam``; tests/test_hub_registry.py checks it)."""
    args = f"--recipe {entry.recipe or 'RECIPE'}"
    return args + (f" --set method={entry.method}" if entry.method and entry.method != "ccsam" else "")


def _train_hint(recipe_args: str | None) -> str:
    recipe_args = recipe_args or "--recipe RECIPE"
    return (
        f"train it with `ccsam-zoo train {recipe_args}` and pass the run's stage2/ "
        "folder (or the run folder) to from_pretrained, or pass any checkpoint folder"
    )


def _download(repo_id: str, revision: str, recipe_args: str | None, label: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    from .. import __version__

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=_HUB_FILES,
                library_name="ccsam_zoo",
                library_version=__version__,
            )
        )
    except Exception as err:  # noqa: BLE001  (offline, unknown repo/revision, network: all mean "not available")
        cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        hub = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"model {label} is not available: looked for Hub repo {repo_id} at revision {revision!r} in the "
            f"Hugging Face cache {cache} (no complete snapshot there) and on the Hub ({hub}). To fix: download it "
            f"while online (snapshot_download({repo_id!r}, revision={revision!r})), or {_train_hint(recipe_args)}"
        ) from None


def _unpublished(entry: _Entry, name: str, revision: str) -> Path:
    """A reserved alias nobody has uploaded: try the Hub once when online, else one short message."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        try:
            return _download(entry.repo_id, revision, _recipe_args(entry), repr(name))
        except CheckpointError:
            pass
    on = f"on {pretty_dataset(entry.dataset)}" if entry.dataset else ""
    what = " ".join(x for x in (entry.architecture, on) if x)
    shipped = sorted(a for a, e in _REGISTRY.items() if e.shipped)
    nearest = f"; nearest trained model of this code path: {entry.nearest!r}" if entry.nearest else ""
    raise CheckpointError(
        f"model {name!r} is not published yet: nothing has been uploaded to {entry.repo_id} and it is not in the "
        f"local cache. Train it with `ccsam-zoo train {_recipe_args(entry)}`"
        f"{f' ({what})' if what else ''} and pass the run folder to from_pretrained"
        + (nearest or (f"; ready to use now: {', '.join(shipped)}" if shipped else ""))
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", "/", "\\")) or name.count("/") > 1 or "\\" in name


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The local checkpoint folder for a folder / alias / Hub repo id, and where it came from."""
    name = os.fspath(name_or_path)
    stage1 = revision == STAGE1_REVISION
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds {CONFIG_NAME}")
        if revision not in (None, "main", "stage2", STAGE1_REVISION):
            raise CheckpointError(f"revision={revision!r} applies to Hub repos; {path} is a local folder")
        found = _local_checkpoint(path, stage1)
        if found is None:
            contents = sorted(p.name for p in path.iterdir())[:10]
            want = "stage1/" if stage1 else f"{CONFIG_NAME} (or stage2/)"
            raise CheckpointError(
                f"{path}: not a checkpoint folder: no {want} there (contents: {contents}); a checkpoint folder holds "
                f"{CONFIG_NAME} and {WEIGHTS_NAME}, a run folder holds stage1/ and stage2/"
            )
        return found, {"source": "local", "path": str(found)}
    base, rev = _stage_request(name, revision)
    if base in _REGISTRY:
        entry = _REGISTRY[base]
        stage1 = rev == STAGE1_REVISION
        looked = []
        if entry.local_dir is not None and entry.repo_id is None and rev not in (None, "main", STAGE1_REVISION):
            raise CheckpointError(
                f"revision={rev!r} applies to Hub repos; {base!r} is a local model (use 'stage1' or 'stage2')"
            )
        if entry.local_dir is not None:
            found = _local_checkpoint(entry.local_dir, stage1)
            if found is not None:
                return found, {"source": "alias", "alias": base, "path": str(found)}
            state = "no checkpoint there" if entry.local_dir.exists() else "missing"
            looked.append(f"{entry.local_dir}{' (stage1/)' if stage1 else ''}: {state}")
        if entry.repo_id is not None:
            rev = rev or entry.revision
            if not entry.published and not _in_cache(entry.repo_id, rev):
                folder = _unpublished(entry, name, rev)
            else:
                folder = _download(entry.repo_id, rev, _recipe_args(entry), f"{name!r} (alias of {entry.repo_id})")
            origin = {"source": "hub", "alias": base, "repo_id": entry.repo_id, "revision": rev, "path": str(folder)}
            return folder, origin
        if entry.shipped and stage1 and entry.local_dir.exists():
            raise CheckpointError(
                f"model {name!r} is not available: the package ships stage 2 of {base!r} only; use {base!r}, or "
                f"train it with `ccsam-zoo train {_recipe_args(entry)}` and load the run "
                "folder with revision='stage1'"
            )
        if entry.optional:
            raise CheckpointError(
                f"model {name!r} is not installed: it is an optional asset (too large for the package), looked "
                f"for in {entry.local_dir}. Copy its folder there (or set CCSAM_ASSETS to the folder holding "
                f"{base}/), or make it: `ccsam-zoo train {_recipe_args(entry)}` then "
                f"`python bench/tinyimagenet_lt_report.py --export RUN_DIR --alias {base}`"
            )
        what = "This bundled model is missing from this installation" if entry.shipped else "The folder is gone"
        hint = _train_hint(_recipe_args(entry))
        raise CheckpointError(f"model {name!r} is not available: looked in {', '.join(looked)}. {what}; {hint}")
    if base.count("/") == 1 and not _looks_like_path(name):
        rev = rev or "main"
        folder = _download(base, rev, None, repr(name))
        return folder, {"source": "hub", "repo_id": base, "revision": rev, "path": str(folder)}
    if _looks_like_path(name):
        raise CheckpointError(f"{path}: no such folder; pass an existing checkpoint folder, an alias or ORG/NAME")
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(base, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CheckpointError(
        f"unknown model {name!r}: not a folder, a registered alias or a Hub repo id (ORG/NAME).{hint} Known aliases: "
        f"{', '.join(known)} (see list_pretrained(); add one with register_pretrained())"
    )


def from_pretrained(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    device: str | torch.device | None = None,
):
    """Load a ``ccsam_zoo.inference.Classifier`` from a folder, a Hub repo id or an alias.

    ``revision``: Hub branch / tag / commit; ``"stage1"`` selects stage 1 (also ``"NAME:stage1"``). Hub
    downloads go through the Hugging Face cache and work offline (``HF_HUB_OFFLINE=1``) once cached. Only
    safetensors are read; loads are strict. Raises ``CheckpointError`` with what was tried and what to do.
    """
    folder, origin = resolve_checkpoint(name_or_path, revision)
    ckpt = load_checkpoint(folder)
    from ..inference import Classifier, OpenSetStats

    extras = ckpt.extras
    stats = None
    if ckpt.open_set_stats is not None:
        try:
            stats = OpenSetStats.from_tensors(*ckpt.open_set_stats)
        except ValueError as err:
            raise CheckpointError(f"{folder / OPEN_SET_STATS_NAME}: {err}; re-fit them with clf.fit_open_set") from err
    meta = {**extras, **origin, "name": os.fspath(name_or_path)}
    try:
        clf = Classifier(
            ckpt.model,
            class_names=ckpt.class_names,
            class_counts=extras.get("class_counts"),
            pretrained_cfg=dict(ckpt.model.pretrained_cfg),
            prototypes=ckpt.prototypes,
            open_set_stats=stats,
            open_set=extras.get("open_set"),
            meta=meta,
        )
    except (ValueError, TypeError, KeyError, RuntimeError) as err:  # metadata that passed the type checks
        raise CheckpointError(
            f"{folder}: cannot use this checkpoint ({CONFIG_NAME} pretrained_cfg / {EXTRAS_NAME}): {err}; re-save "
            "or re-download it"
        ) from None
    if device is not None:
        clf = clf.to(device)
    return clf.eval()
