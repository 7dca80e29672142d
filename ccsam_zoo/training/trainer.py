"""Two-stage training on Accelerate: stage 1 (CC-SAM or a baseline), then stage 2 (classifier re-training).

One code path for one CPU, one GPU and many GPUs/nodes. A reader sees one step of each stage in
``_train_epoch``; the algorithm lives in ``ccsam_zoo.ccsam`` (methods with ``forward_backward``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..ccsam import build_stage1, build_stage2
from ..data import build_benchmark
from ..models import FeaturesAndLogits
from ..models.heads import unwrap
from .checkpointing import choose_checkpoint, load_training_state, save_training_state, set_aside
from .config import Recipe, RecipeError, load_recipe, recipe_differences, save_recipe, thawed
from .evaluation import balanced_accuracy, evaluate
from .run_dir import check_run_dir, prepare_run_dir
from .run_log import RESUMING, RunLog, drop_records_after, readable_metrics
from .schedule import lr_at

__all__ = ["train"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: says where it stopped and how to continue (the checkpoints are left intact)."""

    def __init__(self, output_dir: Path, stage: str | None, epoch: int | None, epochs: int | None) -> None:
        self.output_dir, self.stage, self.epoch, self.epochs = output_dir, stage, epoch, epochs
        if stage is None:
            text = "interrupted before training started; nothing to resume"
        else:
            text = (
                f"interrupted at epoch {epoch}/{epochs} (stage {stage[-1]}); continue with --resume {output_dir}"
            )
        super().__init__(text)


