"""``load_checkpoint``: build the timm model of a checkpoint folder, load and validate its weights.

What loading refuses, each with a ``CheckpointError`` naming the file and the tensor / key:

- a missing or corrupt file, a config field of the wrong type or out of range (``_format.check_config``);
- weights that are not floating point (bool, integer, float8), NaN / inf weights, a negative BatchNorm
  variance (``_format.check_weights``), weights whose shapes or names do not match the config;
- a model whose logits on a probe batch (three constant images: black, mid-grey and white, at the model's
  input size, through its own normalisation) are not finite or larger than ``PROBE_LOGIT_LIMIT`` in
  magnitude: such weights give probability 1.0 (or NaN) to every image. The message names the first layer
  whose output goes wrong and its largest weight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._lazy import lazy_module
from ._format import (
    CONFIG_NAME,
    EXTRAS_NAME,
    OPEN_SET_STATS_NAME,
    PROTOTYPES_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    check_config,
    check_finite,
    check_weights,
    load_safetensors,
    read_extras,
    read_json,
    safetensors_metadata,
)

torch = lazy_module("torch")
nn = lazy_module("torch.nn")

__all__ = ["LoadedCheckpoint", "PROBE_LOGIT_LIMIT", "load_checkpoint"]

# |logit| above this on a constant image means broken weights: trained classifiers give logits of tens at most,
# and a softmax saturates (probability 1.0) long before it
PROBE_LOGIT_LIMIT = 1e4
PROBE_LEVELS = (0.0, 0.5, 1.0)  # black, mid-grey and white images, in raw [0, 1] pixels


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` read: the timm model (eval, CPU) and the folder's metadata."""

    model: nn.Module
    folder: Path
    config: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    prototypes: torch.Tensor | None = None
    open_set_stats: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None  # (tensors, metadata)

    @property
    def class_names(self) -> list[str]:
        names = self.extras.get("class_names") or self.config.get("label_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.model.num_classes)]


def _classifier_rows(state: dict[str, torch.Tensor], classifier: Any) -> tuple[str, int] | None:
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    for name in names:
        w = state.get(f"{name}.weight") if name else None
        if w is not None and w.ndim >= 1:
            return f"{name}.weight", int(w.shape[0])
    return None


def _probe_batch(model: nn.Module) -> torch.Tensor:
    """Black, mid-grey and white images at the model's input size, normalised by its own mean / std."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(pretrained_cfg=dict(getattr(model, "pretrained_cfg", None) or {}))
    c, h, w = (int(v) for v in cfg["input_size"])
    mean = torch.tensor([float(v) for v in cfg["mean"]]).view(1, -1, 1, 1)
    std = torch.tensor([float(v) for v in cfg["std"]]).view(1, -1, 1, 1)
    levels = torch.tensor(PROBE_LEVELS).view(-1, 1, 1, 1).expand(len(PROBE_LEVELS), c, h, w)
    dtype = next(model.parameters()).dtype
    return ((levels - mean) / std).to(dtype)


def _bad_values(t: Any) -> str | None:
    """Why a module output is broken (non-finite or beyond the limit), or None."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not t.numel():
        return None
    t = t.detach().float()
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        return f"{bad} non-finite value{'s' if bad > 1 else ''}"
    top = float(t.abs().max())
    return f"values up to {top:.3g}" if top > PROBE_LOGIT_LIMIT else None


def _culprit(model: nn.Module, x: torch.Tensor) -> str:
    """The first leaf module (in execution order) whose output is broken, with its largest weight."""
    found: list[tuple[str, str]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if not found:
            why = _bad_values(output)
            if why is not None:
                found.append((names[module], why))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not found:
        return ""
    name, why = found[0]
    module = model.get_submodule(name)
    tensors = [(f"{name}.{k}", v) for k, v in [*module.named_parameters(), *module.named_buffers()] if v.numel()]
    tensors = [(k, v) for k, v in tensors if v.is_floating_point()]
    largest = ""
    if tensors:
        key, t = max(tensors, key=lambda kv: float(kv[1].detach().float().abs().max()))
        largest = f" (its largest weight: {key!r}, max |value| {float(t.detach().float().abs().max()):.3g})"
    return f"; the first layer whose output goes wrong is {name!r} ({type(module).__name__}, {why}){largest}"


def _probe(model: nn.Module, folder: Path) -> None:
    """Refuse weights whose logits on constant images are non-finite or absurdly large (module docstring)."""
    path = folder / WEIGHTS_NAME
    try:
        x = _probe_batch(model)
        with torch.no_grad():
            logits = model(x)
    except Exception as err:  # noqa: BLE001  (any failure of the model on its own input size)
        msg = str(err).replace("\n", " ")
        size = list((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or [])
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: the model does not run on its own input size {size} "
            f"('pretrained_cfg.input_size'): {msg}; the config and the weights do not fit together: re-save or "
            "re-download the checkpoint"
        ) from None
    why = _bad_values(logits)
    if why is None:
        return
    raise CheckpointError(
        f"{path}: the model's logits on constant test images have {why} (limit {PROBE_LOGIT_LIMIT:g}): every "
        f"prediction would be NaN or probability 1.0{_culprit(model, x)}. The weights are broken or were altered: "
        "re-train, re-save or re-download the checkpoint"
    )


def load_checkpoint(folder: str | os.PathLike) -> LoadedCheckpoint:
    """Build the timm model of a checkpoint folder, load its weights strictly and validate them.

    The model comes back in eval mode on the CPU. Raises ``CheckpointError`` for a missing / corrupt file, an
    unknown architecture, a config field out of range, weights that do not match the config, are not floating
    point, hold NaN / inf or a negative BatchNorm variance, or give non-finite / absurd logits on a probe batch.
    """
    import timm

    import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)

    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    config = read_json(cfg_path, "timm config")
    check_config(config, cfg_path)
    arch = config.get("architecture") or (config.get("pretrained_cfg") or {}).get("architecture")
    if not arch:
        raise CheckpointError(f"{cfg_path}: no 'architecture' key; not a timm checkpoint config")
    if not timm.is_model(arch):
        raise CheckpointError(
            f"{cfg_path}: unknown architecture {arch!r}: timm has no model of that name. Run `import ccsam_zoo` "
            "(it registers resnet*_cifar) or import the module that registers the architecture "
            "(@timm.models.register_model) before loading"
        )
    num_classes = config.get("num_classes")
    extras = read_extras(folder)
    state = load_safetensors(folder / WEIGHTS_NAME, "model weights")
    check_finite(
        state, folder / WEIGHTS_NAME, "every prediction would be NaN",
        "The training diverged or the file was altered: re-train, or re-download the checkpoint.",
    )  # fmt: skip
    classifier = (config.get("pretrained_cfg") or {}).get("classifier")
    rows = _classifier_rows(state, classifier)
    if num_classes is not None and rows is not None and rows[1] != int(num_classes):
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME}: the classifier {rows[0]} has {rows[1]} classes but {cfg_path} says "
            f"num_classes={num_classes}; the config and the weights come from different models"
        )
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    except Exception as err:  # noqa: BLE001  (timm raises many types for bad configs)
        raise CheckpointError(f"{cfg_path}: cannot build {arch!r} from this config: {err}") from err
    check_weights(state, model.state_dict(), folder / WEIGHTS_NAME)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = str(err).replace("\n", " ").replace("\t", "")
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME}: weights do not match the {arch!r} model built from {cfg_path}: {msg}"
        ) from err
    model.eval()
    _probe(model, folder)
    names = extras.get("class_names") or config.get("label_names")
    if names is not None and len(names) != model.num_classes:
        raise CheckpointError(
            f"{folder}: {len(names)} class names for a model with {model.num_classes} classes "
            f"({EXTRAS_NAME} / {CONFIG_NAME} disagree with the weights)"
        )
    protos = None
    if extras.get("prototypes") or (folder / PROTOTYPES_NAME).exists():
        tensors = load_safetensors(folder / PROTOTYPES_NAME, "class prototypes")
        protos = tensors.get("prototypes")
        if protos is None or protos.ndim != 2 or protos.shape[0] != model.num_classes:
            shape = None if protos is None else tuple(protos.shape)
            raise CheckpointError(
                f"{folder / PROTOTYPES_NAME}: expected a 'prototypes' tensor of {model.num_classes} x D, got {shape}"
            )
        check_finite(
            {"prototypes": protos}, folder / PROTOTYPES_NAME, "every prototype open-set score would be NaN",
            "Fit them again (clf.fit_prototypes(train_data)) and save the checkpoint again.",
        )  # fmt: skip
    stats = None
    if extras.get("open_set_stats") or (folder / OPEN_SET_STATS_NAME).exists():
        tensors = load_safetensors(folder / OPEN_SET_STATS_NAME, "open-set statistics")
        stats = (tensors, safetensors_metadata(folder / OPEN_SET_STATS_NAME))
        check_finite(
            tensors, folder / OPEN_SET_STATS_NAME, "every open-set score that uses them would be NaN",
            "Fit them again (clf.fit_open_set(train_data)) and save the checkpoint again.",
        )  # fmt: skip
    return LoadedCheckpoint(
        model=model, folder=folder, config=config, extras=extras, prototypes=protos, open_set_stats=stats
    )
