"""Batched inference throughput of ``ccsam_zoo.inference.Classifier`` (random weights) and the cost of
prototype-based open-set scoring. Prints one JSON object.

    python bench/inference_throughput.py [--device cpu] [--repeats 5] [--quick]

Measured per model: ``forward`` (logits of a normalised batch), ``features_logits_score`` (features +
logits + cosine score against C prototypes, i.e. what ``predict(open_set=True)`` runs) versus
``features_logits`` (the same pass without the score): ``prototype_overhead_pct`` is the added time of the
scoring step (target < 5%). ``predict_uint8`` is end to end ``predict`` on a uint8 tensor batch
(preprocessing + result dicts). img/s = batch / median time over ``repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import timm
import torch

import ccsam_zoo  # noqa: F401  (registers resnet32_cifar)
from ccsam_zoo.inference import Classifier, open_set_score


def _median_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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

    t_fwd = _median_time(lambda: clf(x), repeats, sync)
    # interleave the two variants to cancel drift from other processes sharing the CPU
    t_fl, t_fls = [], []
    for _ in range(repeats):
        t_fl.append(_median_time(feats_logits, 1, sync))
        t_fls.append(_median_time(feats_logits_score, 1, sync))
    t_fl, t_fls = statistics.median(t_fl), statistics.median(t_fls)
    z, _ = feats_logits()
    t_score = _median_time(lambda: open_set_score("cosine", features=z, prototypes=clf.prototypes), repeats * 4, sync)
    t_pred = _median_time(lambda: clf.predict(u8, top_k=5, batch_size=batch), max(1, repeats // 2), sync)
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
        "note": "random weights; prototype_overhead_pct = cosine scoring time / (features + logits) time",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
