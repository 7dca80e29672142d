"""The ``ccsam-zoo`` command: predict, evaluate, list, card, sharpness, train.

Exit codes: 0 success, 1 runtime failure (bad model, data or images), 2 usage error. Errors are one line on
stderr (``--debug`` shows the traceback). Tables by default, ``--json`` for machines.

    ccsam-zoo predict --model ccsam-cifar10-lt cat.png dog.jpg --top-k 3
    ccsam-zoo predict --model ./run/stage2 photos/ --open-set --json
    ccsam-zoo evaluate --model ./run/stage2 --data cifar10_lt --data-source /data/cifar10 \\
        --open-data /data/tinyimagenet_ood --json --output eval.json
    ccsam-zoo list
    ccsam-zoo card ./run
    ccsam-zoo sharpness --model ./run/stage2 --data cifar10_lt
    ccsam-zoo train --recipe quickstart --output-dir runs/quickstart
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from .jsonio import dumps

__all__ = ["main"]

_SCORES = (  # = inference.SCORES (kept import-free)
    "msp", "max_logit", "energy", "mahalanobis", "knn", "cosine", "euclidean", "reachability", "hybrid",
    "layer_stats", "msp+layer_stats", "max_logit+layer_stats", "energy+layer_stats",
)  # fmt: skip


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit code 2)."""


# Errors about the user's inputs (model, data, images, files): their message is the whole story. Anything
# else is reported as unexpected (with how to see the traceback).
_USER_ERRORS = (ValueError, OSError, ImportError, ArithmeticError)


