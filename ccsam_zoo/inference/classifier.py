"""``Classifier``: a timm model plus everything needed to use it (class names, preprocessing, open-set statistics)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset

from . import _images
from .open_set import (
    FALLBACK_SCORES,
    LAYER_SCORES,
    OLTR_MSP_THRESHOLD,
    PROTOTYPE_SCORES,
    SCORES,
    STATS_SCORES,
    class_feature_sums,
    class_thresholds_at_tpr,
    open_set_score,
    prototypes_from_sums,
    score_requirements,
    threshold_at_tpr,
)
from .open_set_stats import OpenSetStats, StatsAccumulator, capture_stage_statistics, early_stages

__all__ = ["Classifier"]

UNKNOWN = "unknown"


def _count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``: ``TypeError`` for a non-integer (None, "3", 1.5, True), ``ValueError``
    below ``minimum``; both name the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _finite_threshold(value: Any, name: str = "threshold") -> float:
    """``value`` as a float; NaN / inf (which would reject or accept every image) and non-numbers are errors."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"open-set {name} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(
            f"open-set {name} must be a finite number, got {value!r}: NaN or inf would reject (or accept) every "
            "image; pass a number (e.g. the calibrated one: omit it)"
        )
    return out


class Classifier(nn.Module):
    """An image classifier ready for inference (always in eval mode).

    Args:
        model: a timm model (``forward_features`` / ``forward_head(pre_logits=True)`` / ``get_classifier``).
        class_names: one name per output (``None``: "0", "1", ...).
        class_counts: training images per class (shot groups in ``evaluate_model``).
        pretrained_cfg: timm data config (input_size, mean, std, interpolation, crop_pct); missing keys come
            from ``model.pretrained_cfg``. Defines the eval transform (``timm.data.create_transform``).
        prototypes: ``[C, D]`` unit class prototypes (``fit_prototypes``) or None.
        open_set_stats: training statistics of the statistics-based scores (``fit_open_set``) or None.
        open_set: ``{"score", "threshold", "tpr", "thresholds", ...}`` from ``calibrate`` or None.
        meta: free-form extras (recipe, method, metrics, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str] | None,
        class_counts: Sequence[int] | None = None,
        pretrained_cfg: dict[str, Any] | None,
        prototypes: torch.Tensor | None = None,
        open_set_stats: OpenSetStats | None = None,
        open_set: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        num_classes = getattr(model, "num_classes", None)
        if not num_classes:
            raise ValueError("the model has no classifier (num_classes == 0): a Classifier needs class logits")
        self.class_names = (
            [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        )
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model with {num_classes} outputs")
        self.class_counts = [int(c) for c in class_counts] if class_counts is not None else None
        if self.class_counts is not None and len(self.class_counts) != num_classes:
            raise ValueError(f"{len(self.class_counts)} class counts for a model with {num_classes} classes")
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        cfg.update({k: v for k, v in (pretrained_cfg or {}).items() if v is not None})
        self.pretrained_cfg = cfg
        self.data_config = resolve_data_config(pretrained_cfg=cfg)
        self.transform = create_transform(**self.data_config, is_training=False)
        self.register_buffer("prototypes", None)
        if prototypes is not None:
            self.set_prototypes(prototypes)
        self.open_set_stats = open_set_stats
        self.open_set = dict(open_set) if open_set else None
        self.meta = dict(meta or {})
        self.eval()

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, prototypes={self.prototypes is not None}, "
            f"open_set_stats={self.open_set_stats is not None}, open_set={self.open_set}"
        )

    def train(self, mode: bool = True) -> Classifier:
        """Inference wrapper: stays in eval mode (BatchNorm statistics are never updated)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of a normalised batch."""
        return self.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, D]`` (not L2-normalised) of a normalised batch."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def _features_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.features(x)
        return z, self.model.get_classifier()(z)

    def set_prototypes(self, prototypes: torch.Tensor | None) -> None:
        """Set (or clear) the ``[C, D]`` prototypes."""
        if prototypes is None:
            self.prototypes = None
            return
        p = torch.as_tensor(prototypes).detach().float()
        if p.ndim != 2 or p.shape[0] != self.num_classes:
            raise ValueError(f"prototypes must be [{self.num_classes}, D], got {tuple(p.shape)}")
        if not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"prototypes hold {int((~torch.isfinite(p)).sum())} non-finite values (NaN / inf): every "
                "prototype score would be NaN; fit them again with clf.fit_prototypes(train_dataset)"
            )
        self.prototypes = p.to(self.device)

    def available_scores(self) -> tuple[str, ...]:
        """The open-set scores this classifier can compute (``SCORES`` order)."""
        return tuple(s for s in SCORES if self._missing(s) is None)

    def default_score(self) -> str:
        """The checkpoint's stored default (``open_set.score``, chosen by ``open_set.DEFAULT_RULE``) when this
        model can compute it, else the first of ``FALLBACK_SCORES`` it can compute (one with a calibrated
        threshold first); ``default_score_source()`` says which and why."""
        return self._default_and_source()[0]

    def default_score_source(self) -> str:
        """Why ``default_score()`` is what it is: "checkpoint default" or "fallback: ..." (the reason)."""
        return self._default_and_source()[1]

    def _default_and_source(self) -> tuple[str, str]:
        stored = (self.open_set or {}).get("score")
        if stored and self._missing(stored) is None:
            return stored, "checkpoint default"
        have = [s for s in FALLBACK_SCORES if self._missing(s) is None]
        calibrated = set((self.open_set or {}).get("thresholds") or {})
        pick = next((s for s in have if s in calibrated), have[0] if have else "msp")
        if stored:
            why = f"the checkpoint's default {stored!r} needs {score_requirements(stored)}, which this model lacks"
        else:
            why = "the checkpoint stores no default score"
        return pick, f"fallback ({why}; order: {', '.join(FALLBACK_SCORES)})"

    def _lacks(self, score: str) -> bool:
        """True when this model lacks the prototypes or statistics ``score`` (one of ``SCORES``) needs."""
        return (score in PROTOTYPE_SCORES and self.prototypes is None) or (
            score in STATS_SCORES
            and (self.open_set_stats is None or (score in LAYER_SCORES and not self.open_set_stats.stage_names))
        )

    def _missing(self, score: str) -> str | None:
        """Why ``score`` cannot be computed here, or None."""
        if score not in SCORES:
            return f"unknown open-set score {score!r}; choose one of {', '.join(SCORES)}"
        if not self._lacks(score):
            return None
        here = [s for s in SCORES if not self._lacks(s)]
        proto = score in PROTOTYPE_SCORES
        where = "prototypes.safetensors" if proto else "open_set_stats.safetensors"
        fit = (
            "clf.fit_prototypes(train_dataset) or clf.fit_open_set(train_dataset)"
            if proto
            else ("clf.fit_open_set(train_dataset)")
        )
        return (
            f"open-set score {score!r} needs {score_requirements(score)} and this model has none (a checkpoint "
            f"stores them in {where}): compute them once in Python with {fit} (training images, no "
            f"augmentation), or use a score this model has: {', '.join(here)} (score= / --score)"
        )

    def _require(self, score: str) -> None:
        problem = self._missing(score)
        if problem is not None:
            raise ValueError(problem)

    def _run(
        self, x: torch.Tensor, scores: Sequence[str] = (), sources: Sequence[Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Features, logits and the requested open-set scores of a normalised batch (one forward pass).

        Non-finite logits are a ``ValueError`` naming the images (``sources``, else batch positions): no
        probability, class or open-set decision can be reported for them.
        """
        for s in scores:
            self._require(s)
        stages = self.open_set_stats.stage_names if any(s in LAYER_SCORES for s in scores) else []
        with capture_stage_statistics(self.model, stages) as captured:
            z, logits = self._features_logits(x)
        bad = (~torch.isfinite(logits.float())).any(dim=1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            names = [sources[i] for i in rows] if sources is not None else [f"#{i} of the batch" for i in rows]
            shown = ", ".join(str(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ValueError(
                f"the model's logits are not finite (NaN / inf) for image {shown}: no class or probability can be "
                "reported. The weights are broken (from_pretrained checks a checkpoint's weights at load) or the "
                "input overflows the model's dtype: load the model again, or run it in float32"
            )
        stage_features = [captured[n] for n in stages] if stages else None
        out = {
            s: open_set_score(
                s,
                features=z,
                logits=logits,
                prototypes=self.prototypes,
                stats=self.open_set_stats,
                stage_features=stage_features,
            )
            for s in scores
        }
        return z, logits, out

    def open_set_scores(self, x: torch.Tensor, score: str | None = None) -> torch.Tensor:
        """Open-set score ``[B]`` (higher = more likely known) of a normalised batch (default: ``default_score``)."""
        score = score or self.default_score()
        with torch.inference_mode():
            return self._run(x.to(self.device), [score])[2][score]

    # ------------------------------------------------------------ preprocessing
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image batch (uint8 or float in [0, 1], BCHW) to the normalised model input (eval transform)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return self.transform(self._to_model_channels(x))

    def _to_model_channels(self, img: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        """An RGB image (PIL, or a CHW / BCHW tensor) in the model's input channels: a 1-channel model
        (``input_size[0] == 1``) gets grayscale (ITU-R 601 luma, as PIL's ``convert("L")``), others RGB."""
        if self.data_config["input_size"][0] != 1:
            return img
        if isinstance(img, Image.Image):
            return img.convert("L")
        if img.shape[-3] != 3:
            return img
        w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device).view(3, 1, 1)
        return (img * w).sum(dim=-3, keepdim=True)

    def _short_side(self) -> int:
        """Shorter side the eval transform resizes to (large files are decoded at about twice this)."""
        size = max(self.data_config["input_size"][1:])
        return max(1, int(size / float(self.data_config.get("crop_pct") or 1.0)))

    def _load(self, item: _images.Item) -> Image.Image | torch.Tensor:
        p = item.payload
        if isinstance(p, (str, Path)):
            return _images.open_image(Path(p), self._short_side())
        if isinstance(p, Image.Image):
            return _images.pil_to_rgb(p, item.source)
        if isinstance(p, np.ndarray):
            return _images.array_to_input(p, item.source)
        return _images.tensor_to_input(p, item.source)

    def _prepare_chunk(self, chunk: list[_images.Item], skip_bad: bool) -> tuple[list[tuple[int, torch.Tensor]], list]:
        """Load and transform one chunk: ([(position, model input)], [(position, error message)])."""
        loaded: list[tuple[int, Image.Image | torch.Tensor]] = []
        failures: list[tuple[int, str]] = []
        for pos, item in enumerate(chunk):
            try:
                loaded.append((pos, self._to_model_channels(self._load(item))))
            except (ValueError, FileNotFoundError) as e:
                if not skip_bad:
                    raise
                failures.append((pos, str(e)))
        out: dict[int, torch.Tensor] = {}
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}  # same-shape tensors: one batched transform
        for pos, img in loaded:
            if isinstance(img, torch.Tensor):
                groups.setdefault(tuple(img.shape), []).append((pos, img))
            else:
                out[pos] = self.transform(img)
        for members in groups.values():
            batch = self.transform(torch.stack([t for _, t in members]))
            out.update((pos, batch[j]) for j, (pos, _) in enumerate(members))
        return sorted(out.items()), failures

    # ------------------------------------------------------------------ predict
    def _resolve_open_set(
        self, score: str | None, threshold: float | None
    ) -> tuple[str, float, list[float] | None, str, str]:
        """(score, global threshold, class-conditional thresholds or None, score source, threshold source)."""
        cal = self.open_set or {}
        source = "given"
        if not score:
            score, source = self._default_and_source()
        self._require(score)
        if threshold is not None:
            return score, _finite_threshold(threshold), None, source, "given"
        stored = (cal.get("thresholds") or {}).get(score)
        if stored is None and cal.get("score") == score:
            stored = cal.get("threshold")
        if stored is not None:
            per_class = cal.get("class_thresholds") if cal.get("score") == score else None
            if per_class and len(per_class) != self.num_classes:
                raise ValueError(
                    f"open_set.class_thresholds has {len(per_class)} entries for {self.num_classes} classes: "
                    "calibrate again with clf.calibrate(held_out_known_images, per_class=True)"
                )
            tpr = cal.get("tpr")
            how = "calibrated" + (f" at {100 * float(tpr):g}% TPR" if tpr else "")
            how += ", per predicted class" if per_class else ""
            per = [float(t) for t in per_class] if per_class else None
            return score, _finite_threshold(stored), per, source, how
        if score == "msp":
            return score, OLTR_MSP_THRESHOLD, None, source, "OLTR's fixed 0.1 (no calibrated msp threshold)"
        calibrated = sorted((cal.get("thresholds") or {}) or ([cal["score"]] if cal.get("score") else []))
        have = f"calibrated here: {', '.join(calibrated)}" if calibrated else "this model has no calibrated threshold"
        raise ValueError(
            f"no open-set threshold for score {score!r} ({have}): pass one (threshold= / --threshold T, a {score} "
            f"score, higher = more likely known), calibrate with clf.calibrate(held_out_known_images, "
            f"score={score!r}, tpr=0.95)"
            + (f", or use a calibrated score (score= / --score {calibrated[0]})" if calibrated else "")
        )

    @torch.inference_mode()
    def predict(
        self,
        images: Any,
        top_k: int = 5,
        open_set: bool = False,
        batch_size: int = 64,
        score: str | None = None,
        skip_bad: bool = False,
        threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """Classify images: file paths, a folder, PIL images, numpy arrays (HWC), tensors (CHW / BCHW).

        Integer images are taken as 8-bit (16-bit as 16-bit), float images as [0, 1]; every image becomes
        RGB (grayscale replicated, alpha dropped) and goes through the checkpoint's eval transform.

        Returns one dict per image, in input order: ``source`` (path or index), ``label`` (top-1 class name),
        ``class_index`` (its index), ``probability`` (its softmax probability), ``top_k`` (list of (class name,
        probability)). With ``open_set`` also ``known`` (``score >= threshold``), ``score`` (the open-set score,
        higher = more likely known), ``score_type`` (its name: ``score`` argument, else ``default_score()``),
        ``score_source`` ("given", "checkpoint default" or "fallback (why)"), ``threshold`` (the one applied:
        ``threshold`` argument, else the stored calibrated one of that score, per predicted class when calibrated
        with ``per_class``, else 0.1 for msp, else an error) and ``threshold_source`` (how it was set). A REJECTED
        image has ``label`` "unknown", ``class_index`` and ``probability`` None, and ``nearest_class`` /
        ``nearest_index`` / ``nearest_probability``: the known class it was closest to (closed-set top-1) and its
        probability.
        With ``skip_bad=True`` an unreadable image gives ``{"source", "error"}`` instead of raising; without it
        the first one raises ``ImageInputError`` (a ``ValueError``) naming it. Non-finite pixels (NaN / inf) and
        non-finite thresholds are errors, and so are non-finite logits (naming the images); a non-finite open-set
        score is never ``known``. ``top_k`` and ``batch_size`` are integers >= 1 (``TypeError`` / ``ValueError``
        naming the argument otherwise). Only regular files are read (a named pipe or a device is an error).
        Integers outside [0, 65535] (e.g. signed 32-bit TIFFs) are scaled from their own min..max, and the EXIF
        orientation of PIL images is applied as for files.
        """
        top_k = _count(top_k, "top_k")
        batch_size = _count(batch_size, "batch_size")
        score_name, thr, class_thr, score_src, thr_src = (
            self._resolve_open_set(score, threshold) if open_set else (None, None, None, None, None)
        )
        items = _images.expand_inputs(images)
        k = min(top_k, self.num_classes)
        results: list[dict[str, Any]] = []
        device = self.device
        dtype = next(self.model.parameters()).dtype
        for chunk in _images.iter_chunks(items, batch_size):
            try:
                ready, failures = self._prepare_chunk(chunk, skip_bad)
            except _images.ImageInputError as err:
                raise _images.with_skip_bad_hint(err, len(items) - 1) from None
            chunk_results: dict[int, dict[str, Any]] = {}
            if ready:
                x = torch.stack([t for _, t in ready]).to(device=device, dtype=dtype, non_blocking=True)
                sources = [chunk[pos].source for pos, _ in ready]
                _, logits, out = self._run(x, [score_name] if open_set else [], sources)
                top_p, top_i = logits.float().softmax(dim=1).topk(k, dim=1)
                scores = out[score_name].double().cpu().tolist() if open_set else None
                top_p, top_i = top_p.cpu().tolist(), top_i.cpu().tolist()
                for j, (pos, _) in enumerate(ready):
                    r: dict[str, Any] = {
                        "source": chunk[pos].source,
                        "label": self.class_names[top_i[j][0]],
                        "class_index": top_i[j][0],
                        "probability": top_p[j][0],
                        "top_k": [(self.class_names[c], p) for c, p in zip(top_i[j], top_p[j])],
                    }
                    if open_set:
                        t = class_thr[top_i[j][0]] if class_thr else thr
                        known = math.isfinite(scores[j]) and scores[j] >= t  # a NaN score is never "known"
                        r.update(known=known, score=scores[j], score_type=score_name, score_source=score_src,
                                 threshold=t, threshold_source=thr_src)  # fmt: skip
                        if not r["known"]:
                            r.update(
                                label=UNKNOWN,
                                class_index=None,
                                probability=None,
                                nearest_class=r["label"],
                                nearest_index=r["class_index"],
                                nearest_probability=r["probability"],
                            )
                    chunk_results[pos] = r
            for pos, msg in failures:
                chunk_results[pos] = {"source": chunk[pos].source, "error": msg}
            results.extend(chunk_results[pos] for pos in sorted(chunk_results))
        return results

    # --------------------------------------------------------------- data sets
    def _batches(
        self, data: Any, batch_size: int, transform: nn.Module | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised model-input batches on the model's device plus labels, from any supported data form.

        uint8 batches go through ``preprocess`` (this checkpoint's eval transform); float batches are taken as
        already normalised unless ``transform`` (e.g. ``benchmark.batch_transform(train=False)``) is given.
        """
        device = self.device
        dtype = next(self.model.parameters()).dtype

        def finish(x: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
            x = x.to(device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            elif x.dtype == torch.uint8:
                x = self.preprocess(x)
            if x.is_floating_point() and x.dtype not in _images.FLOAT_DTYPES:
                raise ValueError(
                    f"a data batch of dtype {str(x.dtype).removeprefix('torch.')}: pass uint8 images or float16 / "
                    "bfloat16 / float32 / float64 batches (e.g. images.float())"
                )
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValueError(
                    f"a data batch holds {int((~torch.isfinite(x)).sum())} non-finite values (NaN / inf): "
                    "predictions and scores would be NaN; clean the data (finite pixel values only)"
                )
            return x.to(dtype), torch.as_tensor(y).long().reshape(-1).cpu()

        if (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and isinstance(data[0], torch.Tensor)
            and data[0].ndim == 4
        ):
            images, labels = data
            labels = torch.as_tensor(labels)
            if len(images) != len(labels):
                raise ValueError(f"{len(images)} images but {len(labels)} labels")
            for i in range(0, len(images), batch_size):
                yield finish(images[i : i + batch_size], labels[i : i + batch_size])
            return
        images = getattr(data, "images", None)
        if isinstance(images, torch.Tensor) and images.ndim == 4 and hasattr(data, "labels"):
            labels = torch.as_tensor(data.labels)
            for i in range(0, len(images), batch_size):
                yield finish(images[i : i + batch_size], labels[i : i + batch_size])
            return
        if isinstance(data, Dataset) or (
            hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes))
        ):
            loader: Iterable = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=self._collate)
        elif isinstance(data, Iterable):
            loader = data
        else:
            raise ValueError(
                f"unsupported data of type {type(data).__name__}: pass a Dataset yielding (image, label), a "
                "DataLoader, a dataset with .images (uint8 N,3,H,W) and .labels, or an (images, labels) tuple"
            )
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("data batches must be (images, labels) pairs")
            yield finish(batch[0], batch[1])

    def _collate(self, items: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], torch.Tensor) and items[0].ndim == 4:
            return items  # a dataset's __getitems__ already returned (images, labels)
        try:
            imgs, labels = zip(*[(it[0], it[1]) for it in items])
        except (TypeError, IndexError, KeyError):
            raise ValueError("dataset items must be (image, label) pairs") from None
        labels_t = torch.as_tensor([int(y) for y in labels])
        if all(isinstance(i, torch.Tensor) for i in imgs) and len({(i.shape, i.dtype) for i in imgs}) == 1:
            return torch.stack(imgs), labels_t
        out = []
        for n, img in enumerate(imgs):
            if isinstance(img, Image.Image):
                out.append(self.transform(self._to_model_channels(_images.pil_to_rgb(img))))
            elif isinstance(img, np.ndarray):
                a = _images.array_to_input(img, n)
                out.append(self.transform(self._to_model_channels(a)))
            elif isinstance(img, torch.Tensor) and img.dtype == torch.uint8:
                out.append(self.preprocess(img[None])[0])
            else:
                out.append(torch.as_tensor(img).float())
        return torch.stack(out), labels_t

    @torch.inference_mode()
    def fit_prototypes(self, dataset: Any, batch_size: int = 256, transform: nn.Module | None = None) -> torch.Tensor:
        """Fit class prototypes (mean L2-normalised penultimate feature per class, re-normalised) and keep them.

        ``dataset``: training data WITHOUT augmentation: a Dataset yielding (normalised image tensor, label), a
        dataset with ``.images`` (uint8, N,3,H,W) and ``.labels``, an ``(images, labels)`` tuple, or a
        DataLoader. Returns the ``[C, D]`` prototypes.
        """
        batch_size = _count(batch_size, "batch_size")
        sums = counts = None
        for x, y in self._batches(dataset, batch_size, transform):
            s, c = class_feature_sums(self.features(x), y.to(x.device), self.num_classes)
            sums, counts = (s, c) if sums is None else (sums + s, counts + c)
        if sums is None:
            raise ValueError("fit_prototypes: the dataset is empty")
        self.set_prototypes(prototypes_from_sums(sums, counts))
        return self.prototypes

    @torch.inference_mode()
    def fit_open_set(
        self,
        dataset: Any,
        batch_size: int = 256,
        transform: nn.Module | None = None,
        *,
        bank_size: int = 2048,
        reference_size: int = 4096,
        k: int = 5,
        seed: int = 0,
    ) -> OpenSetStats:
        """Fit the prototypes and every statistic the open-set scores need, in one pass, and keep them.

        ``dataset``: the TRAINING images without augmentation, in any form ``fit_prototypes`` accepts. ``bank_size``
        normalised features (a seeded uniform subsample) form the ``knn`` bank with ``k`` neighbours;
        ``reference_size`` images give the reference scores of the p-values. Returns the ``OpenSetStats``.
        """
        batch_size = _count(batch_size, "batch_size")
        bank_size, reference_size = _count(bank_size, "bank_size"), _count(reference_size, "reference_size")
        acc = StatsAccumulator(self.num_classes, bank_size=bank_size, reference_size=reference_size, k=_count(k, "k"),
                               seed=seed)  # fmt: skip
        try:
            stages = early_stages(self.model)
        except ValueError as err:  # mahalanobis and knn still work; the layer_stats scores are unavailable
            warnings.warn(f"fit_open_set: {err}", stacklevel=2)
            stages = []
        for x, y in self._batches(dataset, batch_size, transform):
            with capture_stage_statistics(self.model, stages) as captured:
                z, logits = self._features_logits(x)
            acc.update(z, logits, y.to(z.device), [captured[n] for n in stages])
        stats, prototypes = acc.finish(stages)
        self.open_set_stats = stats
        self.set_prototypes(prototypes)
        return stats

    @torch.inference_mode()
    def _collect(
        self,
        data: Any,
        batch_size: int,
        transform: nn.Module | None,
        scores: Sequence[str],
        progress: Callable[[int], Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the model over a dataset: predictions, labels and each requested score (CPU; scores float64).

        ``progress(n)`` is called after each batch of ``n`` images (e.g. a tqdm bar's ``update``).
        """
        out: dict[str, list[torch.Tensor]] = {"predictions": [], "references": [], **{s: [] for s in scores}}
        for x, y in self._batches(data, batch_size, transform):
            _, logits, sc = self._run(x, scores)
            out["predictions"].append(logits.argmax(dim=1).cpu())
            out["references"].append(y)
            for s in scores:
                out[s].append(sc[s].double().cpu())
            if progress is not None:
                progress(len(y))
        if not out["predictions"]:
            raise ValueError("the dataset is empty")
        return {k: torch.cat(v) for k, v in out.items()}

    @torch.inference_mode()
    def _collect_images(self, images: Any, batch_size: int, scores: Sequence[str]) -> dict[str, torch.Tensor]:
        """``_collect`` for unlabelled images in any form ``predict`` accepts (references are -1)."""
        out: dict[str, list[torch.Tensor]] = {"predictions": [], **{s: [] for s in scores}}
        dtype = next(self.model.parameters()).dtype
        for chunk in _images.iter_chunks(_images.expand_inputs(images), batch_size):
            ready, _ = self._prepare_chunk(chunk, skip_bad=False)
            x = torch.stack([t for _, t in ready]).to(device=self.device, dtype=dtype)
            _, logits, sc = self._run(x, scores, [chunk[pos].source for pos, _ in ready])
            out["predictions"].append(logits.argmax(dim=1).cpu())
            for s in scores:
                out[s].append(sc[s].double().cpu())
        if not out["predictions"]:
            raise ValueError("no images")
        res = {k: torch.cat(v) for k, v in out.items()}
        res["references"] = torch.full_like(res["predictions"], -1)
        return res

    def _collect_any(
        self, data: Any, scores: Sequence[str], batch_size: int, transform: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        """Scores of known-class data given as images (predict inputs) or as a dataset."""
        is_dataset = (
            transform is not None
            or isinstance(data, (Dataset, DataLoader))
            or hasattr(data, "images")
            or (
                isinstance(data, tuple)
                and len(data) == 2
                and isinstance(data[0], torch.Tensor)
                and data[0].ndim == 4
                and torch.as_tensor(data[1]).ndim == 1
                and not torch.as_tensor(data[1]).is_floating_point()
            )
        )
        if is_dataset:
            return self._collect(data, batch_size, transform, scores)
        return self._collect_images(data, batch_size, scores)

    def calibrate(
        self,
        known: Any = None,
        score: str | None = None,
        tpr: float = 0.95,
        threshold: float | None = None,
        batch_size: int = 64,
        *,
        transform: nn.Module | None = None,
        per_class: bool = False,
        min_per_class: int = 10,
    ) -> dict[str, Any]:
        """Set the open-set thresholds; stores and returns ``.open_set``.

        ``known``: HELD-OUT known-class images (anything ``predict`` accepts) or a dataset (as
        ``fit_prototypes``; ``transform`` as there). ``score`` (default ``default_score()``) becomes the
        prediction default; its threshold keeps a fraction ``tpr`` of ``known`` (``score >= threshold``), and so
        does the threshold stored for every other score this model can compute (``thresholds``). With
        ``per_class`` the chosen score also gets class-conditional thresholds (``class_thresholds_at_tpr`` by
        predicted class, ``min_per_class``), a fix for tail classes rejected more often than head ones. With an
        explicit ``threshold`` (e.g. OLTR: ``score="msp", threshold=0.1``) no data is needed and ``tpr``
        becomes the measured rate on ``known`` if given, else None.

        ``.open_set`` = ``{"score", "threshold", "tpr", "thresholds": {score: threshold}}`` (+
        ``"class_thresholds"``, ``"min_per_class"`` with ``per_class``).
        """
        batch_size = _count(batch_size, "batch_size")
        score = score or self.default_score()
        self._require(score)
        if threshold is not None:
            threshold = _finite_threshold(threshold)
            rate = None
            if known is not None:
                s = self._collect_any(known, [score], batch_size, transform)[score]
                rate = float((s >= threshold).double().mean())
            self.open_set = {
                "score": score,
                "threshold": float(threshold),
                "tpr": rate,
                "thresholds": {score: float(threshold)},
            }
            return dict(self.open_set)
        if known is None:
            raise ValueError("calibrate needs held-out known-class images, or an explicit threshold=")
        scores = [score] + [s for s in self.available_scores() if s != score]
        got = self._collect_any(known, scores, batch_size, transform)
        thresholds = {s: threshold_at_tpr(got[s], tpr) for s in scores}
        self.open_set = {"score": score, "threshold": thresholds[score], "tpr": float(tpr), "thresholds": thresholds}
        if per_class:
            self.open_set["class_thresholds"] = class_thresholds_at_tpr(
                got[score], got["predictions"], self.num_classes, tpr, min_per_class
            )
            self.open_set["min_per_class"] = int(min_per_class)
        return dict(self.open_set)
