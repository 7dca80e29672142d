"""Open-set report of a checkpoint: every score on a selection and a report set, near and far OOD. Prints JSON.

    python bench/open_set_report.py [--model ccsam-cifar10-lt-cpu] [--fit] [--write-stats] [--markdown]
        [--heldout-per-class 100]
        [--plot docs/figures/open_set_histograms.png] [--output report.json]

Protocol (nothing used to choose or calibrate is reported on):

- the model's own training split is rebuilt from its recipe (same rows: the data fingerprint must match) and,
  with ``--fit`` or when the checkpoint has none, the statistics are fitted on it (``Classifier.fit_open_set``);
- every score's threshold keeps 95% of the KNOWN VALIDATION images (the recipe's held-out split; for a recipe
  without one, ``--heldout-per-class N``: up to N seeded images per class of the base training split that the
  model's subset left out, never test images);
- the ``tinyimagenet_ood`` images are split by a fixed seeded permutation (``--split-seed``) into a SELECTION half
  and a REPORT half; generated far-OOD images (uniform noise, Gaussian noise, constant colours, blurred
  Tiny-ImageNet images, 64 px uniform noise resized by the eval transform; ``--far-n`` of each) come in a
  selection set (``--far-seed-select``, blurred from the selection half) and a report set
  (``--far-seed-report``, blurred from the report half);
- SELECTION = validation images + selection half + selection far-OOD. The default score follows
  ``ccsam_zoo.inference.open_set.DEFAULT_RULE`` (``select_default_score``): the best selection AUROC (0.1-point
  resolution, ties to the first in SCORES order) among the scores that reject >= 99% of the selection
  uniform-noise and constant images at their threshold (if none does, the best selection AUROC, flagged);
- REPORT = CIFAR-10 test images + report half + report far-OOD: AUROC, FPR95, OLTR F-measure, the share of each
  far-OOD kind rejected, and per shot group the share of known test images rejected, with the global threshold and
  with class-conditional thresholds (by predicted class, calibrated on the validation images); the logit scores
  also with a prior correction (logit adjustment: ``logits - log(class prior)``, Menon et al. 2021).

``--write-stats`` stores the fitted statistics and every score's validation threshold in the checkpoint folder
(``open_set_stats.safetensors``, ``ccsam_zoo.json``), with the selected default score and the selection metrics
it was chosen on (``open_set.selection``). ``--store-default REPORT.json`` writes the same ``open_set`` block from
a saved report without running the model (the statistics are left as they are).

A benchmark protocol (it needs the project's data copy and OOD set), so it stays in bench/: the scores, their
statistics and calibration are the package's (``ccsam_zoo.inference``), and so is the rule that rebuilds a
model's training subset (``ccsam_zoo.data.subset_rule``, shared with ``ccsam-zoo evaluate``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

import ccsam_zoo
from ccsam_zoo.data import build_benchmark, shot_groups
from ccsam_zoo.data.subset_rule import recorded_subset_rule
from ccsam_zoo.data.tensor_data import TensorSplit
from ccsam_zoo.hub.card import PLACEHOLDER
from ccsam_zoo.inference import DEFAULT_SCORE, Classifier, class_thresholds_at_tpr, threshold_at_tpr
from ccsam_zoo.inference.open_set import DEFAULT_RULE, JUNK_GUARD, select_default_score
from ccsam_zoo.metrics import load_metric

FAR_KINDS = ("uniform", "gaussian", "constant", "blurred", "uniform_64px")
LOGIT_SCORES = ("msp", "max_logit", "energy")


def far_ood(kind: str, n: int, seed: int, natural: torch.Tensor, size: int = 32) -> torch.Tensor:
    """``n`` generated uint8 images ``[n, 3, size, size]`` of one far-OOD kind (seeded).

    uniform: i.i.d. pixels in 0..255; gaussian: i.i.d. N(128, 64^2) clipped; constant: one random colour per
    image; blurred: Gaussian blur (sigma 3 px, 15 px kernel) of ``n`` seeded picks from ``natural``;
    uniform_64px: uniform noise at twice the size, which the model's eval transform resizes (and so smooths).
    """
    from torchvision.transforms.functional import gaussian_blur

    g = torch.Generator().manual_seed(seed * 100 + FAR_KINDS.index(kind))
    if kind in ("uniform", "uniform_64px"):
        side = size * (2 if kind == "uniform_64px" else 1)
        return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    if kind == "gaussian":
        return (128 + 64 * torch.randn(n, 3, size, size, generator=g)).round().clamp(0, 255).to(torch.uint8)
    if kind == "constant":
        return torch.randint(0, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8).expand(n, 3, size, size).clone()
    pick = natural[torch.randperm(len(natural), generator=g)[:n]].float()
    return gaussian_blur(pick, kernel_size=[15, 15], sigma=[3.0, 3.0]).round().clamp(0, 255).to(torch.uint8)


def _heldout(bench, name: str, source: str, kwargs: dict[str, Any], per_class: int, seed: int = 0) -> TensorSplit:
    """Up to ``per_class`` images per class of the base training split that the model's subset left out.

    For a recipe without a validation split (the paper protocol: ``data.val_per_class = 0``) these images were
    never trained on and are not test images; a class whose every image is in the subset (CIFAR-10-LT's head
    class at IR 100) has none.
    """
    keep = {k: v for k, v in kwargs.items() if k in ("shot_thresholds", "shot_rule")}
    full = build_benchmark(name, source, 1.0, selection="first", **keep)  # every training image, in file order
    if not isinstance(full.train, TensorSplit):
        raise SystemExit("--heldout-per-class needs a small-image benchmark (CIFAR); pass a recipe with a val split")
    used = torch.zeros(len(full.train), dtype=torch.bool)
    used[bench.train_indices] = True
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(bench.num_classes):
        rows = torch.nonzero((full.train.labels == c) & ~used).flatten()
        picks.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    rows = torch.sort(torch.cat(picks)).values
    return TensorSplit(full.train.images[rows], full.train.labels[rows])


def rebuild_benchmark(clf: Classifier, data_source: str | None) -> tuple[Any, str, str, dict[str, Any]]:
    """The model's own benchmark rebuilt from its recipe (the data fingerprint must match).

    Returns ``(benchmark, name, source, kwargs)``: what ``_heldout`` needs to pick images outside the subset.
    """
    recipe = clf.meta.get("recipe") or {}
    d = recipe.get("data") or {}
    source = data_source or d.get("source")
    if isinstance(source, str) and source.startswith(PLACEHOLDER):  # a shipped recipe names no path
        raise SystemExit(f"the model's recipe says data.source={source}: pass its data copy with --data-source")
    name = d.get("name", "cifar10_lt")
    kwargs = recorded_subset_rule(recipe, name)  # the package's rule: `ccsam-zoo evaluate` rebuilds the same rows
    bench = build_benchmark(name, source, **kwargs)
    want = clf.meta.get("data_fingerprint")
    if want and bench.fingerprint != want:
        raise SystemExit(
            f"the rebuilt training data has fingerprint {bench.fingerprint[:12]} but the model was trained on "
            f"{want[:12]}: pass the model's data copy with --data-source"
        )
    return bench, name, source, kwargs


def _rebuild_benchmark(clf: Classifier, data_source: str | None, open_source: str, heldout_per_class: int = 0):
    bench, name, source, kwargs = rebuild_benchmark(clf, data_source)
    if bench.val is None:
        if not heldout_per_class:
            raise SystemExit(
                "the model's recipe has no validation split (data.val_per_class = 0): pass --heldout-per-class N "
                "to calibrate on training images the model never saw"
            )
        bench.val = _heldout(bench, name, source, kwargs, heldout_per_class)
    with_open = build_benchmark(name, source, open_source=open_source, **kwargs)
    return bench, with_open.open


def _auroc_fpr(known: torch.Tensor, unknown: torch.Tensor) -> tuple[float, float]:
    m = load_metric("open_set").compute(
        predictions=[0] * (len(known) + len(unknown)),
        references=[0] * len(known) + [-1] * len(unknown),
        scores=torch.cat([known, unknown]).numpy(),
    )
    return m["auroc"], m["fpr95"]


def _prior_corrected(clf: Classifier, counts: list[int]) -> Classifier | None:
    """The same classifier with ``log(prior)`` subtracted from its logits (a bias shift of the linear head)."""
    head = clf.model.get_classifier()
    if getattr(head, "bias", None) is None:
        return None
    model = copy.deepcopy(clf.model)
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    with torch.no_grad():
        model.get_classifier().bias -= torch.log(prior).float()
    return Classifier(model, class_names=clf.class_names, class_counts=counts, pretrained_cfg=clf.pretrained_cfg)


def run(args: argparse.Namespace) -> dict[str, Any]:
    clf = ccsam_zoo.from_pretrained(args.model)
    bench, open_split = _rebuild_benchmark(clf, args.data_source, args.open_data, args.heldout_per_class)
    counts = clf.class_counts or bench.class_counts
    groups = shot_groups(counts, bench.shot_thresholds, bench.shot_rule)
    recipe_seed = int((clf.meta.get("recipe") or {}).get("seed", 0))
    if args.no_stats:  # the logit and prototype scores only (a smaller folder)
        clf.open_set_stats = None
    elif args.fit or clf.open_set_stats is None:
        clf.fit_open_set(bench.train, batch_size=args.batch_size, seed=recipe_seed)
    stats = clf.open_set_stats
    scores = list(clf.available_scores())

    perm = torch.randperm(len(open_split), generator=torch.Generator().manual_seed(args.split_seed))
    half = len(perm) // 2
    halves = {"select": perm[:half], "report": perm[half:]}
    natural = {k: open_split.images[v] for k, v in halves.items()}
    far_seed = {"select": args.far_seed_select, "report": args.far_seed_report}
    sets: dict[str, torch.Tensor | Any] = {"val": bench.val, "test": bench.test}
    for part in ("select", "report"):
        sets[f"ood_{part}"] = natural[part]
        for kind in FAR_KINDS:
            sets[f"{kind}_{part}"] = far_ood(kind, args.far_n, far_seed[part], natural[part])

    def collect(c: Classifier, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for key, data in sets.items():
            if isinstance(data, torch.Tensor):
                data = (data, torch.full((len(data),), -1, dtype=torch.long))
            out[key] = c._collect(data, args.batch_size, None, names)
        return out

    got = collect(clf, scores)
    closed = load_metric("lt_accuracy").compute(  # the float32 model on the test split (no autocast)
        predictions=got["test"]["predictions"].tolist(),
        references=got["test"]["references"].tolist(),
        class_counts=list(counts),
        many_threshold=bench.shot_thresholds[0],
        few_threshold=bench.shot_thresholds[1],
        rule=bench.shot_rule,
    )
    variants = {s: (s, got, "global") for s in scores}
    for s in scores:
        variants[f"{s} [class-conditional]"] = (s, got, "class")
    corrected = _prior_corrected(clf, counts) if not args.no_prior else None
    if corrected is not None:
        got_pc = collect(corrected, list(LOGIT_SCORES))
        for s in LOGIT_SCORES:
            variants[f"{s} [prior-corrected]"] = (s, got_pc, "global")

    f_metric = load_metric("open_set")
    rows: dict[str, dict[str, Any]] = {}
    for name, (s, g, mode) in variants.items():
        val, test = g["val"][s], g["test"][s]
        thr: float | list[float] = threshold_at_tpr(val, args.tpr)
        if mode == "class":
            thr = class_thresholds_at_tpr(val, g["val"]["predictions"], clf.num_classes, args.tpr, args.min_per_class)

        def rejected(key: str, threshold=thr, g=g, s=s) -> float:
            t = torch.as_tensor(threshold, dtype=torch.float64)
            t = t[g[key]["predictions"]] if t.ndim else t
            return float((g[key][s] < t).double().mean())

        sel_auroc, sel_fpr = _auroc_fpr(val, g["ood_select"][s])
        rep_auroc, rep_fpr = _auroc_fpr(test, g["ood_report"][s])
        m = f_metric.compute(
            predictions=torch.cat([g["test"]["predictions"], g["ood_report"]["predictions"]]).numpy(),
            references=torch.cat([g["test"]["references"], g["ood_report"]["references"]]).numpy(),
            scores=torch.cat([test, g["ood_report"][s]]).numpy(),
            threshold=thr,
            class_groups=groups,
        )
        rows[name] = {
            "score": s,
            "thresholds": mode,
            "select": {"auroc": sel_auroc, "fpr95": sel_fpr, **{k: rejected(f"{k}_select") for k in FAR_KINDS}},
            "report": {
                "auroc": rep_auroc,
                "fpr95": rep_fpr,
                "f_measure": m["f_measure"],
                "known_rejected": m["rejected_known"],
                "ood_rejected": rejected("ood_report"),
                "known_rejected_by_group": m["rejected_known_by_group"],
                **{k: rejected(f"{k}_report") for k in FAR_KINDS},
            },
            "threshold": thr if mode == "global" else None,
        }

    plain = {n: r for n, r in rows.items() if r["thresholds"] == "global" and n in scores}
    default, rule_met = select_default_score(_selection(plain))
    per_class = torch.bincount(bench.val.labels, minlength=bench.num_classes).tolist()
    calibration = f"{len(bench.val)} known validation images" + (
        f" (training images outside the model's subset, at most {args.heldout_per_class} per class: {per_class})"
        if bench.val_indices is None
        else f" (the model's own validation split, images it never trained on: {per_class})"
    )  # fmt: skip
    if args.write_stats:
        _write(clf, stats, {n: plain[n]["threshold"] for n in plain}, default, args.tpr, calibration, _selection(plain))
    if args.plot:
        from ccsam_zoo.inference import plot_score_histograms

        hist = {s: {"known": got["test"][s].numpy(), "open": got["ood_report"][s].numpy()} for s in scores}
        plot_score_histograms(hist, args.plot, {s: plain[s]["threshold"] for s in scores})
    tensors, meta = stats.to_tensors() if stats is not None else ({}, {})
    return {
        "model": str(args.model),
        "data_fingerprint": bench.fingerprint,
        "protocol": {
            "tpr": args.tpr,
            "calibration": calibration,
            "selection": f"{len(bench.val)} validation + {half} tinyimagenet_ood (split seed {args.split_seed}) + "
            f"{args.far_n} of each far-OOD kind (seed {args.far_seed_select})",
            "report": f"{len(bench.test)} CIFAR-10 test + {len(perm) - half} tinyimagenet_ood + {args.far_n} of each "
            f"far-OOD kind (seed {args.far_seed_report})",
            "rule": DEFAULT_RULE,
        },
        "shot_groups": dict(zip(clf.class_names, groups)),
        "test_accuracy": closed,
        "statistics": {"bytes": sum(t.numel() * t.element_size() for t in tensors.values()), **meta},
        "default": default,
        "default_rule_met": rule_met,
        "library_default": DEFAULT_SCORE,
        "default_matches_library": default == DEFAULT_SCORE,
        "msp_report_auroc": rows["msp"]["report"]["auroc"],
        "scores": rows,
    }


def _selection(plain: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The selection-set metrics the default rule reads: AUROC, FPR95 and the guard kinds rejected, per score."""
    return {
        n: {"auroc": r["select"]["auroc"], "fpr95": r["select"]["fpr95"], **{k: r["select"][k] for k in JUNK_GUARD}}
        for n, r in plain.items()
    }


