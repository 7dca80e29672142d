"""Whole-loop training throughput against the bare model's forward+backward.

The "loop" numbers come from the trainer itself (``recipes/train.py`` code path: sampler, uint8 batch
fetch, augmentation on the batch, the method's ``forward_backward``, optimizer step, progress bar, logs):
each variant trains stage 1 of the ``quickstart`` recipe (embedded CIFAR-10-LT, ResNet-32) for a few
epochs and the median img/s of the epochs after the first is read from ``log.jsonl``. The "bare" number is
ResNet-32 forward + backward + SGD step on in-memory tensors at the same batch size and thread count.

Variants: ce, ccsam (official preset, the recipes' stage 1), ccsam + channels_last, ccsam + bf16 autocast,
ccsam + both and, with ``--compile``, the same with torch.compile; with ``--strong``, ce with the strong
augmentation (AutoAugment CIFAR-10 policy + Cutout 16: ``ce_strong``; RandAugment rand-m9-n2 + Cutout 16:
``ce_randaugment``) and the augmentation alone (``augment_img_per_s``: the batch module on a uint8 batch, no
model). Prints one JSON object.

    python bench/train_throughput.py [--epochs 4] [--batch 128] [--threads 2] [--compile] [--strong]
        [--only VARIANT ...]

``--recipe tinyimagenet_lt_cpu`` times that recipe instead (ResNet-50 with timm's stem at 64 px, per-image timm
ImageNet transforms of JPEG files through the OLTR loader; the bare number is the same ResNet-50 at 64 px); its
epoch is 10,547 images, so give it a slice with ``--set data.source=IMAGES:SPLIT_DIR`` (or few ``--epochs``):

    python bench/train_throughput.py --recipe tinyimagenet_lt_cpu --threads 1 --batch 64 --epochs 2 --only ce ccsam
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

import ccsam_zoo  # noqa: F401
from ccsam_zoo.training import apply_overrides, load_recipe
from ccsam_zoo.training.trainer import train

VARIANTS = {
    "ce": ["method=ce"],
    "ccsam": [],
    "ccsam_channels_last": ["model.channels_last=true"],
    "ccsam_bf16": ["train.mixed_precision=bf16"],
    "ccsam_bf16_channels_last": ["train.mixed_precision=bf16", "model.channels_last=true"],
}


STRONG_VARIANTS = {
    "ce_strong": ["method=ce", "data.autoaugment=cifar10", "data.cutout=16"],
    "ce_randaugment": ["method=ce", "data.autoaugment=rand-m9-n2", "data.cutout=16"],
}
AUGMENTS = {
    "pad_crop_flip": {},
    "autoaugment_cutout": {"autoaugment": "cifar10", "cutout": 16},
    "randaugment_cutout": {"autoaugment": "rand-m9-n2", "cutout": 16},
}


def _augment_speed(batch: int, steps: int) -> dict[str, float]:
    """img/s of the training batch transform alone (uint8 [batch, 3, 32, 32] -> normalised float)."""
    from ccsam_zoo.data import BatchAugment
    from ccsam_zoo.models import CIFAR_MEAN, CIFAR_STD

    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    out = {}
    for name, kwargs in AUGMENTS.items():
        aug = BatchAugment(CIFAR_MEAN, CIFAR_STD, **kwargs)
        aug(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            aug(x)
        out[name] = round(batch * steps / (time.perf_counter() - t0), 1)
    return out


def _bare(batch: int, steps: int, arch: str = "resnet32_cifar", size: int = 32, classes: int = 10) -> float:
    """img/s of forward + backward + SGD step on in-memory tensors (no data pipeline, no method)."""
    model = timm.create_model(arch, num_classes=classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    times = []
    for step in range(steps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def _loop(
    overrides: list[str], epochs: int, batch: int, workdir: Path, recipe_name: str = "quickstart", extra: tuple = ()
) -> float:
    recipe = apply_overrides(
        load_recipe(recipe_name),
        [
            f"stage1.epochs={epochs}",
            f"stage1.batch_size={batch}",
            "stage1.warmup_epochs=0",
            "stage1.milestones=[]",
            "stage2.epochs=0",
            "train.prototypes=false",
            "train.checkpoint_every=0",
            "train.drop_last=true",
            *extra,
            *overrides,
        ],
    )
    out = workdir / "_".join(overrides or ["default"]).replace("=", "-")
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # each variant gets its own Accelerator settings
    PartialState._reset_state()
    train(recipe, out)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in rows if r.get("stage") == "stage1" and "img_per_s" in r][1:]
    return statistics.median(speeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to compile)")
    ap.add_argument("--strong", action="store_true", help="also the strong-augmentation variants (issue 22)")
    ap.add_argument("--only", nargs="+", default=None, metavar="VARIANT", help="time only these variants")
    ap.add_argument("--recipe", default="quickstart", help="recipe to time (quickstart, tinyimagenet_lt_cpu, ...)")
    ap.add_argument("--set", nargs="*", default=[], dest="extra", metavar="KEY=VALUE", help="more recipe overrides")
    args = ap.parse_args()
    base = apply_overrides(load_recipe(args.recipe), args.extra)
    arch = base["model"]["arch"]
    size = 64 if "_64px" in arch else 32 if arch.endswith("_cifar") else 224
    classes = 100 if base["data"]["name"] in ("cifar100_lt", "tinyimagenet_lt") else 10
    torch.set_num_threads(args.threads)
    variants = dict(VARIANTS)
    if args.compile:
        variants["ccsam_compile"] = ["model.compile=true"]
        variants["ccsam_bf16_channels_last_compile"] = [*VARIANTS["ccsam_bf16_channels_last"], "model.compile=true"]
    if args.strong:
        variants.update(STRONG_VARIANTS)
    if args.only:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            ap.error(
                f"unknown variant(s) {unknown}: choose from {sorted(variants)} (compile ones need --compile, "
                "strong ones --strong)"
            )
        variants = {k: v for k, v in variants.items() if k in args.only}
    result: dict = {
        "device": "cpu",
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "batch": args.batch,
        "recipe": args.recipe,
        "overrides": args.extra,
        "model": arch,
        "data": "embedded CIFAR-10-LT (quickstart recipe), uint8 fast path, pad-crop-flip augmentation"
        if args.recipe == "quickstart"
        else f"{base['data']['name']} ({args.recipe} recipe)",
        "bare_fwd_bwd_img_per_s": round(_bare(args.batch, 12, arch, size, classes), 1),
        "loop_img_per_s": {},
        "loop_over_bare": {},
    }
    if args.strong:
        result["augment_img_per_s"] = _augment_speed(args.batch, 20)
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in variants.items():
            speed = _loop(overrides, args.epochs, args.batch, Path(tmp), args.recipe, tuple(args.extra))
            result["loop_img_per_s"][name] = round(speed, 1)
            result["loop_over_bare"][name] = round(speed / result["bare_fwd_bwd_img_per_s"], 3)
    result["bare_fwd_bwd_img_per_s_after"] = round(_bare(args.batch, 12, arch, size, classes), 1)  # load drift
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
