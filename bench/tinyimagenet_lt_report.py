"""Tiny-ImageNet-LT report of trained runs (closed set + OLTR open set), and the optional-asset export. Prints JSON.

    # report: top-1, many / medium / few (%) on the test split; on test + the open split (TinyImageNet_LT_open.txt):
    # F-measure and AUROC of MSP at OLTR's fixed threshold 0.1 and of the checkpoint's calibrated default score
    # (threshold keeping 95% of the val split, chosen at training); wall time and img/s from the run's logs
    python bench/tinyimagenet_lt_report.py --model RUN_DIR_OR_ALIAS [...] [--output report.json] [--markdown]

    # export a run as an optional asset folder (fp16 weights, download-free, outside the package):
    # $CCSAM_ASSETS/<alias>/{stage1,stage2}/ (default ~/.cache/ccsam_zoo/assets); checks that the fp16 weights
    # give the float32 top-1 to 0.1 point on the test split and that ``from_pretrained(alias)`` loads them
    python bench/tinyimagenet_lt_report.py --export RUN_DIR --alias ccsam-tinyimagenet-lt [--stages stage2 stage1]

``--data-source`` defaults to ``$CCSAM_DATA/tinyimagenet_lt`` (images/ + the split files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import ccsam_zoo  # noqa: F401
from ccsam_zoo.data import build_benchmark
from ccsam_zoo.hub import from_pretrained
from ccsam_zoo.hub.registry import optional_assets_dir, resolve_checkpoint
from ccsam_zoo.inference import evaluate_model
from ccsam_zoo.inference.open_set import OLTR_MSP_THRESHOLD
from ccsam_zoo.training.run_log import resume_count, stage_seconds

DATA = Path(os.environ.get("CCSAM_DATA", "../shared/data")) / "tinyimagenet_lt"
PORTABLE_DATA = "../shared/data/tinyimagenet_lt"  # the recipes' default, relative to the repository root


def _bench(source: Path, size: int):
    return build_benchmark("tinyimagenet_lt", f"{source / 'images'}{os.pathsep}{source}", image_size=size)


def _run_stats(run: Path) -> dict[str, Any]:
    """Training img/s per stage (median over epochs), summed epoch time (across resumes) and, for a run that was
    never resumed, its wall time, from a run folder's logs."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    epochs = {(r.get("stage"), r.get("epoch")): r for r in rows}  # an epoch redone after a resume: its last record
    out: dict[str, Any] = {}
    for stage in ("stage1", "stage2"):
        speeds = sorted(r["img_per_s"] for (s, _), r in epochs.items() if s == stage and "img_per_s" in r)
        if speeds:
            out[f"{stage}_img_per_s"] = round(speeds[len(speeds) // 2], 2)
    seconds, _ = stage_seconds(run)  # an epoch redone after a resume counts once
    for stage, s in seconds.items():
        out[f"{stage}_train_s"] = round(s, 1)
    out["train_s"] = round(sum(seconds.values()), 1)
    out["resumes"] = resume_count(run)
    if out["resumes"] == 0:  # a resumed run's recipe.yaml is rewritten and its span holds the pause
        start = (run / "recipe.yaml").stat().st_mtime
        end = max(p.stat().st_mtime for p in run.glob("stage*/ccsam_zoo.json"))
        out["wall_s"] = round(end - start, 1)  # training + the evaluations and statistics after each stage
    return out


def report(model: str, source: Path, batch_size: int) -> dict[str, Any]:
    """Closed-set and open-set numbers of one model on the test split + the open split."""
    clf = from_pretrained(model)
    folder, _ = resolve_checkpoint(model)
    size = int(clf.data_config["input_size"][-1])
    bench = _bench(source, size)
    default = clf.default_score()
    scores = tuple(dict.fromkeys(["msp", default]))
    t0 = time.perf_counter()
    r = evaluate_model(
        clf,
        bench.loader("test", batch_size, sampler="sequential"),
        bench.loader("open", batch_size, sampler="sequential"),
        batch_size=batch_size,
        scores=scores,
        thresholds={"msp": OLTR_MSP_THRESHOLD},
        class_counts=clf.class_counts,
        many_threshold=int(clf.meta.get("shot_thresholds", [100, 20])[0]),
        few_threshold=int(clf.meta.get("shot_thresholds", [100, 20])[1]),
        rule=clf.meta.get("shot_rule") or "paper",
    )
    seconds = time.perf_counter() - t0
    msp, dflt = r["open_set"]["msp"], r["open_set"][default]
    out = {
        "model": model,
        "checkpoint": str(folder),
        "method": (clf.meta.get("method") or {}).get("name") if isinstance(clf.meta.get("method"), dict) else None,
        **{k: None if r[k] is None else round(100 * r[k], 2) for k in ("top1", "many", "medium", "few")},  # %
        "num_test": r["num_samples"], "num_open": r["num_open"],
        "f_measure_msp_0.1": msp["f_measure"], "auroc_msp": msp["auroc"],
        "default_score": default, "default_threshold": dflt["threshold"],
        "default_threshold_source": dflt["threshold_source"],
        "f_measure_default": dflt["f_measure"], "auroc_default": dflt["auroc"],
        "rejected_known_default": dflt["rejected_known"], "rejected_open_default": dflt["rejected_open"],
        "eval_img_per_s": round((r["num_samples"] + r["num_open"]) / seconds, 1),
    }  # fmt: skip
    run = folder.parent if folder.name in ("stage1", "stage2") else None
    if run is not None and (run / "log.jsonl").is_file():
        out.update(_run_stats(run))
    return out


def _to_fp16(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    save_file(half, str(dst), metadata={"format": "pt"})
    dst.chmod(0o644)  # readable like the other files of the folder (it is meant to be copied to other machines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _notes(alias: str, stage: str, rep: dict[str, Any], fp16: dict[str, Any], recipe: dict[str, Any]) -> str:
    """The card's notes: protocol, data, seed, precision and the measured numbers of this stage."""
    from ccsam_zoo.hub.card import NOTES_BEGIN, NOTES_END

    method = recipe.get("method")
    s1, s2 = recipe.get("stage1", {}), recipe.get("stage2", {})
    lines = [
        "## Notes",
        "",
        f"- Protocol: recipe `{recipe.get('name')}` (`method={method}`"
        + (f", stage 2 preset `{(s2.get('method') or {}).get('preset')}`" if method == "ccsam" else ", stage 2 = cRT")
        + f"), timm ResNet-50 trained from scratch at 64 px ({recipe.get('model', {}).get('arch')}), "
        f"{s1.get('epochs')} + {s2.get('epochs')} epochs, batch {s1.get('batch_size')}, lr {s1.get('lr')} cosine, "
        f"seed {recipe.get('seed')}, one run. Far from converged: a CPU-sized schedule that exercises the "
        "ImageNet-LT code path; the full schedule is the `tinyimagenet_lt` recipe.",
        "- Data: Tiny-ImageNet-LT (OLTR-format split files over Tiny-ImageNet, 100 classes, 10,547 training images, "
        "480 down to 5 per class; balanced val 2,000 (threshold calibration), test 5,000, open split 2,000 images of "
        "100 other classes). Tiny-ImageNet: ImageNet terms (research use).",
        f"- Measured ({stage}, float32 weights): top-1 {_pct(rep['top1'])}% (many {_pct(rep['many'])} / medium "
        f"{_pct(rep['medium'])} / few {_pct(rep['few'])}); open set on test + open split: F-measure "
        f"{rep['f_measure_msp_0.1']:.3f} at OLTR's MSP threshold 0.1, {rep['f_measure_default']:.3f} with the "
        f"calibrated default score `{rep['default_score']}` (threshold keeping 95% of the val split); AUROC "
        f"{rep['auroc_msp']:.3f} (MSP) / {rep['auroc_default']:.3f} (default score).",
        f"- Weights stored in **fp16** to halve the download-free asset ({fp16['weights_bytes'] / 1e6:.1f} MB): "
        f"top-1 {fp16['top1_fp16']:.2f}% against {fp16['top1_fp32']:.2f}% in float32 (difference "
        f"{fp16['abs_diff']:.2f} points, limit 0.1); they load into a float32 model. A ResNet-50 cannot meet the "
        "10 MB budget of the packaged models, so this alias is an optional asset outside the package "
        f"(`$CCSAM_ASSETS/{alias}`, default `~/.cache/ccsam_zoo/assets/{alias}`).",
    ]
    if rep.get("train_s"):
        wall = f", {rep['wall_s'] / 60:.0f} min wall with the evaluations" if rep.get("wall_s") else (
            f", resumed {rep.get('resumes')}x")  # fmt: skip
        lines.append(
            f"- Training: {rep['train_s'] / 60:.0f} min of summed epoch time (both stages{wall}) at "
            f"{rep.get('stage1_img_per_s')} / {rep.get('stage2_img_per_s')} img/s (stage 1 / stage 2), one CPU thread "
            "on a shared 2-core machine."
        )
    return "\n".join([NOTES_BEGIN, *lines, NOTES_END])


def _portable_paths(folder: Path, source: Path) -> None:
    """No path of the build machine in the asset: the data folder becomes the recipe's relative default
    (``../shared/data/tinyimagenet_lt``) in every text file (recipes, extras, logs, cards)."""
    absolute = str(source.resolve())
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".yaml", ".jsonl", ".log", ".md"):
            text = f.read_text(encoding="utf-8")
            if absolute in text:
                f.write_text(text.replace(absolute, PORTABLE_DATA), encoding="utf-8")


def export(
    run: Path, alias: str, stages: list[str], source: Path, batch_size: int, dest: Path | None, known: list[dict]
) -> dict:
    """Copy ``run``'s stages into ``dest/alias`` with fp16 weights; check top-1 against the float32 run.
    ``known``: reports already made (``--reports``), reused for the float32 numbers of the same checkpoint."""
    target = (dest or optional_assets_dir()) / alias
    tmp = target.with_name(f".{alias}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {"alias": alias, "folder": str(target), "stages": {}}
    for stage in stages:
        src = run / stage
        if not (src / "model.safetensors").is_file():
            sys.exit(f"error: {src} has no model.safetensors; pass a finished run folder (with {stage}/)")
        (tmp / stage).mkdir(parents=True)
        for f in src.iterdir():
            if f.name != "model.safetensors" and f.is_file():
                shutil.copy2(f, tmp / stage / f.name)
        _to_fp16(src / "model.safetensors", tmp / stage / "model.safetensors")
        done = [r for r in known if Path(r["checkpoint"]).resolve() == src.resolve()]
        full = done[0] if done else report(str(src), source, batch_size)
        half = report(str(tmp / stage), source, batch_size)
        diff = abs(full["top1"] - half["top1"])
        out["stages"][stage] = {
            "top1_fp32": full["top1"], "top1_fp16": half["top1"], "abs_diff": round(diff, 4),
            "f_measure_default_fp32": full["f_measure_default"], "f_measure_default_fp16": half["f_measure_default"],
            "bytes": sum(p.stat().st_size for p in (tmp / stage).iterdir()),
            "weights_bytes": (tmp / stage / "model.safetensors").stat().st_size,
        }  # fmt: skip
        if diff > 0.1:
            shutil.rmtree(tmp)
            sys.exit(f"error: fp16 weights of {src} move top-1 by {diff:.2f} points (> 0.1): not exported")
        out["stages"][stage]["report_fp32"] = full
    for name in ("metrics.json", "recipe.yaml", "log.jsonl", "train.log"):
        if (run / name).is_file():
            shutil.copy2(run / name, tmp / name)
    _portable_paths(tmp, source)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    from ccsam_zoo.hub import registry
    from ccsam_zoo.hub.card import render_model_card

    registry._REGISTRY.update(registry._builtin_entries())  # the card names the alias when the folder is its own
    for stage in stages:
        folder = target / stage
        recipe = json.loads((folder / "ccsam_zoo.json").read_text()).get("recipe") or {}
        info = out["stages"][stage]
        (folder / "README.md").write_text(_notes(alias, stage, info["report_fp32"], info, recipe) + "\n")
        (folder / "README.md").write_text(render_model_card(folder))
    out["total_bytes"] = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return out


def _markdown(rows: list[dict[str, Any]]) -> str:
    pct = _pct
    head = ("| model | top-1 | many | medium | few | F (MSP @ 0.1) | AUROC (MSP) | F (default score) | AUROC (default) "
            "| train img/s (stage 1 / 2) | train time (summed epochs; wall) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for r in rows:
        wall = f"{r['wall_s'] / 60:.0f} min wall" if r.get("wall_s") else f"resumed {r.get('resumes', 0)}x"
        wall = f"{r['train_s'] / 60:.0f} min; {wall}" if r.get("train_s") else "-"
        speed = f"{r.get('stage1_img_per_s', '-')} / {r.get('stage2_img_per_s', '-')}"
        lines.append(
            f"| {r['model']} | {pct(r['top1'])} | {pct(r['many'])} | {pct(r['medium'])} | {pct(r['few'])} "
            f"| {r['f_measure_msp_0.1']:.3f} | {r['auroc_msp']:.3f} | {r['f_measure_default']:.3f} "
            f"({r['default_score']}) | {r['auroc_default']:.3f} | {speed} | {wall} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=[], help="run folders, checkpoint folders or aliases")
    p.add_argument("--data-source", type=Path, default=DATA, help="folder with images/ and the split files")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--export", type=Path, default=None, metavar="RUN_DIR", help="export this run as an asset")
    p.add_argument("--alias", default=None, help="with --export: the alias (folder name) to write")
    p.add_argument("--stages", nargs="+", default=["stage2", "stage1"], choices=["stage1", "stage2"])
    p.add_argument("--dest", type=Path, default=None, help="with --export: default $CCSAM_ASSETS")
    p.add_argument("--reports", type=Path, default=None, help="with --export: a report JSON of this script to reuse")
    p.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--markdown", action="store_true", help="also print the RESULTS.md table (stderr)")
    args = p.parse_args()
    if not (args.data_source / "TinyImageNet_LT_test.txt").is_file():
        sys.exit(f"error: no TinyImageNet_LT_test.txt in {args.data_source}; pass --data-source FOLDER")
    if args.export is not None:
        if not args.alias:
            sys.exit("error: --export needs --alias NAME (e.g. ccsam-tinyimagenet-lt)")
        known = json.loads(args.reports.read_text()) if args.reports else []
        result: Any = export(args.export, args.alias, args.stages, args.data_source, args.batch_size, args.dest, known)
        if args.alias in {r.alias for r in ccsam_zoo.list_pretrained()}:
            result["loads_as_alias"] = from_pretrained(args.alias).class_names[:3]
    else:
        if not args.model:
            sys.exit("error: pass --model RUN_DIR [...] or --export RUN_DIR --alias NAME")
        result = [report(m, args.data_source, args.batch_size) for m in args.model]
        if args.markdown:
            print(_markdown(result), file=sys.stderr)
    text = json.dumps(result, indent=1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
