"""Turn a finished run folder into a model shipped inside the package (``ccsam_zoo/assets/<alias>/``). Prints JSON.

    python bench/ship_model.py RUN_FOLDER ALIAS [--stages 1 2] [--heldout-per-class 100] [--compare RESULTS.json]
    python bench/ship_model.py --refresh-notes ALIAS --compare RESULTS.json --hardware "..." [--selection "..."]

The shipped folder is a small run folder that ``from_pretrained(ALIAS)`` (stage 2) and ``ALIAS:stage1`` load:

- ``stage1/`` / ``stage2/``: the stage checkpoints as trained (``--weights``: each stage's validation-selected
  epoch, ``stageN-best/`` of an ``eval.select_on=val`` run, the default when the run has them; its last-epoch
  numbers stay in the shipped ``metrics.json`` as ``stageN_last``) (timm ``config.json`` + ``model.safetensors``,
  ``ccsam_zoo.json``, ``prototypes.safetensors``, the per-class plot); the open-set statistics are re-fitted on
  the model's training split for ``--stats-stages`` (default: stage 2 only, so an alias with both stages stays
  under 5 MB; the other stage has the logit and prototype scores) and every available score is calibrated at
  95% TPR by ``bench/open_set_report.py``. A recipe
  without a validation split (the paper protocol) is calibrated on ``--heldout-per-class`` training images per
  class that the long-tailed subset left out (never test images);
- ``metrics.json``, ``recipe.yaml``, ``log.jsonl`` and ``train.log`` of the run, so the card shows both stages,
  the time per stage, the command and the hardware;
- ``README.md`` per stage: the card (``render_model_card``) with a notes section that states the protocol, the
  data copy, the number of seeds, the measured gap to the paper and, with ``--compare``, the side-by-side table of
  the runs (``bench/compare.py``'s ``results.json``).

Nothing shipped holds a path of this machine: ``recipe.yaml`` and each ``ccsam_zoo.json`` recipe get placeholders
(``data.source: PATH/TO/cifar10``, ``ccsam_zoo.hub.card.portable_recipe``), the logs ``portable_text``; the data
copy is named by folder name, content hash and fingerprint (``--data-copy``). A shipped folder that still holds an
absolute path is refused. ``--refresh-notes`` applies the same to an alias already shipped. A model whose stage 2
was trained in a separate run from saved stage-1 weights (``stage2.init``) ships with ``--stage1-from RUN1``.

Register the alias in ``ccsam_zoo/hub/registry.py`` (``_SHIPPED``) first: its folder is the destination, and the
card names it.

Why a bench script and not a ``ccsam-zoo`` command: shipping writes into the package's source tree
(``ccsam_zoo/assets/`` and the ``_SHIPPED`` table), needs a finished run folder, the project's data copy and its
out-of-distribution set, and is a maintainer's step before a release; an installed wheel cannot ship into itself
(users publish their own models with ``push_to_hub``). What the package needs lives in the package and is only
called from here: the card and its portable paths (``hub/card.py``), the open-set statistics and thresholds
(``inference``, ``hub.checkpoint.write_open_set_stats``), the model's subset rule (``data/subset_rule.py``).
The open-set report of each stage is written beside the run (``RUN_FOLDER/open_set_report-stageN.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/open_set_report.py

import open_set_report  # noqa: E402
import torch  # noqa: E402

from ccsam_zoo.ccsam.presets import stage1_defaults  # noqa: E402
from ccsam_zoo.hub import registry  # noqa: E402
from ccsam_zoo.hub.card import (  # noqa: E402
    NOTES_BEGIN,
    NOTES_END,
    data_copy_name,
    paper_result_for,
    plot_per_class_accuracy,
    portable_extras,
    portable_recipe,
    portable_text,
    pretty_dataset,
    render_model_card,
)
from ccsam_zoo.training.config import stage_methods  # noqa: E402

RUN_FILES = ("metrics.json", "recipe.yaml", "log.jsonl", "train.log")
STAGE_FILES = ("config.json", "model.safetensors", "ccsam_zoo.json", "prototypes.safetensors",
               "open_set_stats.safetensors", "per_class_accuracy.png")  # fmt: skip
DATA_COPY = (
    "the project's CIFAR-10 copy (HF `datasets` parquet of the 50,000 / 10,000 standard images, stored as 32x32 "
    "JPEG at PIL quality 75: slightly lossy versus the original pixels; train.parquet sha256 f405552e...)"
)
# train.parquet sha256 of that copy: the JPEG description is written only for the copy it describes.
_JPEG75_COPY_SHA = "f405552ec7b2a620ffc27beeebae09a8a66355a64b39262cd13fdaf1dbeda102"
# What no shipped text file may hold: an absolute POSIX / home / Windows path (tests/test_shipped_files.py).
MACHINE_PATH = re.compile(r"(?<![\w.:/-])(?:/(?:work|root|home|tmp|Users|mnt|var|opt|srv|data)\b|~/|[A-Za-z]:\\)")
_TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".log", ".jsonl", ".txt")


def data_copy(data_source: str | None) -> str:
    """The data copy named for a card: folder name and train.parquet hash (the JPEG quality-75 description for the
    project's CIFAR-10 copy), never its path."""
    name = data_copy_name(data_source) or "the recipe's data source"
    parquet = Path(data_source or "").expanduser() / "train.parquet"
    if not parquet.is_file():
        return f"the data copy `{name}`"
    sha = hashlib.sha256(parquet.read_bytes()).hexdigest()
    if sha == _JPEG75_COPY_SHA:
        return (f"the CIFAR-10 copy `{name}` (the 50,000 / 10,000 standard images stored as 32x32 JPEG at PIL "
                f"quality 75, slightly lossy versus the original pixels; train.parquet sha256 {sha[:8]}...)")
    return f"the data copy `{name}` (train.parquet sha256 {sha[:8]}...)"


def make_portable(dest: Path, data_copy_text: str | None = None) -> list[str]:
    """Rewrite a shipped folder so that it names no path of this machine (recipes, logs, each stage's extras;
    weights, statistics and numbers untouched); ``data_copy_text`` is recorded as each stage's ``data_copy``.
    Returns the files changed."""
    import yaml

    changed = []

    def write(path: Path, text: str) -> None:
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(str(path.relative_to(dest)))

    if (dest / "recipe.yaml").is_file():
        recipe = yaml.safe_load((dest / "recipe.yaml").read_text(encoding="utf-8"))
        write(dest / "recipe.yaml", yaml.safe_dump(portable_recipe(recipe), sort_keys=False))
    for path in [dest / n for n in ("train.log", "log.jsonl", "metrics.json")] + sorted(dest.glob("**/README.md")):
        if path.is_file():  # README.md: its hand-written notes are kept by the next render
            write(path, portable_text(path.read_text(encoding="utf-8")))
    for extras_path in sorted(dest.glob("**/ccsam_zoo.json")):
        extras = portable_extras(json.loads(extras_path.read_text(encoding="utf-8")))
        if data_copy_text:
            extras["data_copy"] = data_copy_text
        write(extras_path, json.dumps(extras, indent=2) + "\n")
    return changed


def machine_paths(folder: Path) -> list[str]:
    """``file:line: text`` of every absolute path in the text files under ``folder`` (empty: nothing leaks)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES):
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(folder)}:{n}: {line.strip()[:120]}")
    return found


def _refuse_leaks(dest: Path) -> None:
    leaks = machine_paths(dest)
    if leaks:
        raise SystemExit(f"{dest} would ship paths of this machine ({len(leaks)} lines), e.g. {leaks[0]}")


def _paper_line(extras: dict[str, Any], top1: float) -> str:
    paper = paper_result_for(extras)
    if paper is None:
        return "The paper publishes no number for this model's method on this setting."
    gap = top1 - paper["top1"]
    return f"Measured gap to the paper ({paper['setting']}: {paper['top1']:.2f}): **{gap:+.2f}** points top-1."


def augmentation_text(recipe: dict[str, Any]) -> str:
    """What the recipe's stage-1 training images went through, in words (the card's augmentation line)."""
    d = recipe.get("data") or {}
    parts = ["pad-4 random crop + horizontal flip" if d.get("augment", True) else "none"]
    aa = d.get("autoaugment")
    if isinstance(aa, str) and aa.startswith("rand"):
        parts.append(f"RandAugment `{aa}` per image")
    elif aa:
        parts.append(f"AutoAugment's {'CIFAR-10' if aa in (True, 'cifar10') else aa} policy per image")
    cut = d.get("cutout")
    if cut:
        size = 16 if cut is True else int(cut)
        parts.append(f"Cutout (one {size}x{size} hole)")
    method, _ = stage_methods(recipe)  # the resolved stage-1 method: `mixup` mixes by default (alpha 1.0)
    method = stage1_defaults(method["name"], method.get("preset")) | method
    alpha = method.get("alpha" if method["name"] == "mixup" else "mixup_alpha")
    parts.append(f"mixup alpha {alpha:g}" if alpha else "no mixup")
    return ", ".join(parts)


def _epoch_text(m: dict[str, Any], recipe: dict[str, Any]) -> str:
    """Which epoch's weights these are: the last, or the one the validation split selected."""
    if m.get("selection") != "val":
        return "last epoch, no checkpoint selection"
    d = recipe.get("data") or {}
    rule = "the training images the long-tailed subset leaves out" if d.get("val_rule") == "left_out" else (
        "held out of the training images")  # fmt: skip
    return (f"the validation-selected epoch {m.get('epoch')} (balanced accuracy {float(m['val_bacc']):.2f}% on the "
            f"validation split: at most {d.get('val_per_class')} images per class, {rule})")  # fmt: skip