def train(
    recipe: Recipe | dict[str, Any], output_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run both stages of ``recipe`` into ``output_dir``; returns the metrics written to ``metrics.json``.

    ``recipe``: a ``Recipe`` (checked and resolved once, e.g. by the command line) or a recipe dict as
    ``load_recipe`` / ``apply_overrides`` return it (then ``Recipe.build`` checks and resolves it here).

    A new run needs a missing or empty ``output_dir``; ``overwrite`` first deletes an earlier run there.
    With ``resume`` the run continues from the newest intact checkpoint in ``output_dir`` (a broken one is
    set aside, and said so); its recipe must be the folder's ``recipe.yaml`` and the checkpoint's.
    Ctrl-C raises ``TrainingInterrupted`` (where it stopped, how to continue); an image above PIL's
    decompression-bomb limit is an error naming the file (not a warning); a loss that becomes non-finite or
    a training accuracy at chance long after warm-up raises ``TrainingDiverged``.
    """
    from PIL import Image

    progress: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _train(Recipe.build(recipe), Path(output_dir), resume, overwrite, progress)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            Path(output_dir), progress.get("stage"), progress.get("epoch"), progress.get("epochs")
        ) from None


def _slow_cpu_bf16(accelerator: Accelerator) -> bool:
    """bf16 autocast requested on a CPU that computes bf16 only by emulation (no AVX512-BF16 / AMX-BF16)."""
    if accelerator.device.type != "cpu" or accelerator.mixed_precision != "bf16":
        return False
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps) and not (caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _train(
    recipe: Recipe, output_dir: Path, resume: bool, overwrite: bool, progress: dict[str, Any]
) -> dict[str, Any]:
    check_run_dir(output_dir, resume=resume, overwrite=overwrite)  # reads only: nothing is written yet
    if resume:
        _check_same_recipe(recipe, load_recipe(output_dir / "recipe.yaml"), f"{output_dir / 'recipe.yaml'}")
    tcfg = recipe["train"]
    accelerator = Accelerator(
        mixed_precision=tcfg["mixed_precision"],
        gradient_accumulation_steps=tcfg["grad_accum"],
        log_with=tcfg["tracker"] or None,
        project_dir=str(output_dir),
    )
    set_seed(recipe["seed"])
    checkpoint, saved_state, broken = choose_checkpoint(output_dir) if resume else (None, None, [])
    state: dict[str, Any] = saved_state or {"metrics": {}, "history": []}
    if state.get("recipe") is not None:
        _check_same_recipe(recipe, state["recipe"], f"checkpoint {checkpoint or output_dir / 'stage1'}")
    # Data and model first: a missing dataset or a bad label leaves no run folder behind.
    with accelerator.main_process_first():  # rank 0 decodes into the cache, the others read it
        bench = _build_data(recipe)
    _check_classes(bench)
    if recipe["data"]["val_rule"] == "fill":  # left_out never takes images from the subset (build_benchmark checks it)
        _check_validation_split(bench, recipe["data"]["val_per_class"])
    if state.get("data_fingerprint") not in (None, bench.fingerprint):
        raise ValueError(
            f"--resume {output_dir}: the data differs from the checkpoint's (fingerprint {bench.fingerprint[:12]}, "
            f"checkpoint {state['data_fingerprint'][:12]}: other files, or for image folders and split files the "
            "same files under another path); point data.source at the data the run started with"
        )
    if recipe["data"]["device_resident"]:
        _keep_on_device(bench, recipe["data"], accelerator.device)
    model = _create_model(recipe["model"], bench.num_classes)
    _check_input_size(model, recipe["model"]["arch"], int(bench.options["image_size"]))
    model = _sync_batchnorm(model, recipe["model"]["sync_bn"], accelerator)
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    if accelerator.is_main_process:
        prepare_run_dir(output_dir, overwrite=overwrite)
    accelerator.wait_for_everyone()
    log = RunLog(output_dir, accelerator)
    if accelerator.is_main_process:
        for path, problem in broken:
            aside = set_aside(path)
            log.info(f"checkpoint {path.name} is broken ({problem}); moved to {aside} (delete it when done)")
        if resume:
            drop_records_after(output_dir / "log.jsonl", state.get("stage"), state.get("epoch", 0))
    if checkpoint is not None:
        log.info(f"{RESUMING}{checkpoint.name}" + (" (the previous complete checkpoint)" if broken else ""))
    elif saved_state is not None:
        log.info(f"{RESUMING}the end of stage 1 ({output_dir / 'stage1'}): stage 2 starts again")
    elif resume:
        log.info(f"--resume: no checkpoint in {output_dir / 'checkpoints'}; starting from scratch")
    state.update(recipe=recipe.to_dict(), data_fingerprint=bench.fingerprint)
    if accelerator.is_main_process:
        save_recipe(recipe.to_dict(), output_dir / "recipe.yaml")
    if tcfg["tracker"]:
        accelerator.init_trackers(recipe.name, config=_flat(recipe.to_dict()))

    log.info(
        f"accelerate: {accelerator.num_processes} process(es), device {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}, seed {recipe['seed']}"
    )
    if _slow_cpu_bf16(accelerator):
        log.info(
            "warning: bf16 autocast on a CPU without native bf16 (no AVX512-BF16 / AMX-BF16) is emulated and "
            "slower than float32 (ResNet-32: 2.6x per step, docs/RESULTS.md section 4); "
            "train.mixed_precision=no is faster here"
        )
    log.info(
        f"data {bench.name}: {len(bench.train)} train images, {bench.num_classes} classes, counts "
        f"{bench.class_counts[:3]}...{bench.class_counts[-3:]}, fingerprint {bench.fingerprint[:12]}"
    )
    if accelerator.is_main_process and bench.options.get("imbalance_ratio") is not None:
        _write_selection(output_dir / "train_indices.json", bench)
    s1_cfg, s2_cfg = recipe.stage_method("stage1"), recipe.stage_method("stage2")
    ctx = _Context(recipe, output_dir, accelerator, log, bench, state)
    ctx.progress = progress

    stage2_init = recipe["stage2"]["init"]
    if stage2_init:
        _load_stage1(model, Path(stage2_init))
        log.info(f"stage 1 skipped: weights from {stage2_init}")
    elif recipe["stage1"]["epochs"] > 0 and not state.get("stage1_done"):
        resume_from = checkpoint if checkpoint is not None and state.get("stage") == "stage1" else None
        _run_stage(ctx, "stage1", model, s1_cfg, resume_from)
        if recipe["stage2"]["init_from"] == "best" and recipe["stage2"]["epochs"] > 0:
            _load_stage1(model, output_dir / "stage1-best")
            log.info(f"stage 2 starts from the validation-best stage-1 epoch ({output_dir / 'stage1-best'})")
    elif state.get("stage1_done"):
        best = recipe["stage2"]["init_from"] == "best"
        _load_stage1(model, output_dir / ("stage1-best" if best else "stage1"))
        if best and "stage1_best" not in state["metrics"]:  # state rebuilt from stage1/ (no checkpoint)
            state["metrics"]["stage1_best"] = json.loads((output_dir / "stage1-best" / "ccsam_zoo.json").read_text())[
                "metrics"
            ]

    if recipe["stage2"]["epochs"] > 0 and s2_cfg["name"] != "none":
        resume_from = checkpoint if checkpoint is not None and state.get("stage") == "stage2" else None
        _run_stage(ctx, "stage2", model, s2_cfg, resume_from)

    metrics = readable_metrics(state["metrics"], bench.class_names)
    if accelerator.is_main_process:
        from .plots import plot_run

        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        plot_run(
            output_dir,
            metrics,
            bench.class_counts,
            _read_jsonl(output_dir / "log.jsonl"),
            class_names=bench.class_names,
            shot_groups=bench.shot_groups,
            title=f"{recipe['name']}, method={recipe['method']}",
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


class _Context:
    """What both stages share: the recipe, the accelerator, the log, the data and the trainer state."""

    def __init__(self, recipe: Recipe, output_dir, accelerator, log, bench, state) -> None:
        self.recipe, self.output_dir, self.accelerator = recipe, output_dir, accelerator
        self.log, self.bench, self.state = log, bench, state
        self.device = accelerator.device
        self.progress: dict[str, Any] = {}  # stage and epoch now training, for the message of an interruption
        self.channels_last = recipe["model"]["channels_last"]


# ----------------------------------------------------------------------------------------------- stages


def _run_stage(
    ctx: _Context, stage: str, model: nn.Module, method_cfg: dict[str, Any], resume_from: Path | None
) -> None:
    """One stage: the method, what it trains (stage 1: everything; stage 2: the classifier on a frozen backbone,
    re-initialised first for cRT), optimizer, loader, ``prepare``, resume, the epochs, the saved folder."""
    cfg, acc, counts = ctx.recipe[stage], ctx.accelerator, ctx.bench.class_counts
    if stage == "stage1":
        method = build_stage1(method_cfg, counts)
    else:
        acc.free_memory()  # forget stage-1 objects: stage 2 re-wraps the model after freezing the backbone
        method = build_stage2(method_cfg, counts)
        if method.cfg.get("reinit") and resume_from is None:  # cRT (Kang et al.): a fresh classifier
            model.reset_classifier(ctx.bench.num_classes)
            ctx.log.info("stage 2: classifier re-initialised (crt reinit=true)")
        head = model.get_classifier(name_only=True) if hasattr(model, "get_classifier") else "fc"
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(head + "."))
    net = FeaturesAndLogits(model)
    if ctx.channels_last:
        net = net.to(memory_format=torch.channels_last)
    trained = net if stage == "stage1" else net.head
    optimizer = _optimizer(trained, cfg, decay_bias_and_bn=cfg.get("decay_bias_and_bn", True))
    loader = ctx.bench.loader(
        "train",
        cfg["batch_size"],
        sampler=cfg.get("sampler", "shuffle"),
        seed=ctx.recipe["seed"] + (0 if stage == "stage1" else 1),
        drop_last=ctx.recipe["train"]["drop_last"],
        num_workers=ctx.recipe["data"]["num_workers"],
    )
    net, optimizer, loader = acc.prepare(net, optimizer, loader)
    if ctx.recipe["model"]["compile"] and stage == "stage1":
        net = torch.compile(net)
    start = 0  # epochs done; epochs are numbered from 1 everywhere (progress line, log.jsonl, checkpoints)
    if resume_from is not None:
        problem = load_training_state(acc, resume_from)
        start = ctx.state["epoch"]
        if problem:
            _warn_not_exact(ctx, problem)
    ctx.log.info(f"{stage}: {method.name} {json.dumps(method_cfg)}, {cfg['epochs']} epochs from epoch {start + 1}")
    _fit(ctx, stage, net, method, optimizer, loader, cfg, start)
    _finish_stage(ctx, stage, net, method_cfg)


def _warn_not_exact(ctx: _Context, problem: str) -> None:
    """A resume that restored the weights and optimizer but not the random state: said on every process."""
    text = (
        f"warning: the random state was not restored ({problem}): the run continues from the checkpoint's "
        "weights and optimizer, but it is not an exact continuation (augmentation, mixup and sampling may "
        "differ from an uninterrupted run)"
    )
    if ctx.accelerator.is_main_process:
        ctx.log.info(text)
    else:
        print(f"[process {ctx.accelerator.process_index}] {text}", file=sys.stderr, flush=True)


def _fit(ctx: _Context, stage: str, net, method, optimizer, loader, cfg: dict[str, Any], start: int) -> None:
    """Epoch loop: schedule, train, validate every N epochs (and at the last epoch; never on the test split),
    keep the validation-best weights (``eval.select_on=val``), checkpoint every N epochs."""
    tcfg, every = ctx.recipe["train"], ctx.recipe["eval"]["every"]
    if every and ctx.bench.val is None and start == 0:
        ctx.log.info(f"eval.every={every}: no validation split (data.val_per_class=0): no evaluation during training")
    for epoch in range(start, cfg["epochs"]):
        ctx.progress.update(stage=stage, epoch=epoch + 1, epochs=cfg["epochs"])
        lr = lr_at(epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = _train_epoch(ctx, stage, net, method, optimizer, loader, epoch, cfg["epochs"])
        record = {"stage": stage, "epoch": epoch + 1, "lr": lr, **stats}  # epochs count from 1 everywhere
        last = epoch + 1 == cfg["epochs"]
        if every and ctx.bench.val is not None and ((epoch + 1) % every == 0 or last):
            metrics = evaluate(net, ctx.bench, "val", ctx.accelerator, ctx.recipe["eval"]["batch_size"])
            record.update(val_top1=metrics["top1"], val_bacc=balanced_accuracy(metrics))
            if ctx.recipe["eval"]["select_on"] == "val":
                _keep_if_best(ctx, stage, net, epoch + 1, record["val_bacc"])
        ctx.log.record(**record)
        ctx.log.info(
            f"{stage} epoch {epoch + 1}/{cfg['epochs']} loss {stats['loss']:.4f} lr {record['lr']:.4g} "
            f"{stats['img_per_s']:.0f} img/s"
            + (f" train top-1 {stats['train_top1']:.1f}" if "train_top1" in stats else "")
            + (f" val balanced acc {record['val_bacc']:.2f}" if "val_bacc" in record else "")
            + (f" cap bound {100 * stats['eps_capped_share']:.1f}%" if stats.get("eps_capped_share") else "")
        )
        ctx.state["history"].append(record)
        _check_learning(ctx, stage, cfg, epoch, cfg.get("sampler", "shuffle"))
        n = tcfg["checkpoint_every"]
        if n and (epoch + 1) % n == 0 and not last:
            save_training_state(ctx.accelerator, ctx.output_dir, stage, epoch + 1, ctx.state, tcfg["keep_checkpoints"])
            _prune_best(ctx, stage)


def _best_file(output_dir: Path, stage: str, epoch: int) -> Path:
    return output_dir / "checkpoints" / f"{stage}-best-epoch{epoch:04d}.safetensors"


def _keep_if_best(ctx: _Context, stage: str, net, epoch: int, score: float) -> None:
    """``eval.select_on=val``: when ``score`` beats the stage's best so far (ties keep the earlier epoch), record
    the epoch in the trainer state and write the weights to ``checkpoints/{stage}-best-epochE.safetensors``."""
    best = ctx.state.setdefault("best", {}).get(stage)
    if best is not None and not score > best["score"]:
        return
    ctx.state["best"][stage] = {"epoch": epoch, "score": score}
    if ctx.accelerator.is_main_process:
        from safetensors.torch import save_file

        path = _best_file(ctx.output_dir, stage, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap(net).state_dict().items()}
        save_file(state, str(path.with_suffix(".tmp")))
        os.replace(path.with_suffix(".tmp"), path)
    ctx.accelerator.wait_for_everyone()


def _prune_best(ctx: _Context, stage: str, keep: bool = True) -> None:
    """Delete the stage's best-weight files except the one the trainer state names (``keep=False``: all)."""
    best = ctx.state.get("best", {}).get(stage)
    if not ctx.accelerator.is_main_process:
        return
    wanted = _best_file(ctx.output_dir, stage, best["epoch"]) if best and keep else None
    for path in (ctx.output_dir / "checkpoints").glob(f"{stage}-best-epoch*.safetensors"):
        if path != wanted:
            path.unlink(missing_ok=True)


def _train_epoch(ctx: _Context, stage: str, net, method, optimizer, loader, epoch: int, epochs: int) -> dict:
    """One epoch. One step = augment the batch, ``method.forward_backward`` (all passes), optimizer step."""
    acc = ctx.accelerator
    torch.manual_seed(_epoch_seed(ctx.recipe["seed"], stage, epoch))  # augmentation/mixup: resumable exactly
    loader.set_epoch(epoch)
    method.set_epoch(epoch, epochs)
    d = ctx.recipe["data"]
    augment = ctx.bench.batch_transform(train=d["augment"], autoaugment=d["autoaugment"], cutout=d["cutout"])
    net.train()  # stage-2 methods put BatchNorm in eval mode themselves when their cfg says bn=eval
    total, count, t0 = torch.zeros((), device=acc.device), 0, time.perf_counter()
    correct = torch.zeros((), device=acc.device)  # training top-1 (mixup: weighted by lambda), summed on device
    capped = torch.zeros(2, device=acc.device)  # CC-SAM: classes whose ||eps_c|| the max_ratio cap shortened, of all
    check_every = ctx.recipe["train"]["log_every"]  # one host sync per log_every steps for the finite-loss check
    bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{epochs}", disable=not acc.is_local_main_process, leave=False)
    for step, (images, labels) in enumerate(bar, 1):
        images = augment(images)
        if ctx.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with acc.accumulate(net), acc.autocast():
            out = method.forward_backward(net, images, labels, acc)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += out["loss"].detach().float() * labels.shape[0]
        count += labels.shape[0]
        if "acc" in out:
            correct += out["acc"].detach().float() * labels.shape[0]
        if "eps_capped" in out:
            capped += torch.stack([out["eps_capped"], out["eps_classes"]]).to(capped)
        if step % check_every == 0:
            _check_finite(ctx, stage, total, f"epoch {epoch + 1}/{epochs}, between steps {step - check_every + 1} "
                          f"and {step} of {len(loader)}")
    seconds = time.perf_counter() - t0
    sums = acc.reduce(torch.stack([total, correct, torch.tensor(float(count), device=acc.device)]), "sum").tolist()
    loss = sums[0] / max(sums[2], 1)
    if not math.isfinite(loss):
        _check_finite(ctx, stage, torch.tensor(loss), f"epoch {epoch + 1}/{epochs}")
    stats = {"loss": loss, "img_per_s": count * acc.num_processes / max(seconds, 1e-9), "seconds": seconds}
    if "acc" in out:
        stats["train_top1"] = 100.0 * sums[1] / max(sums[2], 1)
    if capped[1] > 0:
        stats["eps_capped_share"] = (capped[0] / capped[1]).item()
    return stats


class TrainingDiverged(FloatingPointError):
    """The loss became non-finite, or the training accuracy stayed at chance long after warm-up."""


def _likely_causes(ctx: _Context, stage: str, diverged: bool = True) -> str:
    cfg = ctx.recipe[stage]
    method = thawed(ctx.recipe[stage]["method"])
    lr = (
        f"a learning rate too high ({stage}.lr={cfg['lr']:g})" if diverged
        else f"the learning rate ({stage}.lr={cfg['lr']:g}: too high, or too low)"
    )
    return (
        f"likely causes: {lr}, momentum ({stage}.momentum="
        f"{cfg['momentum']:g}), weight decay ({stage}.weight_decay={cfg['weight_decay']:g})"
        + (f", the method's settings ({stage}.method={json.dumps(method)})" if method else "")
        + (", fp16 overflow (train.mixed_precision=bf16 or no)" if ctx.recipe["train"]["mixed_precision"] == "fp16"
           else "")
        + "; change the setting and train again (another --output-dir, or --overwrite)"
    )


def _check_finite(ctx: _Context, stage: str, total: torch.Tensor, where: str) -> None:
    """Stop at once when the summed loss is not finite on any process (one collective when several train)."""
    bad = (~torch.isfinite(total)).float().reshape(())
    if ctx.accelerator.num_processes > 1:
        bad = ctx.accelerator.reduce(bad.to(ctx.accelerator.device), "sum")
    if bad.item():
        raise TrainingDiverged(
            f"{stage} diverged: the training loss became "
            f"{total.item() if not math.isfinite(total.item()) else 'non-finite on another process'} ({where}); "
            "stopped. "
            + _likely_causes(ctx, stage)
        )


def _check_learning(ctx: _Context, stage: str, cfg: dict[str, Any], epoch: int, sampler: str) -> None:
    """Stop a stage whose training accuracy stayed at chance (no better than always answering the commonest
    class of what the sampler draws, plus 1 point) for ``patience`` epochs after warm-up: nothing is learnt.
    ``patience`` = max(5, epochs // 10) consecutive epochs, all after the warm-up. Not checked when the
    commonest class is over 90% of what is drawn."""
    history = [r for r in ctx.state["history"] if r.get("stage") == stage and "train_top1" in r]
    patience = max(5, cfg["epochs"] // 10)
    recent = [r for r in history if r["epoch"] > int(cfg.get("warmup_epochs") or 0)][-patience:]
    if len(recent) < patience:
        return
    counts = ctx.bench.class_counts
    chance = 100.0 / len(counts) if sampler == "class_balanced" else 100.0 * max(counts) / sum(counts)
    if chance > 90.0:  # one class is nearly all the data: accuracy cannot tell learning from answering it
        return
    if all(r["train_top1"] <= chance + 1.0 for r in recent):
        raise TrainingDiverged(
            f"{stage} is not learning: training top-1 stayed at chance ({recent[-1]['train_top1']:.1f}% at epoch "
            f"{epoch + 1}, <= {chance + 1.0:.1f}%: always answering the commonest class gets {chance:.1f}%) for "
            f"{patience} epochs after the warm-up (epochs {recent[0]['epoch']}-{recent[-1]['epoch']}); stopped. "
            + _likely_causes(ctx, stage, diverged=False)
        )


def _float32_view(net: nn.Module) -> FeaturesAndLogits:
    """``(z, logits)`` of the float32 timm model inside a prepared ``net``, without its autocast: ``acc.prepare``
    patched the prepared wrapper's own ``forward`` with the run's mixed precision, so a fresh wrapper."""
    return FeaturesAndLogits(unwrap(net))


def _finish_stage(ctx: _Context, stage: str, net, method_cfg: dict[str, Any]) -> None:
    """Evaluate on the test split (last epoch), fit prototypes, save the Hub-ready folder, checkpoint."""
    acc, bench = ctx.accelerator, ctx.bench
    batch = ctx.recipe["eval"]["batch_size"]
    # the saved float32 weights, uncompiled and without autocast: what from_pretrained users measure (bf16
    # autocast moved CIFAR-10-LT top-1 by up to 0.1 points; the per-epoch logs keep the run's precision)
    metrics = evaluate(_float32_view(net), bench, "test", acc, batch, autocast=False)
    metrics.update(split="test", epoch=ctx.recipe[stage]["epochs"], selection="last")
    last_val = [r for r in ctx.state["history"] if r.get("stage") == stage and "val_bacc" in r]
    if last_val and last_val[-1]["epoch"] == ctx.recipe[stage]["epochs"]:
        metrics.update(val_bacc=last_val[-1]["val_bacc"])
    ctx.state["metrics"][stage] = metrics
    ctx.log.info(
        f"{stage} test: top-1 {metrics['top1']:.2f} many {_fmt(metrics['many'])} medium {_fmt(metrics['medium'])} "
        f"few {_fmt(metrics['few'])}"
    )
    if ctx.recipe["eval"]["select_on"] == "val":
        _finish_selected(ctx, stage, net, method_cfg)
    _save_stage(ctx, stage, net, method_cfg, stage, metrics)
    ctx.state["epoch"] = ctx.recipe[stage]["epochs"]
    ctx.state[f"{stage}_done"] = True
    save_training_state(acc, ctx.output_dir, stage, ctx.state["epoch"], ctx.state)
    _prune_best(ctx, stage, keep=False)  # the selected weights now live in {stage}-best/


def _finish_selected(ctx: _Context, stage: str, net, method_cfg: dict[str, Any]) -> None:
    """``eval.select_on=val``: the validation-best epoch's weights, evaluated once on the test split and saved
    as ``{stage}-best/`` beside ``{stage}/``; the network holds the last epoch's weights again afterwards."""
    from safetensors.torch import load_file

    best = ctx.state["best"][stage]
    path = _best_file(ctx.output_dir, stage, best["epoch"])
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the validation-best weights of {stage} epoch {best['epoch']} are missing; rerun the run "
            "with --overwrite (or set eval.select_on=last)"
        )
    model = unwrap(net)
    last = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(load_file(str(path)), strict=True)
    metrics = evaluate(_float32_view(net), ctx.bench, "test", ctx.accelerator, ctx.recipe["eval"]["batch_size"],
                       autocast=False)
    metrics.update(split="test", epoch=best["epoch"], selection="val", val_bacc=best["score"])
    ctx.state["metrics"][f"{stage}_best"] = metrics
    ctx.log.info(
        f"{stage} validation-selected epoch {best['epoch']} (val balanced acc {best['score']:.2f}) test: "
        f"top-1 {metrics['top1']:.2f} many {_fmt(metrics['many'])} medium {_fmt(metrics['medium'])} "
        f"few {_fmt(metrics['few'])}"
    )
    _save_stage(ctx, stage, net, method_cfg, f"{stage}-best", metrics)
    model.load_state_dict(last, strict=True)


def _save_stage(ctx: _Context, stage: str, net, method_cfg: dict[str, Any], folder: str, metrics: dict) -> None:
    """Prototypes, open-set statistics and the Hub-ready folder ``output_dir/folder`` of the weights in ``net``."""
    acc, bench = ctx.accelerator, ctx.bench
    prototypes, open_set, open_set_stats = None, None, None
    if ctx.recipe["train"]["prototypes"]:
        prototypes, open_set, open_set_stats = _prototypes_and_threshold(ctx, net)
    model = unwrap(net)
    if acc.is_main_process:
        from ..hub import save_pretrained

        save_pretrained(
            model,
            ctx.output_dir / folder,
            info=dict(
                class_names=bench.class_names,
                class_counts=bench.class_counts,
                shot_thresholds=list(bench.shot_thresholds),
                shot_rule=ctx.recipe["data"]["shot_rule"],
                stage=stage,
                method=method_cfg,
                recipe=ctx.recipe.to_dict(),
                metrics=metrics,
                dataset=_dataset_id(ctx.recipe),
                data_fingerprint=bench.fingerprint,
                prototypes=prototypes,
                open_set=open_set,
                open_set_stats=open_set_stats,
            ),
        )


def _prototypes_and_threshold(ctx: _Context, net) -> tuple[torch.Tensor | None, dict[str, Any] | None, Any]:
    """Prototypes and open-set statistics over the training set (no augmentation), thresholds of every score on
    held-out known images; on the main process only (the others get Nones: only the main process saves).

    Returns ``(prototypes, open_set, open_set_stats)``; ``open_set`` is None without a validation split.
    """
    from ..inference import Classifier

    acc, bench = ctx.accelerator, ctx.bench
    if not acc.is_main_process:
        return None, None, None
    batch = ctx.recipe["eval"]["batch_size"]
    transform = bench.batch_transform(train=False)
    model = acc.unwrap_model(net).model
    was_training = model.training
    clf = Classifier(model, class_names=bench.class_names, class_counts=bench.class_counts, pretrained_cfg=None)
    train = bench.loader("train", batch, sampler="sequential")
    stats = clf.fit_open_set(train, transform=transform, seed=ctx.recipe["seed"])
    open_set = None
    if bench.val is not None:
        val = bench.loader("val", batch, sampler="sequential")
        open_set = clf.calibrate(val, tpr=ctx.recipe["train"]["calibrate_tpr"], transform=transform)
    model.train(was_training)
    return clf.prototypes.cpu(), open_set, stats


# ---------------------------------------------------------------------------------------------- helpers


def _check_same_recipe(recipe: Recipe, other: dict[str, Any], where: str) -> None:
    """A resumed run keeps its recipe: refuse one that differs from ``other`` (recipe.yaml, a checkpoint's)."""
    diffs = recipe_differences(other, recipe.to_dict())
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; ... ({len(diffs)} keys)" if len(diffs) > 4 else "")
        raise RecipeError(
            f"--resume: the recipe differs from {where} ({shown}): a resumed run keeps its recipe; to change it "
            "start a new run (another --output-dir, or --overwrite)"
        )


def _check_classes(bench) -> None:
    """Every class needs test images: per-class and many/medium/few accuracy are computed on them."""
    labels = bench.test.labels
    counts = torch.bincount(labels[labels >= 0], minlength=bench.num_classes).tolist()
    missing = [c for c in range(bench.num_classes) if counts[c] == 0]
    if missing:
        shown = ", ".join(
            f"{c} ({bench.class_names[c]!r}, {bench.class_counts[c]} training images)" for c in missing[:5]
        )
        raise ValueError(
            f"{bench.name}: no test images for class(es) {shown}" + (" ..." if len(missing) > 5 else "")
            + f": per-class and many/medium/few accuracy need test images of all {bench.num_classes} classes; "
            "check the training labels (a label outside the test split's classes) or the test split"
        )


def _check_validation_split(bench, val_per_class: int) -> None:
    """``data.val_per_class``: the validation images come from the images the long-tailed subset leaves out,
    then from the subset itself (``data.val_rule=fill``); refuse a split that takes more than half of a class's
    subset (or that cannot be filled), and say the largest value that works."""
    if not val_per_class or bench.val is None:
        return
    from ..data.counts import long_tailed_counts

    C, opts = bench.num_classes, bench.options
    kept = list(bench.class_counts)
    val = torch.bincount(bench.val.labels, minlength=C).tolist()
    if opts.get("imbalance_ratio") is not None and opts.get("max_count") is not None:
        targets = long_tailed_counts(C, opts["max_count"], opts["imbalance_ratio"], opts["profile"])
    else:  # the whole training split is the subset: every validation image comes out of it
        targets = [k + v for k, v in zip(kept, val)]
    taken = [t - k for t, k in zip(targets, kept)]
    bad = [c for c in range(C) if val[c] < val_per_class or taken[c] > kept[c]]
    if not bad:
        return
    c = bad[0]
    largest = min((v - t) + n // 2 for v, t, n in zip(val, taken, targets))
    raise ValueError(
        f"data.val_per_class={val_per_class} leaves class {c} ({bench.class_names[c]!r}) {kept[c]} of its "
        f"{targets[c]} training images ({val[c]} go to validation"
        + (f", fewer than the {val_per_class} asked" if val[c] < val_per_class else "")
        + "): a class gives at most half of its training images to the validation split; set "
        f"data.val_per_class <= {max(largest, 0)} (0: no validation split)"
    )


def _build_data(recipe: Recipe):
    d = recipe.data
    return build_benchmark(
        d["name"],
        source=_resolve_source(thawed(d["source"])),
        imbalance_ratio=d["imbalance_ratio"],
        selection=d["selection"],
        seed=d["seed"],
        shot_thresholds=tuple(d["shot_thresholds"]),
        shot_rule=d["shot_rule"],
        val_per_class=d["val_per_class"],
        val_rule=d.get("val_rule", "fill"),
        image_size=d["image_size"],
        max_count=d["max_count"],
        profile=d["profile"],
    )


def _resolve_source(source: Any) -> Any:
    """Local paths may be relative to the working directory or to the repository root; else unchanged."""
    if not isinstance(source, str):
        return source  # None (the benchmark's default) or a dict of paths
    path = Path(os.path.expandvars(source)).expanduser()
    if path.exists():
        return str(path)
    in_repo = Path(__file__).resolve().parents[2] / path
    return str(in_repo) if not path.is_absolute() and in_repo.exists() else source


def _create_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    kwargs: dict[str, Any] = {"drop_rate": cfg["drop_rate"]}
    if cfg["arch"].endswith("_cifar"):
        kwargs.update(head=cfg["head"], norm=cfg.get("norm", "batchnorm"))
    if cfg["pretrained_file"]:
        path = Path(cfg["pretrained_file"]).expanduser()
        if not path.is_file() or path.suffix != ".safetensors":
            raise FileNotFoundError(f"model.pretrained_file={path}: expected an existing .safetensors file")
        _check_safetensors(path)
        try:
            model = timm.create_model(
                cfg["arch"], pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
            )
        except RuntimeError as err:  # load_state_dict: missing / unexpected keys, size mismatch
            raise ValueError(
                f"model.pretrained_file={path}: its weights do not fit model.arch={cfg['arch']!r} "
                f"({_first_mismatch(err)}); give the weights of that architecture, or the model.arch they are for"
            ) from None
        model.reset_classifier(num_classes)
        return model
    try:
        model = timm.create_model(cfg["arch"], pretrained=cfg["pretrained"], **kwargs)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"model.arch={cfg['arch']!r}: {err}") from None
    except OSError as err:  # offline and not cached
        raise FileNotFoundError(
            f"pretrained weights for {cfg['arch']} are not in the Hugging Face cache and the Hub is unreachable "
            f"({err}); download them once, or pass model.pretrained_file=PATH.safetensors"
        ) from None
    model.reset_classifier(num_classes)
    return model


def _check_safetensors(path: Path) -> None:
    """A readable safetensors file (every tensor read: a truncated file fails here), else ValueError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"model.pretrained_file={path}: not a readable safetensors file ({' '.join(str(err).split())[:160]}; "
            "truncated, or another format such as a pickled .pth renamed): convert the weights to safetensors "
            "(safetensors.torch.save_file(state_dict, PATH)) or download the file again"
        ) from None


def _first_mismatch(err: RuntimeError) -> str:
    """The first problem of torch's load_state_dict message (size mismatch for X / missing / unexpected keys)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return line if len(line) <= 200 else line[:200] + " ..."
    return (lines[0] if lines else type(err).__name__)[:300]


def _check_input_size(model: nn.Module, arch: str, image_size: int) -> None:
    """One image of the data's size through the model (eval mode, no gradient, on the CPU before anything is
    prepared): a model that cannot take that size is an error saying the size it needs, not a traceback at the
    first step."""
    needed = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", ()) or ())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as err:
        size = f" (its input size is {needed[1]}x{needed[2]})" if len(needed) == 3 else ""
        fix = f"data.image_size={needed[1]}" if len(needed) == 3 else "a larger data.image_size"
        raise ValueError(
            f"model.arch={arch!r} cannot take the data's {image_size}x{image_size} images{size}: "
            f"{' '.join(str(err).split())[:200]}; set {fix} (images are resized), or choose a model without a fixed "
            "input size (e.g. a ResNet)"
        ) from None
    finally:
        model.train(was_training)


def _sync_batchnorm(model: nn.Module, enabled: bool, accelerator: Any) -> nn.Module:
    """``model.sync_bn``: BatchNorm over the global batch when several processes train (torch's SyncBatchNorm
    runs on CUDA only); one process: unchanged. Saved weights are the same tensors either way."""
    if not enabled or accelerator.num_processes == 1:
        return model
    if accelerator.device.type != "cuda":
        raise ValueError(
            f"model.sync_bn=true needs CUDA devices (torch's SyncBatchNorm), got {accelerator.device.type}: "
            "set model.sync_bn=false, or model.norm=groupnorm (CIFAR ResNets) for batch-independent statistics"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _load_stage1(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    file = folder / "model.safetensors"
    if not file.exists():
        raise FileNotFoundError(f"stage2.init={folder}: no model.safetensors there; give a stage-1 checkpoint folder")
    try:
        model.load_state_dict(load_file(str(file)), strict=True)
    except RuntimeError as err:
        raise ValueError(f"stage2.init={folder}: weights do not match model {type(model).__name__}: {err}") from None


def _optimizer(module: nn.Module, cfg: dict[str, Any], decay_bias_and_bn: bool) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    params = [p for p in module.parameters() if p.requires_grad]
    if decay_bias_and_bn:
        return create_optimizer_v2(
            params, cfg["optimizer"], lr=cfg["lr"], weight_decay=cfg["weight_decay"], momentum=cfg["momentum"]
        )
    return create_optimizer_v2(
        module,
        cfg["optimizer"],
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        momentum=cfg["momentum"],
        filter_bias_and_bn=True,
    )


def _keep_on_device(bench, data_cfg: dict[str, Any], device: torch.device) -> None:
    if not bench.is_tensor:
        raise ValueError(
            "data.device_resident=true needs the uint8 in-memory fast path (CIFAR-sized images); "
            "for large images keep it false and use data.num_workers"
        )
    if data_cfg["num_workers"]:
        raise ValueError("data.device_resident=true needs data.num_workers=0 (workers cannot share device tensors)")
    bench.train.to_device(device)


def _epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return seed * 100_003 + (50_000 if stage == "stage2" else 0) + epoch


def _write_selection(path: Path, bench) -> None:
    """Record which source rows form the long-tailed training subset (and the rule that chose them)."""
    opts = bench.options
    record = {"selection": opts["selection"], "seed": opts["seed"], "class_counts": bench.class_counts,
              "train_indices": bench.train_indices.tolist(),
              "val_indices": None if bench.val_indices is None else bench.val_indices.tolist()}
    path.write_text(json.dumps(record))


def _dataset_id(recipe: Recipe) -> str:
    d = recipe["data"]
    return f"{d['name']}" + (f" IR{d['imbalance_ratio']}" if d["imbalance_ratio"] else "")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