def _write(
    clf: Classifier,
    stats,
    thresholds: dict[str, float],
    default: str,
    tpr: float,
    calibration: str,
    selection: dict[str, dict[str, float]],
    write_stats: bool = True,
) -> None:
    from ccsam_zoo.hub.checkpoint import EXTRAS_NAME, OPEN_SET_STATS_NAME, write_open_set_stats

    folder = Path(clf.meta["path"])
    extras = json.loads((folder / EXTRAS_NAME).read_text(encoding="utf-8"))
    extras["open_set"] = {"score": default, "threshold": thresholds[default], "tpr": tpr, "thresholds": thresholds,
                          "calibration": calibration, "rule": "ccsam_zoo.inference.open_set.DEFAULT_RULE",
                          "selection": selection}  # fmt: skip
    if not write_stats:
        pass
    elif stats is not None:
        extras["open_set_stats"] = write_open_set_stats(folder, stats)
    else:  # --no-stats: the folder keeps no statistics
        (folder / OPEN_SET_STATS_NAME).unlink(missing_ok=True)
        extras.pop("open_set_stats", None)
    (folder / EXTRAS_NAME).write_text(json.dumps(extras, indent=2) + "\n", encoding="utf-8")


def store_default(model: str, report_path: str) -> dict[str, Any]:
    """``--store-default``: the ``open_set`` block of a saved report (rule applied again) into the model's folder."""
    rep = json.loads(Path(report_path).read_text(encoding="utf-8"))
    clf = ccsam_zoo.from_pretrained(model)
    if rep.get("data_fingerprint") != clf.meta.get("data_fingerprint"):
        raise SystemExit(f"{report_path} was made for data {str(rep.get('data_fingerprint'))[:12]}, not this model's")
    scores = set(clf.available_scores())
    plain = {n: r for n, r in rep["scores"].items() if r["thresholds"] == "global" and n in scores}
    if set(plain) != scores:
        raise SystemExit(f"{report_path} lacks scores {sorted(scores - set(plain))} that {model} can compute")
    default, met = select_default_score(_selection(plain))
    tpr, calibration = rep["protocol"]["tpr"], rep["protocol"]["calibration"]
    thresholds = {n: float(r["threshold"]) for n, r in plain.items()}
    stored = clf.open_set or {}
    same = set(stored.get("thresholds") or {}) == set(thresholds) and (
        stored.get("calibration") == calibration
        or (  # older folders name no calibration: the same numbers up to float rounding
            stored.get("calibration") is None
            and all(abs(stored["thresholds"][n] - t) <= 0.01 * max(1.0, abs(t)) for n, t in thresholds.items())
        )
    )
    if same:
        # the same calibration images: keep the stored numbers (a re-run differs in float rounding only)
        thresholds = {n: float(stored["thresholds"][n]) for n in thresholds}
    _write(clf, None, thresholds, default, tpr, calibration, _selection(plain), write_stats=False)
    return {"model": model, "default": default, "default_rule_met": met, "threshold": thresholds[default]}


