"""Batched inference throughput of ``ccsam_zoo.inference.Classifier`` (random weights) and the cost of
prototype-based open-set scoring. Prints one JSON object.

    python bench/inference_throughput.py [--device cpu] [--repeats 5] [--quick]

Measured per model: ``forward`` (logits of a normalised batch), ``features_logits_score`` (features +
logits + cosine score against C prototypes, i.e. what ``predict(open_set=True)`` runs) versus
``features_logits`` (the same pass without the score): ``prototype_overhead_pct`` is the added time of the
scoring step (target < 5%). ``predict_uint8`` is end to end ``predict`` on a uint8 tensor batch
(preprocessing + result dicts). img/s = batch / best time of ``repeats`` round-robin runs after a
warm-up (best-of, because the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import timm
import torch

import ccsam_zoo  # noqa: F401  (registers resnet32_cifar)
from ccsam_zoo.inference import Classifier, open_set_score


def _best_times(fns: dict, repeats: int, sync) -> dict[str, float]:
    """Best-of-``repeats`` wall time of each function, run round-robin (robust to CPU sharing)."""
    for fn in fns.values():  # warm-up: first-shape kernel selection
        fn()
    sync()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


@torch.inference_mode()
def bench_model(arch: str, num_classes: int, size: int, batch: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=num_classes, pretrained=False).eval()
    cfg = dict(model.pretrained_cfg)
    cfg["input_size"] = (3, size, size)
    clf = Classifier(model, class_names=None, pretrained_cfg=cfg).to(device)
    clf.set_prototypes(torch.nn.functional.normalize(torch.randn(num_classes, model.num_features), dim=1))
    x = torch.randn(batch, 3, size, size, device=device)
    u8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def feats_logits():
        return clf._features_logits(x)

    def feats_logits_score():
        z, logits = clf._features_logits(x)
        return open_set_score("cosine", features=z, logits=logits, prototypes=clf.prototypes)

    z, _ = feats_logits()
    t = _best_times(
        {
            "forward": lambda: clf(x),
            "features_logits": feats_logits,
            "features_logits_score": feats_logits_score,
            "score": lambda: open_set_score("cosine", features=z, prototypes=clf.prototypes),
            "predict": lambda: clf.predict(u8, top_k=5, batch_size=batch),
        },
        repeats,
        sync,
    )
    t_fwd, t_fl, t_fls, t_score, t_pred = (
        t[k] for k in ("forward", "features_logits", "features_logits_score", "score", "predict")
    )
    return {
        "model": arch,
        "input_px": size,
        "num_classes": num_classes,
        "feature_dim": int(model.num_features),
        "batch": batch,
        "forward_img_s": round(batch / t_fwd, 1),
        "features_logits_img_s": round(batch / t_fl, 1),
        "features_logits_score_img_s": round(batch / t_fls, 1),
        "score_only_ms_per_batch": round(1000 * t_score, 3),
        "prototype_overhead_pct": round(100 * t_score / t_fl, 2),
        "prototype_overhead_pct_end_to_end": round(100 * (t_fls - t_fl) / t_fl, 2),
        "predict_uint8_img_s": round(batch / t_pred, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller batches (smoke run)")
    args = ap.parse_args()
    cases = [("resnet32_cifar", 10, 32, 64 if args.quick else 256), ("resnet50", 1000, 224, 4 if args.quick else 32)]
    out = {
        "device": args.device,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "results": [bench_model(a, c, s, b, args.repeats, args.device) for a, c, s, b in cases],
        "note": (
            "random weights; prototype_overhead_pct = cosine scoring time / (features + logits) time; "
            "prototype_overhead_pct_end_to_end is the difference of two full passes and, on a shared CPU, "
            "mostly timing noise"
        ),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
