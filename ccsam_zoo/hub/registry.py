"""Aliases of published models and ``from_pretrained``: folder, Hub repo id (through the HF cache) or alias.

Stage 2 of a run lives on a repo's ``main`` branch and stage 1 on the ``stage1`` branch; pick stage 1 with
``revision="stage1"`` or a ``":stage1"`` suffix (``"ccsam-cifar10-lt:stage1"``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .._lazy import lazy_module
from .checkpoint import CONFIG_NAME, EXTRAS_NAME, PROTOTYPES_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint

torch = lazy_module("torch")  # imported on first use: `ccsam-zoo list` stays fast

__all__ = ["PretrainedModel", "from_pretrained", "list_pretrained", "register_pretrained", "resolve_checkpoint"]

ORG = "ccsam-zoo"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
STAGE1_REVISION = "stage1"
_HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, EXTRAS_NAME, PROTOTYPES_NAME]


@dataclass(frozen=True)
class _Entry:
    alias: str
    repo_id: str | None = None
    revision: str = "main"
    local_dir: Path | None = None
    dataset: str | None = None
    recipe: str | None = None


class PretrainedModel(NamedTuple):
    """One row of ``list_pretrained()``."""

    alias: str
    repo_id: str | None
    revision: str | None
    dataset: str | None
    available_locally: bool


_REGISTRY: dict[str, _Entry] = {}


def _builtin() -> None:
    for alias, repo, dataset, recipe in (
        ("ccsam-cifar10-lt", "ccsam-cifar10-lt-ir100-resnet32", "cifar10_lt", "cifar10_lt"),
        ("ccsam-cifar100-lt", "ccsam-cifar100-lt-ir100-resnet32", "cifar100_lt", "cifar100_lt"),
        ("ccsam-imagenet-lt", "ccsam-imagenet-lt-resnet50", "imagenet_lt", "imagenet_lt"),
        ("ccsam-places-lt", "ccsam-places-lt-resnet152", "places_lt", "places_lt"),
        ("ccsam-inat2018", "ccsam-inat2018-resnet50", "inat2018", "inat2018"),
    ):
        _REGISTRY[alias] = _Entry(alias, f"{ORG}/{repo}", "main", None, dataset, recipe)
    _REGISTRY["ccsam-cifar10-lt-cpu"] = _Entry(
        "ccsam-cifar10-lt-cpu", None, "main", ASSETS_DIR / "ccsam-cifar10-lt-cpu", "cifar10_lt", "cifar10_lt_cpu"
    )


_builtin()


# ----------------------------------------------------------------------------------------------- registry


def register_pretrained(
    alias: str,
    repo_id: str | None = None,
    revision: str = "main",
    local_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    recipe: str | None = None,
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
    entry = _Entry(alias, repo_id, revision or "main", folder, dataset, recipe)
    _REGISTRY[alias] = entry
    return _row(entry, entry.revision, alias)


def list_pretrained() -> list[PretrainedModel]:
    """Registered aliases (stage 2 and, as ``ALIAS:stage1``, stage 1) and whether each is on this machine."""
    rows = []
    for entry in _REGISTRY.values():
        rows.append(_row(entry, entry.revision, entry.alias))
        rows.append(_row(entry, STAGE1_REVISION, f"{entry.alias}:{STAGE1_REVISION}"))
    return rows


def _row(entry: _Entry, revision: str, name: str) -> PretrainedModel:
    stage1 = revision == STAGE1_REVISION
    local = entry.local_dir is not None and _local_checkpoint(entry.local_dir, stage1) is not None
    cached = entry.repo_id is not None and _in_cache(entry.repo_id, revision)
    return PretrainedModel(name, entry.repo_id, revision if entry.repo_id else None, entry.dataset, local or cached)


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


def _train_hint(recipe: str | None) -> str:
    recipe = recipe or "RECIPE"
    return (
        f"train it with `accelerate launch recipes/train.py --recipe {recipe}` and pass the run's stage2/ "
        "folder (or the run folder) to from_pretrained, or pass any checkpoint folder"
    )


def _download(repo_id: str, revision: str, recipe: str | None, label: str) -> Path:
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
            f"while online (snapshot_download({repo_id!r}, revision={revision!r})), or {_train_hint(recipe)}"
        ) from err


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
        if entry.local_dir is not None:
            found = _local_checkpoint(entry.local_dir, stage1)
            if found is not None:
                return found, {"source": "alias", "alias": base, "path": str(found)}
            state = "no checkpoint there" if entry.local_dir.exists() else "missing"
            looked.append(f"{entry.local_dir}{' (stage1/)' if stage1 else ''}: {state}")
        if entry.repo_id is not None:
            rev = rev or entry.revision
            folder = _download(entry.repo_id, rev, entry.recipe, f"{name!r} (alias of {entry.repo_id})")
            origin = {"source": "hub", "alias": base, "repo_id": entry.repo_id, "revision": rev, "path": str(folder)}
            return folder, origin
        raise CheckpointError(
            f"model {name!r} is not available: looked in {', '.join(looked)}. This bundled model has not been "
            f"added to this installation; {_train_hint(entry.recipe)}"
        )
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
    from ..inference import Classifier

    extras = ckpt.extras
    meta = {**extras, **origin, "name": os.fspath(name_or_path)}
    clf = Classifier(
        ckpt.model,
        class_names=ckpt.class_names,
        class_counts=extras.get("class_counts"),
        pretrained_cfg=dict(ckpt.model.pretrained_cfg),
        prototypes=ckpt.prototypes,
        open_set=extras.get("open_set"),
        meta=meta,
    )
    if device is not None:
        clf = clf.to(device)
    return clf.eval()