def _notes(
    alias: str, stage: int, extras: dict[str, Any], compare: dict | None, hardware: str | None,
    selection: str | None = None,
) -> str:  # fmt: skip
    recipe = extras.get("recipe") or {}
    m = extras.get("metrics") or {}
    top1 = 100 * float(m["top1"]) if float(m["top1"]) <= 1 else float(m["top1"])
    s1, s2 = recipe.get("stage1") or {}, recipe.get("stage2") or {}
    seed = recipe.get("seed")
    full = recipe.get("name") in ("cifar10_lt", "cifar100_lt") and (s1.get("epochs"), s2.get("epochs")) == (200, 30)
    what = f"the paper's full {pretty_dataset(recipe.get('data', {}).get('name'))} protocol" if full else (
        "NOT the paper's full protocol")  # fmt: skip
    lines = [
        f"## How this shipped model was made (alias `{alias}{':stage1' if stage == 1 else ''}`)",
        "",
        f"- **Protocol**: {what}, recipe `{recipe.get('name')}` with "
        f"`method={recipe.get('method')}`: ResNet-32, IR {recipe.get('data', {}).get('imbalance_ratio')}, "
        f"stage 1 {s1.get('epochs')} epochs (batch {s1.get('batch_size')}, lr {s1.get('lr')}, "
        f"{s1.get('warmup_epochs')} warm-up epochs, x{s1.get('gamma') or 0.1} at {s1.get('milestones')}), "
        f"stage 2 {s2.get('epochs')} epochs (lr {s2.get('lr')}, {s2.get('schedule')}); {_epoch_text(m, recipe)}"
        + ("." if selection else ", the test split used for nothing but the numbers below."),
        f"- **Augmentation**: {augmentation_text(recipe)}.",
        f"- **Data copy**: {DATA_COPY}; training subset: the authors' rule (per-class seeded shuffle, seed "
        f"{recipe.get('data', {}).get('seed')}), fingerprint `{extras.get('data_fingerprint')}`.",
        f"- **Seeds**: 1 (seed {seed}); the seed-to-seed spread of this code on the short CPU schedule is "
        "about 1-1.5 points (docs/RESULTS.md 1b).",
        f"- {_paper_line(extras, top1)}",
    ]
    if selection:  # how this configuration was chosen among the runs of the table below
        lines.append(f"- **Selection**: {selection}.")
    if hardware:
        lines.append(f"- **Hardware**: {hardware}.")
    if compare:
        summary = compare.get("summary", {})
        selected = any(row.get("stage2_best.top1") for row in summary.values())  # eval.select_on=val runs

        def cell(row: dict, key: str) -> str:
            v = row.get(key)
            return f"{v['mean']:.2f}" if v else "–"

        lines += ["", "Side by side (same recipe, data copy and seed; CIFAR-10 test split, top-1 % of each run's "
                  "saved float32 weights; train time summed over the epochs, across resumes"
                  + ("; last epoch / validation-selected epoch, many and medium of the selected stage 2, val = "
                     "balanced accuracy on the validation split" if selected else "") + "):", ""]  # fmt: skip
        if selected:
            lines += ["| Run | Stage 1 | Stage 2 | Many | Medium | Val (stage 2) | Train (min) |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
        else:
            lines += ["| Run | Stage 1 | Stage 2 | Many | Medium | Train (min) |", "|---|---|---|---|---|---|"]
        for name, row in summary.items():
            train = f"{row['train_s']['mean'] / 60:.1f}" if row.get("train_s") else "–"
            if selected:
                b = "stage2_best" if row.get("stage2_best.top1") else "stage2"
                s1, s2 = (f"{cell(row, f'stage{n}.top1')} / {cell(row, f'stage{n}_best.top1')}" for n in (1, 2))
                lines.append(f"| {name} | {s1} | {s2} | {cell(row, b + '.many')} | {cell(row, b + '.medium')} | "
                             f"{cell(row, b + '.val_bacc')} | {train} |")  # fmt: skip
            else:
                lines.append(f"| {name} | {cell(row, 'stage1.top1')} | {cell(row, 'stage2.top1')} | "
                             f"{cell(row, 'stage2.many')} | {cell(row, 'stage2.medium')} | {train} |")  # fmt: skip
    section = "sections 0 and 0b" if (recipe.get("data") or {}).get("autoaugment") else "section 0"
    lines += ["", f"Full tables and commands: docs/RESULTS.md, {section}."]
    return "\n".join([NOTES_BEGIN, *lines, NOTES_END])


def _float32_metrics(dest: Path, stage: int, fractions: dict[str, Any]) -> dict[str, Any]:
    """Put the float32 test accuracy (what ``from_pretrained`` users measure) into the stage's extras and the
    shipped ``metrics.json``; a run evaluated under bf16 autocast keeps those numbers as ``metrics_training``."""
    path = dest / f"stage{stage}" / "ccsam_zoo.json"
    extras = json.loads(path.read_text())

    def pct(v: Any) -> Any:
        return None if v is None else round(100.0 * v, 4)

    new = {k: pct(fractions[k]) for k in ("top1", "many", "medium", "few")}
    new["per_class"] = [pct(v) for v in fractions["per_class"]]
    old = extras["metrics"]
    if any(old.get(k) != new[k] for k in ("top1", "per_class")):
        extras["metrics_training"] = old
    extras["metrics"] = {**old, **new}
    path.write_text(json.dumps(extras, indent=2) + "\n")
    run_metrics = json.loads((dest / "metrics.json").read_text())
    named = dict(zip(extras["class_names"], new["per_class"]))
    run_metrics[f"stage{stage}"] = {**run_metrics[f"stage{stage}"], **new, "per_class_by_name": named}
    (dest / "metrics.json").write_text(json.dumps(run_metrics, indent=1) + "\n")
    plot_per_class_accuracy(dest / f"stage{stage}", extras)
    return extras


def _write_cards(
    dest: Path, alias: str, compare: dict | None, hardware: str | None, selection: str | None = None
) -> list[int]:
    """Write each shipped stage's notes, then render the cards (after all stages: each card's stage table shows the
    other stage's float32 numbers too). Returns the stages found."""
    stages = [s for s in (1, 2) if (dest / f"stage{s}" / "ccsam_zoo.json").is_file()]
    for stage in stages:
        extras = json.loads((dest / f"stage{stage}" / "ccsam_zoo.json").read_text())
        readme = dest / f"stage{stage}" / "README.md"
        readme.write_text(_notes(alias, stage, extras, compare, hardware, selection) + "\n")  # kept by the render
    for stage in stages:
        (dest / f"stage{stage}" / "README.md").write_text(render_model_card(dest / f"stage{stage}"))
    return stages


def refresh_notes(
    alias: str, compare: dict | None, hardware: str | None, selection: str | None = None,
    data_copy_text: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Re-write the notes and cards of an already shipped alias (e.g. a side-by-side table with more runs), keeping
    its weights, statistics and metrics as they are; its recipes and logs are made portable first. Without
    ``compare`` / ``hardware`` / ``selection`` (or for a single checkpoint folder) the notes are kept as they are
    and only the cards are re-rendered."""
    entry = registry._REGISTRY.get(alias)
    if entry is None or not entry.shipped or entry.local_dir is None or not entry.local_dir.is_dir():
        raise SystemExit(
            f"{alias!r} is not a shipped alias with a folder: ship it first (bench/ship_model.py RUN ALIAS)"
        )
    dest = entry.local_dir
    portable = make_portable(dest, data_copy_text)
    if (dest / "config.json").is_file() or (compare, hardware, selection) == (None, None, None):
        # a single checkpoint folder, or nothing new for the notes: each card keeps its notes, is re-rendered
        stages = [s for s in (1, 2) if (dest / f"stage{s}" / "config.json").is_file()]
        for folder in [dest / f"stage{s}" for s in stages] or [dest]:
            (folder / "README.md").write_text(render_model_card(folder), encoding="utf-8")
    else:
        stages = _write_cards(dest, alias, compare, hardware, selection)
    _refuse_leaks(dest)
    return {"alias": alias, "folder": str(dest), "refreshed": [f"stage{s}" for s in stages], "portable": portable}


def ship(
    run: Path, alias: str, stages: list[int], heldout: int, data_source: str, compare: dict | None = None,
    hardware: str | None = None, overwrite: bool = False, stats_stages: tuple[int, ...] = (2,),
    selection: str | None = None, stage1_from: Path | None = None, data_copy_text: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Ship ``run`` as ``alias``. ``weights``: ``"selected"`` (each stage's validation-selected epoch,
    ``stageN-best/`` of an ``eval.select_on=val`` run), ``"last"``, or None: selected when the run has them."""
    entry = registry._REGISTRY.get(alias)
    if entry is None or not entry.shipped or entry.local_dir is None:
        raise SystemExit(f"register {alias!r} as a shipped alias in ccsam_zoo/hub/registry.py (_SHIPPED) first")
    if not (run / "metrics.json").is_file():
        raise SystemExit(f"{run}: no metrics.json: the run has not finished")
    run_metrics = json.loads((run / "metrics.json").read_text())
    has_best = all(f"stage{s}_best" in run_metrics and (run / f"stage{s}-best").is_dir() for s in stages)
    if weights == "selected" and not has_best:
        raise SystemExit(f"{run}: no validation-selected weights (stageN-best/): the run did not select on a "
                         "validation split (eval.select_on=val); ship --weights last")  # fmt: skip
    selected = has_best if weights is None else weights == "selected"
    dest = entry.local_dir
    if dest.exists():
        if not overwrite:
            raise SystemExit(f"{dest} exists: pass --overwrite")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, dest / name)
    if selected:  # the shipped metrics.json's stageN is the shipped (selected) weights; the last epoch -> stageN_last
        for s_ in stages:
            run_metrics[f"stage{s_}_last"] = run_metrics[f"stage{s_}"]
            run_metrics[f"stage{s_}"] = run_metrics.pop(f"stage{s_}_best")
        (dest / "metrics.json").write_text(json.dumps(run_metrics, indent=1) + "\n")
    out: dict[str, Any] = {"alias": alias, "folder": str(dest), "weights": "selected" if selected else "last",
                           "stages": {}}  # fmt: skip
    for stage in stages:
        src, dst = run / f"stage{stage}{'-best' if selected else ''}", dest / f"stage{stage}"
        if stage == 1 and stage1_from is not None:  # stage 2 was trained from these weights (stage2.init)
            src = stage1_from / "stage1"
        dst.mkdir()
        for name in STAGE_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
    make_portable(dest, data_copy_text or data_copy(data_source))
    for stage in stages:
        dst = dest / f"stage{stage}"
        args = open_set_report.parse_args([
            "--model", str(dst), "--data-source", data_source, "--fit", "--write-stats",
            "--heldout-per-class", str(heldout), "--no-prior", *([] if stage in stats_stages else ["--no-stats"]),
        ])  # fmt: skip
        torch.manual_seed(0)
        report = open_set_report.run(args)
        text = json.dumps(report, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        (run / f"open_set_report-stage{stage}.json").write_text(text + "\n")
        extras = _float32_metrics(dest, stage, report["test_accuracy"])
        out["stages"][f"stage{stage}"] = {
            "top1": extras["metrics"]["top1"],
            "open_set": {k: extras["open_set"][k] for k in ("score", "threshold", "calibration")},
            "default_rule_met": report["default_rule_met"],
            "report_auroc": report["scores"][report["default"]]["report"]["auroc"],
            "bytes": {p.name: p.stat().st_size for p in sorted(dst.iterdir())},
        }
    _write_cards(dest, alias, compare, hardware, selection)
    _refuse_leaks(dest)
    out["total_bytes"] = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return out


def main() -> None:
    data = Path(os.environ.get("CCSAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, nargs="?", help="a finished run folder (metrics.json, stage1/, stage2/)")
    p.add_argument("alias", nargs="?", help="the shipped alias (registered in ccsam_zoo/hub/registry.py)")
    p.add_argument(
        "--refresh-notes",
        metavar="ALIAS",
        default=None,
        help="only re-write the notes and cards of this shipped alias (with --compare / --hardware)",
    )
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--heldout-per-class", type=int, default=100)
    p.add_argument("--data-source", default=str(data / "cifar10"))
    p.add_argument("--compare", type=Path, default=None, help="bench/compare.py results.json for the notes")
    p.add_argument("--hardware", default=None, help="how the run was trained, for the notes")
    p.add_argument("--selection", default=None,
                   help="how this configuration was chosen among the compared runs, for the notes (say so when the "
                        "choice used the test split)")  # fmt: skip
    p.add_argument("--stats-stages", type=int, nargs="*", default=[2], choices=[1, 2],
                   help="stages that keep open_set_stats.safetensors (0.7 MB each); the others ship the logit and "
                        "prototype scores only")  # fmt: skip
    p.add_argument("--stage1-from", type=Path, default=None, metavar="RUN1",
                   help="the run whose stage1/ the shipped stage 2 was trained from (RUN_FOLDER's stage2.init)")
    p.add_argument("--data-copy", default=None,
                   help="how the cards name the data copy (default: folder name and train.parquet hash)")
    p.add_argument("--weights", choices=["selected", "last"], default=None,
                   help="each stage's validation-selected epoch (stageN-best/ of an eval.select_on=val run) or its "
                        "last epoch (default: selected when the run has it)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    compare = json.loads(a.compare.read_text()) if a.compare else None
    if a.refresh_notes:
        copy_text = a.data_copy or data_copy(a.data_source)
        print(json.dumps(refresh_notes(a.refresh_notes, compare, a.hardware, a.selection, copy_text), indent=1))
        return
    if a.run is None or a.alias is None:
        p.error("give RUN_FOLDER and ALIAS, or --refresh-notes ALIAS")
    out = ship(
        a.run,
        a.alias,
        a.stages,
        a.heldout_per_class,
        a.data_source,
        compare,
        a.hardware,
        a.overwrite,
        tuple(a.stats_stages),
        a.selection,
        a.stage1_from,
        a.data_copy,
        a.weights,
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