# ----------------------------------------------------------------------------------------------- helpers
def _device(name: str | None) -> str:
    """``--device``: auto (cuda when available, else cpu) or a device this machine has (a UsageError otherwise)."""
    import torch

    if not name or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: unsupported device type {dev.type!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def _load_model(args: argparse.Namespace):
    from ccsam_zoo.hub import from_pretrained

    return from_pretrained(args.model, revision=args.revision, device=_device(args.device))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _check_output(path: str | None, flag: str = "--output") -> None:
    """Refuse an ``--output`` that cannot be written before any work (a folder, a parent that is a file, ...)."""
    if not path:
        return
    out = Path(path).expanduser()
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    if out.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not parent.is_dir():
        raise UsageError(f"cannot write {flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {flag} {path}: no write permission in {parent}")


def _write_output(path: str, text: str) -> None:
    """``--output``: create the parent folder; an unwritable path is one clear error."""
    out = Path(path).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OSError(f"cannot write --output {path}: {err.strerror or err}") from None


def _pct(v: float | None) -> str:
    """A value already in % (``_to_percent``), two decimals."""
    return "-" if v is None else f"{v:.2f}"


_RATE_KEYS = ("auroc", "fpr95", "f_measure", "precision", "recall", "rejected", "rejected_known", "rejected_open")


def _to_percent(result: dict[str, Any]) -> None:
    """``evaluate_model``'s fractions to % in place (accuracies, per class, every open-set rate)."""

    def pct(v: Any) -> Any:
        return None if v is None else 100.0 * float(v)

    for k in ("top1", "many", "medium", "few"):
        if k in result:
            result[k] = pct(result[k])
    if result.get("per_class") is not None:
        result["per_class"] = [pct(v) for v in result["per_class"]]
    for m in (result.get("open_set") or {}).values():
        for k in _RATE_KEYS:
            if k in m:
                m[k] = pct(m[k])
        if m.get("rejected_known_by_group") is not None:
            m["rejected_known_by_group"] = {g: pct(v) for g, v in m["rejected_known_by_group"].items()}


# ---------------------------------------------------------------------------------------------- predict
def _check_open_set_flags(args: argparse.Namespace) -> None:
    """``--score`` / ``--threshold`` only act with ``--open-set``: alone they are a usage error, not ignored."""
    given = [flag for flag, key in (("--score", "score"), ("--threshold", "threshold"))
             if getattr(args, key, None) is not None]  # fmt: skip
    if given and not getattr(args, "open_set", False):
        flags, verb = " and ".join(given), "needs" if len(given) == 1 else "need"
        raise UsageError(f"{flags} {verb} --open-set (add --open-set, or drop {flags})")


def _cmd_predict(args: argparse.Namespace) -> int:
    from ccsam_zoo.inference import ImageInputError

    _check_open_set_flags(args)
    clf = _load_model(args)
    try:  # the Python API does the open-set work (score, stored threshold, errors) exactly as clf.predict
        results = clf.predict(
            args.images,
            top_k=args.top_k,
            open_set=args.open_set,
            batch_size=args.batch_size,
            score=args.score,
            threshold=args.threshold,
            skip_bad=args.skip_bad,
        )
    except ImageInputError as err:
        if not err.others:
            raise
        n = err.others
        raise ImageInputError(
            f"{err.reason}; the other {n} image{'s were' if n > 1 else ' was'} not classified: add --skip-bad to "
            "skip unreadable images and classify the rest",
            err.source,
        ) from None
    bad = [r for r in results if "error" in r]
    for r in bad:
        print(f"skipped: {r['error']}", file=sys.stderr)
    if args.json:
        print(dumps(results))
    else:
        header = ["image", "label", "prob"] + (["score", "known"] if args.open_set else []) + [f"top-{args.top_k}"]
        rows = []
        for r in results:
            if "error" in r:
                continue
            top = ", ".join(f"{name} {p:.3f}" for name, p in r["top_k"])
            extra = [f"{r['score']:.4f}", "yes" if r["known"] else "no"] if args.open_set else []
            if r.get("nearest_class") is not None:  # rejected: say what it was closest to
                label, prob = f"{r['label']} (nearest: {r['nearest_class']}, {r['nearest_probability']:.2f})", "-"
            else:
                label, prob = r["label"], f"{r['probability']:.3f}"
            rows.append([r["source"], label, prob, *extra, top])
        if rows:
            print(_table(rows, header))
        first = next((r for r in results if "error" not in r), {})
        if args.open_set and "score_type" in first:
            thresholds = {r["threshold"] for r in results if "threshold" in r}
            thr = f"{first['threshold']:.4g}" if len(thresholds) == 1 else "per predicted class"
            print(
                f"\nopen-set score: {first['score_type']} ({first['score_source']}), threshold {thr} "
                f"({first['threshold_source']})\nhigher = more likely known; 'unknown' = rejected (score below the "
                "threshold)"
            )
    return 1 if len(bad) == len(results) else 0


# --------------------------------------------------------------------------------------------- evaluate
def _benchmark_spec(data: str, source: str | None) -> tuple[str, Any]:
    from ccsam_zoo.data import BENCHMARKS

    if data in BENCHMARKS:
        return data, source
    path = Path(data).expanduser()
    if not path.exists():
        raise UsageError(f"--data {data!r} is neither a benchmark ({', '.join(BENCHMARKS)}) nor an existing path")
    if source is not None:
        raise UsageError("--data-source goes with a benchmark name; --data is already a path")
    if path.suffix == ".parquet" or any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
        return "parquet", str(path)
    return "imagefolder", str(path)


# Classes of the benchmarks whose copies share one layout (train/test parquet): a copy of the other one under
# this name is caught by its class count. (OLTR benchmarks are named by their split files' prefix.)
_BENCHMARK_CLASSES = {"cifar10_lt": 10, "cifar100_lt": 100, "embedded": 10}
_OPEN_SPLIT_BENCHMARKS = ("imagenet_lt", "places_lt", "tinyimagenet_lt")  # OLTR split files with an open split
_PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_PLOT_NAME = "open_set_histograms.png"


def _plot_path(args: argparse.Namespace) -> Path | None:
    """``--plot``: 'none' for no plot, a file (``.png`` added when it has no suffix) or a folder
    (``open_set_histograms.png`` in it); without it beside ``--output``, else ./open_set_histograms.png."""
    plot = args.plot
    if plot and plot.lower() == "none":
        return None
    if not plot:
        return Path(args.output).expanduser().with_suffix(".png") if args.output else Path(_PLOT_NAME)
    path = Path(plot).expanduser()
    if path.is_dir() or plot.endswith(("/", os.sep)):
        return path / _PLOT_NAME
    if not path.suffix:
        return path.with_suffix(".png")
    if path.suffix.lower() not in _PLOT_SUFFIXES:
        raise UsageError(f"--plot {plot}: unknown image type {path.suffix!r}; give a {', '.join(_PLOT_SUFFIXES)} file "
                         "or a folder")  # fmt: skip
    return path


def _check_data_matches(name: str, source: Any, bench: Any, clf: Any) -> None:
    """The data must be what ``--data`` names and what the model was trained on: a class count or class names
    that disagree are an error that says which side differs (never results under a wrong label)."""
    want = _BENCHMARK_CLASSES.get(name)
    where = f"--data-source {source}" if source else "the default source"
    if want is not None and bench.num_classes != want:
        raise ValueError(
            f"--data {name} has {want} classes but {where} holds {bench.num_classes}: pass a copy of {name}'s data "
            "with --data-source, or name the benchmark that data belongs to with --data"
        )
    if bench.num_classes != clf.num_classes:
        raise ValueError(
            f"the model has {clf.num_classes} classes but {name} ({where}) has {bench.num_classes}: wrong --data for "
            "this model; pass the benchmark it was trained on"
        )
    ours, theirs = [str(c) for c in clf.class_names], [str(c) for c in bench.class_names]
    if theirs == [str(i) for i in range(len(theirs))] or ours == [str(i) for i in range(len(ours))]:
        return  # one side has no class names (numbered labels): nothing to compare
    if ours != theirs:
        c = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        order = "in another order" if sorted(ours) == sorted(theirs) else "different"
        raise ValueError(
            f"class names of the model and of {name} ({where}) are {order}: class {c} is {ours[c]!r} in the model and "
            f"{theirs[c]!r} in the data; pass the data the model was trained on"
        )


def _check_val_per_class(bench: Any, requested: int) -> None:
    """``--val-per-class N`` asks for N images per class; say the most there is instead of using fewer."""
    import torch

    have = torch.bincount(bench.val.labels, minlength=bench.num_classes).tolist()
    if min(have) < requested:
        c = min(range(len(have)), key=have.__getitem__)
        raise UsageError(
            f"--val-per-class {requested}: class {c} ({bench.class_names[c]!r}) has only {have[c]} images to hold "
            f"out (one training image per class stays); use --val-per-class {min(have)} or less"
        )


def _val_rule(args: argparse.Namespace, recorded: dict[str, Any]) -> str:
    """Which images a ``--split val`` holds: ``--val-rule``, else the rule of the model's own validation split, else
    (a model that trained on its whole long-tailed subset) ``left_out``: only images its subset left out, never
    images it trained on; ``fill`` when the model records no subset rule (nothing is known of what it saw)."""
    if args.val_rule:
        return args.val_rule
    if recorded.get("val_per_class"):
        return recorded.get("val_rule") or "fill"
    return "left_out" if recorded else "fill"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ccsam_zoo.data import build_benchmark
    from ccsam_zoo.data.subset_rule import recorded_subset_rule
    from ccsam_zoo.inference import evaluate_model

    _check_output(args.output)
    if args.open_data or args.plot:
        plot_path = _plot_path(args)
        if plot_path is not None:
            _check_output(str(plot_path), "--plot")
    name, source = _benchmark_spec(args.data, args.data_source)
    scores = tuple(s.strip() for s in args.scores.split(",") if s.strip()) if args.scores else None
    bad = [s for s in scores or () if s not in _SCORES]
    if bad:
        raise UsageError(f"unknown --scores {bad}; choose from {','.join(_SCORES)}")
    open_flags = [f for f, v in (("--plot", args.plot), ("--scores", scores), ("--score", getattr(args, "score", None)),
                                 ("--threshold", getattr(args, "threshold", None))) if v is not None]  # fmt: skip
    if open_flags and not args.open_data and name not in _OPEN_SPLIT_BENCHMARKS:  # before any loading
        raise UsageError(f"{open_flags[0]} is about open-set scores: it needs --open-data (open-set images)")
    clf = _load_model(args)
    meta = clf.meta or {}
    thresholds = args.shot_thresholds or meta.get("shot_thresholds") or (100, 20)
    rule = args.shot_rule or meta.get("shot_rule") or "paper"
    size = int(clf.data_config["input_size"][-1])
    # the subset rule the model's recipe recorded (IR, selection + seed, ...): the card's fingerprint for this copy
    recorded = {k: v for k, v in recorded_subset_rule(meta.get("recipe"), name).items()
                if k not in ("shot_thresholds", "shot_rule")}  # fmt: skip
    kwargs: dict[str, Any] = {**recorded, "image_size": size}
    if args.imbalance_ratio is not None:  # 100, not 100.0: the fingerprint hashes the value as a recipe writes it
        ir = args.imbalance_ratio
        kwargs["imbalance_ratio"] = int(ir) if float(ir).is_integer() else ir
    if args.val_per_class:
        kwargs["val_per_class"] = args.val_per_class
    kwargs["val_rule"] = _val_rule(args, recorded)
    if not args.quiet:
        print(f"loading {name} {source or ''}".rstrip() + (f" and {args.open_data}" if args.open_data else "")
              + " (decoding the images once: they are cached for the next run)", file=sys.stderr)  # fmt: skip
    bench = build_benchmark(name, source, **kwargs)
    _check_data_matches(name, source, bench, clf)
    if args.split == "val" and getattr(bench, "val", None) is None:
        raise UsageError(f"{name} has no val split: add --val-per-class N (images per class held out of train)")
    if args.val_per_class and getattr(bench, "val", None) is not None and kwargs["val_rule"] == "fill":
        _check_val_per_class(bench, args.val_per_class)
    if args.open_data:  # built apart: the closed-set fingerprint stays the one the card shows
        bench.open = build_benchmark(name, source, **kwargs, open_source=args.open_data).open
    if bench.open is None and open_flags:  # open-set options without open-set images: never silently ignored
        raise UsageError(f"{open_flags[0]} is about open-set scores: it needs --open-data (open-set images)")
    counts = clf.class_counts or bench.class_counts

    def data_of(split: str) -> Any:
        ds = bench.split(split)
        if getattr(ds, "images", None) is not None:
            return ds  # uint8 fast path: normalised with the checkpoint's own data config
        return bench.loader(split, args.batch_size, sampler="sequential", num_workers=args.num_workers)

    for s in scores or ():
        problem = clf._missing(s)
        if problem is not None:
            raise ValueError(f"--scores {s}: {problem}")
    # an OLTR benchmark's own open split (ImageNet_LT_open.txt, Places_LT_open.txt) when present (OLTR Table 4)
    has_open = bench.open is not None
    if not args.quiet:
        what = f"{len(bench.split(args.split))} {args.split} images"
        what += f" + {len(bench.open)} open-set images" if has_open else ""
        print(f"evaluating {args.model}: {what}", file=sys.stderr)
    plot = _plot_path(args) if has_open else None
    result = evaluate_model(
        clf,
        data_of(args.split),
        data_of("open") if has_open else None,
        batch_size=args.batch_size,
        scores=scores,
        class_counts=counts,
        many_threshold=int(thresholds[0]),
        few_threshold=int(thresholds[1]),
        rule=rule,
        return_scores=plot is not None,
        progress=not args.quiet,
    )
    raw_scores = result.pop("scores", None)
    if raw_scores is not None and plot is not None:
        from ccsam_zoo.inference import plot_score_histograms

        plot.parent.mkdir(parents=True, exist_ok=True)
        thr = {s: m["threshold"] for s, m in result["open_set"].items()}
        plot_score_histograms(raw_scores, plot, thr, default=result["default_score"])
        plot = str(plot)
    _to_percent(result)
    report = {
        "model": str(args.model),
        "data": name,
        "data_source": source,
        "split": args.split,
        "open_data": args.open_data or ("the benchmark's open split" if has_open else None),
        "open_set_plot": plot if raw_scores is not None else None,
        "units": "% (accuracies and open-set rates; thresholds and scores in the score's own units)",
        "data_fingerprint": bench.fingerprint,
        "subset_rule": {**{k: v for k, v in kwargs.items() if k != "image_size"},
                        "from": "the model's recipe" if recorded else "build_benchmark's defaults"},  # fmt: skip
        "shot_thresholds": [int(thresholds[0]), int(thresholds[1])],
        "shot_rule": rule,
        "class_names": clf.class_names,
        "class_counts": counts,
        **result,
    }
    if args.output:
        _write_output(args.output, dumps(report) + "\n")
    if args.json:
        print(dumps(report))
        if report["open_set_plot"] and not args.quiet:
            print(f"score histograms: {report['open_set_plot']}", file=sys.stderr)
        return 0
    print(f"model: {args.model}   data: {name} ({args.split}, {result['num_samples']} images)   "
          f"fingerprint: {bench.fingerprint[:12]}" + (" (the model's subset rule)" if recorded else ""))  # fmt: skip
    print(
        _table(
            [[_pct(result[k]) for k in ("top1", "many", "medium", "few")]], ["top-1 %", "many %", "medium %", "few %"]
        )
    )
    from ccsam_zoo.data.counts import shot_groups

    groups = shot_groups(counts, (int(thresholds[0]), int(thresholds[1])), rule) if counts else ["-"] * clf.num_classes
    rows = [
        [c, clf.class_names[c], counts[c] if counts else "-", groups[c], _pct(a)]
        for c, a in enumerate(result["per_class"])
    ]
    print("\nper class:")
    print(_table(rows, ["#", "class", "train n", "group", "acc %"]))
    if "open_set" in result:
        print(
            f"\nopen set: {report['open_data']} ({result['num_open']} images); scores: higher = more likely known; "
            f"default: {result['default_score']} ({result['default_score_source']})"
        )
        group_names = [g for g in ("many", "medium", "few") if g in set(groups)]
        rows = [
            [
                s + (" (default)" if s == result["default_score"] else ""),
                _pct(m["auroc"]),
                _pct(m["fpr95"]),
                _pct(m["f_measure"]),
                *[_pct((m["rejected_known_by_group"] or {}).get(g)) for g in group_names],
                _pct(m["rejected_open"]),
                f"{m['threshold']:.4g}",
                m["threshold_source"],
            ]
            for s, m in result["open_set"].items()
        ]
        header = ["score", "AUROC %", "FPR95 %", "F %", *[f"{g} rej. %" for g in group_names], "open rej. %"]
        print(_table(rows, [*header, "threshold", "threshold from"]))
        print("(rej. %: known test images of each shot group rejected, and open images rejected, at the threshold)")
        if report["open_set_plot"]:
            print(f"score histograms: {report['open_set_plot']}")
    if args.output:
        print(f"\nwrote {args.output}")
    return 0


# ------------------------------------------------------------------------------------------ list / card
_STATUS_HELP = """\
shipped: inside the package (works offline)   cached: in the Hugging Face cache   local: a registered folder
not cached: a registered Hub repo, downloaded on first use   missing: a registered folder that is gone
not shipped: the package holds stage 2 of this model only (its stage 1 is not included)
not published: nothing uploaded under this name yet; train it: ccsam-zoo train --recipe RECIPE
not installed: an optional asset too large for the package ($CCSAM_ASSETS/ALIAS, default ~/.cache/ccsam_zoo/assets)"""
# every status list_pretrained can give (tests/test_cli_edges.py checks the legend explains each)
STATUSES = ("shipped", "cached", "local", "not cached", "missing", "not shipped", "not published", "not installed")


def _cmd_list(args: argparse.Namespace) -> int:
    from ccsam_zoo.hub import list_pretrained

    rows = [r._asdict() if hasattr(r, "_asdict") else dict(r) for r in list_pretrained()]
    rows.sort(key=lambda r: not r["available_locally"])  # what works now first (stable: registry order)
    if args.json:
        print(dumps(rows))
        return 0
    print(
        _table(
            [[r["alias"], r.get("status") or ("yes" if r["available_locally"] else "no"),
              r.get("architecture") or "-", r["dataset"] or "-", r.get("recipe") or "-", r.get("method") or "-",
              f"{r['repo_id']}@{r['revision']}" if r["repo_id"] else "-"] for r in rows],
            ["alias", "status", "architecture", "dataset", "recipe", "method", "Hub repo"],
        )
    )  # fmt: skip
    nearest: dict[str, list[str]] = {}
    for r in rows:
        if r.get("nearest") and ":" not in r["alias"]:
            nearest.setdefault(r["nearest"], []).append(r["alias"])
    for target, aliases in nearest.items():
        print(f"\n{', '.join(aliases)}: nothing trained yet; the nearest trained model of that code path is {target}")
    print(f"\n{_STATUS_HELP}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from ccsam_zoo.hub import render_model_card

    run = Path(args.run_dir).expanduser()
    repo_id = revision = None
    if run.exists():
        if not run.is_dir():
            raise FileNotFoundError(
                f"{run} is a file; pass a run folder, a checkpoint folder, an alias (ccsam-zoo list) or ORG/NAME"
            )
        candidates = [run / args.stage] if args.stage else [run, run / "stage2", run / "stage1"]
        folder = next((c for c in candidates if (c / "config.json").is_file()), None)
        if folder is None:
            raise FileNotFoundError(f"{run}: no checkpoint (config.json) in {', '.join(str(c) for c in candidates)}")
    else:  # an alias or a Hub repo id, resolved like --model of predict
        from ccsam_zoo.hub.registry import resolve_checkpoint

        folder, origin = resolve_checkpoint(args.run_dir, "stage1" if args.stage == "stage1" else None)
        repo_id, revision = origin.get("repo_id"), origin.get("revision")
    _check_output(args.output)
    card = render_model_card(folder, repo_id=repo_id, revision=revision)
    if args.output:
        _write_output(args.output, card)
        print(f"wrote {args.output}")
    else:
        print(card)
    return 0


def _cmd_sharpness(args: argparse.Namespace) -> int:
    from ccsam_zoo.diagnostics import sharpness

    if getattr(args, "device", None):
        _device(args.device)  # an unknown or missing device: a usage error before any work

    return int(sharpness.run(args) or 0)


# ----------------------------------------------------------------------------------------------- parser
def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, Hub repo id (ORG/NAME) or alias (ccsam-zoo list)")
    p.add_argument("--revision", default=None, help="Hub branch / tag / commit ('stage1' for stage 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass")


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return n


def _non_negative(v: str) -> int:
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return n


def _finite(v: str) -> float:
    """A finite float (``nan`` / ``inf`` would reject or accept every image)."""
    x = float(v)
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {v!r}")
    return x


def build_parser(with_sharpness: bool = True) -> argparse.ArgumentParser:
    """The argparse parser of ``ccsam-zoo``.

    The sharpness options come from ``diagnostics.sharpness.add_arguments``, imported only when
    ``with_sharpness`` (``main`` passes it when the command line names the sharpness command).
    """
    from ccsam_zoo import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="ccsam-zoo", description="CC-SAM model zoo: long-tailed image classifiers.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"ccsam_zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("predict", parents=[common], help="classify images", description="Classify images.")
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--top-k", type=_positive, default=5)
    p.add_argument("--open-set", action="store_true", help="reject unknown images (label 'unknown')")
    p.add_argument(
        "--score", choices=_SCORES, default=None, help="open-set score (default: the checkpoint's, by the zoo's rule)"
    )
    p.add_argument(
        "--threshold", type=_finite, default=None, help="open-set threshold (default: the score's calibrated one)"
    )
    p.add_argument("--skip-bad", action="store_true", help="report unreadable images and continue")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=_cmd_predict, batch_size=64)

    p = sub.add_parser("evaluate", parents=[common], help="accuracy (+ open-set metrics) on a benchmark")
    _model_args(p)
    p.add_argument("--data", required=True, help="benchmark name (cifar10_lt, ...) or a parquet / image folder path")
    p.add_argument("--data-source", "--source", dest="data_source", default=None,
                   help="where the benchmark's files are (build_benchmark source=)")  # fmt: skip
    p.add_argument(
        "--imbalance-ratio", type=_finite, default=None, help="training imbalance of cifar*_lt (default 100)"
    )
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--val-per-class", type=_non_negative, default=0, help="carve a validation split (with --split val)")
    p.add_argument(
        "--val-rule",
        default=None,
        choices=["fill", "left_out"],
        help="left_out: only training images the long-tailed subset leaves out (a class may get fewer or none); "
        "fill: then moves images out of the subset. Default: the model's own validation rule, else left_out for a "
        "model with a recorded subset (never images it trained on), else fill",
    )
    p.add_argument(
        "--open-data",
        default=None,
        help="open-set images: parquet file / folder or image folder (OLTR benchmarks use their own open split "
        "when present)",
    )
    p.add_argument("--plot", default=None,
                   help="PNG of the open-set score histograms (default: beside --output as .png, else "
                        "./open_set_histograms.png; 'none': no plot)")  # fmt: skip
    p.add_argument(
        "--scores", default=None, help=f"comma-separated open-set scores (default: all of {','.join(_SCORES)})"
    )
    p.add_argument("--shot-thresholds", type=_non_negative, nargs=2, default=None, metavar=("MANY", "FEW"),
                   help="default: the checkpoint's (100 20)")  # fmt: skip
    p.add_argument("--shot-rule", choices=["paper", "authors"], default=None, help="default: the checkpoint's")
    p.add_argument("--num-workers", type=_non_negative, default=0, help="loader workers for large images")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--output", default=None, help="also write the JSON report to this file")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_evaluate, batch_size=256)

    p = sub.add_parser("list", parents=[common], help="pretrained aliases")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("card", parents=[common], help="render the model card of a run / checkpoint folder or alias")
    p.add_argument(
        "run_dir", metavar="MODEL",
        help="run folder (stage2/ preferred, else stage1/), checkpoint folder, alias (ccsam-zoo list) or ORG/NAME",
    )  # fmt: skip
    p.add_argument("--stage", choices=["stage1", "stage2"], default=None)
    p.add_argument("--output", default=None, help="write the card here instead of stdout")
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser("train", add_help=False, help="train a recipe in two stages (ccsam-zoo train --help)")
    p.add_argument("args", nargs=argparse.REMAINDER)  # main() hands `train ...` to ccsam_zoo.training.cli

    p = sub.add_parser("sharpness", parents=[common], help="per-group sharpness / loss landscape")
    p.set_defaults(func=_cmd_sharpness)
    if with_sharpness:
        try:
            from ccsam_zoo.diagnostics import sharpness
        except ImportError as e:  # keep the other commands working
            p.set_defaults(_unavailable=f"the sharpness command is unavailable: {e}")
        else:
            sharpness.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ccsam-zoo``; returns the exit code."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own command line: recipes/train.py's, also `python -m ccsam_zoo.train`
        from ccsam_zoo.training.cli import main as train_main

        return train_main(argv[1:], prog="ccsam-zoo train")
    parser = build_parser(with_sharpness="sharpness" in argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version: 0; usage errors: 2
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if getattr(args, "_unavailable", None):
        print(f"error: {args._unavailable}", file=sys.stderr)
        return 1
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        if debug:
            raise
        print(f"ccsam-zoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (one clear line, no traceback, unless --debug)
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, _USER_ERRORS):  # not a user error we know: likely a bug, say how to see more
            msg = f"{type(e).__name__}: {msg} (unexpected: rerun with --debug for the traceback and report it)"
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