def markdown(rep: dict[str, Any]) -> str:
    """The RESULTS.md tables of a report: every score, then the imbalance fixes."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]

    groups = list(dict.fromkeys(rep["shot_groups"].values()))
    known_rej = [f"{g} known rej." for g in groups]
    head = ["Score", "Sel. AUROC", "Sel. FPR95", "AUROC", "FPR95", "F", "TinyImageNet rej."]
    head += [f"{k} rej." for k in FAR_KINDS] + known_rej
    rows = []
    for name, r in rep["scores"].items():
        if r["thresholds"] != "global" or "[" in name:
            continue
        sel, rpt = r["select"], r["report"]
        label = f"**{name}** (default)" if name == rep["default"] else name
        row = [label, pct(sel["auroc"]), pct(sel["fpr95"]), pct(rpt["auroc"]), pct(rpt["fpr95"]),
               pct(rpt["f_measure"]), pct(rpt["ood_rejected"])]  # fmt: skip
        row += [pct(rpt[k]) for k in FAR_KINDS]
        rows.append(row + [pct(rpt["known_rejected_by_group"].get(g)) for g in groups])
    out = table(head, rows)
    out += ["", f"Selection far-OOD rejected, {' / '.join(FAR_KINDS)} (%): " + "; ".join(
        f"{n} " + " / ".join(pct(r["select"][k]) for k in FAR_KINDS)
        for n, r in rep["scores"].items() if r["thresholds"] == "global" and "[" not in n
    ), ""]  # fmt: skip
    head = ["Score", "Thresholds / logits", "AUROC", "F", "known rej.", *known_rej, "TinyImageNet rej.",
            "uniform rej.", "constant rej."]  # fmt: skip
    rows = []
    fixes = [*LOGIT_SCORES, rep["default"]]
    for base in dict.fromkeys(fixes):
        for name, r in rep["scores"].items():
            if r["score"] != base:
                continue
            kind = "prior-corrected" if "prior" in name else r["thresholds"]
            rpt = r["report"]
            rows.append([base, kind, pct(rpt["auroc"]), pct(rpt["f_measure"]), pct(rpt["known_rejected"]),
                         *[pct(rpt["known_rejected_by_group"].get(g)) for g in groups], pct(rpt["ood_rejected"]),
                         pct(rpt["uniform"]), pct(rpt["constant"])])  # fmt: skip
    return "\n".join(out + table(head, rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    data = Path(os.environ.get("CCSAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ccsam-cifar10-lt-cpu")
    p.add_argument("--data-source", default=str(data / "cifar10"), help="the model's training data copy")
    p.add_argument("--open-data", default=str(data / "tinyimagenet_ood"))
    p.add_argument("--fit", action="store_true", help="re-fit the statistics on the training split")
    p.add_argument("--no-stats", action="store_true",
                   help="without training statistics: the logit and prototype scores only (with --write-stats: "
                        "the folder's open_set_stats.safetensors is removed)")  # fmt: skip
    p.add_argument("--write-stats", action="store_true", help="store statistics + thresholds in the model folder")
    p.add_argument("--tpr", type=float, default=0.95)
    p.add_argument(
        "--heldout-per-class",
        type=int,
        default=0,
        help="recipes without a val split: calibrate on up to N unused training images per class",
    )
    p.add_argument("--min-per-class", type=int, default=10, help="class-conditional thresholds: images per class")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--far-seed-select", type=int, default=1)
    p.add_argument("--far-seed-report", type=int, default=2)
    p.add_argument("--far-n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--no-prior", action="store_true", help="skip the prior-corrected logit scores")
    p.add_argument("--plot", default=None, help="PNG of the report-half score histograms")
    p.add_argument("--markdown", action="store_true", help="also print the RESULTS.md table (stderr)")
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--store-default", default=None, metavar="REPORT.json",
                   help="write the default score, thresholds and selection metrics of a saved report into the model "
                        "folder's ccsam_zoo.json (no model run)")  # fmt: skip
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.store_default:
        print(json.dumps(store_default(args.model, args.store_default), indent=1))
        return
    torch.manual_seed(0)
    rep = run(args)
    text = json.dumps(rep, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    if args.markdown:
        import sys

        print(markdown(rep), file=sys.stderr)


if __name__ == "__main__":
    main()
