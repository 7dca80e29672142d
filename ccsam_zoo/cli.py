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
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

_SCORES = ("cosine", "euclidean", "reachability", "msp", "hybrid")  # = inference.SCORES (kept import-free)


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit code 2)."""


# ----------------------------------------------------------------------------------------------- helpers
def _device(name: str | None) -> str:
    if name and name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_model(args: argparse.Namespace):
    from ccsam_zoo.hub import from_pretrained

    return from_pretrained(args.model, revision=args.revision, device=_device(args.device))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN / inf to None so the JSON output is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, default=_json_default, allow_nan=False)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


# ---------------------------------------------------------------------------------------------- predict
def _cmd_predict(args: argparse.Namespace) -> int:
    clf = _load_model(args)
    results = clf.predict(
        args.images,
        top_k=args.top_k,
        open_set=args.open_set,
        batch_size=args.batch_size,
        score=args.score,
        threshold=args.threshold,
        skip_bad=args.skip_bad,
    )
    bad = [r for r in results if "error" in r]
    for r in bad:
        print(f"skipped: {r['error']}", file=sys.stderr)
    if args.json:
        print(_dumps(results))
    else:
        header = ["image", "label", "prob"] + (["score", "known"] if args.open_set else []) + [f"top-{args.top_k}"]
        rows = []
        for r in results:
            if "error" in r:
                continue
            top = ", ".join(f"{name} {p:.3f}" for name, p in r["top_k"])
            extra = [f"{r['open_set_score']:.4f}", "yes" if r["known"] else "no"] if args.open_set else []
            rows.append([r["source"], r["label"], f"{r['probability']:.3f}", *extra, top])
        if rows:
            print(_table(rows, header))
        if args.open_set and results and "score" in next((r for r in results if "error" not in r), {}):
            first = next(r for r in results if "error" not in r)
            print(f"\nopen-set score: {first['score']} (higher = more likely known); 'unknown' = rejected")
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ccsam_zoo.data import build_benchmark
    from ccsam_zoo.inference import evaluate_model

    name, source = _benchmark_spec(args.data, args.data_source)
    scores = tuple(s.strip() for s in args.scores.split(",") if s.strip()) if args.scores else None
    bad = [s for s in scores or () if s not in _SCORES]
    if bad:
        raise UsageError(f"unknown --scores {bad}; choose from {','.join(_SCORES)}")
    clf = _load_model(args)
    meta = clf.meta or {}
    thresholds = args.shot_thresholds or meta.get("shot_thresholds") or (100, 20)
    rule = args.shot_rule or meta.get("shot_rule") or "paper"
    size = int(clf.data_config["input_size"][-1])
    kwargs: dict[str, Any] = dict(imbalance_ratio=args.imbalance_ratio, image_size=size, open_source=args.open_data)
    if args.val_per_class:
        kwargs["val_per_class"] = args.val_per_class
    bench = build_benchmark(name, source, **kwargs)
    if bench.num_classes != clf.num_classes:
        raise ValueError(
            f"the model has {clf.num_classes} classes but {name} has {bench.num_classes}: wrong --data for this model"
        )
    if clf.class_names != bench.class_names:
        logging.getLogger(__name__).warning("class names differ between the model and %s; using the model's", name)
    counts = clf.class_counts or bench.class_counts

    def data_of(split: str) -> Any:
        ds = bench.split(split)
        if getattr(ds, "images", None) is not None:
            return ds  # uint8 fast path: normalised with the checkpoint's own data config
        return bench.loader(split, args.batch_size, sampler="sequential", num_workers=args.num_workers)

    if scores is not None and clf.prototypes is None:
        missing = [s for s in scores if s != "msp"]
        if missing:
            raise ValueError(f"scores {missing} need class prototypes and this checkpoint has none; use --scores msp")
    result = evaluate_model(
        clf,
        data_of(args.split),
        data_of("open") if args.open_data else None,
        batch_size=args.batch_size,
        scores=scores,
        class_counts=counts,
        many_threshold=int(thresholds[0]),
        few_threshold=int(thresholds[1]),
        rule=rule,
    )
    report = {
        "model": str(args.model),
        "data": name,
        "data_source": source,
        "split": args.split,
        "open_data": args.open_data,
        "data_fingerprint": bench.fingerprint,
        "shot_thresholds": [int(thresholds[0]), int(thresholds[1])],
        "shot_rule": rule,
        "class_names": clf.class_names,
        "class_counts": counts,
        **result,
    }
    if args.output:
        out = Path(args.output).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_dumps(report) + "\n", encoding="utf-8")
    if args.json:
        print(_dumps(report))
        return 0
    print(f"model: {args.model}   data: {name} ({args.split}, {result['num_samples']} images)")
    print(
        _table(
            [[_pct(result[k]) for k in ("top1", "many", "medium", "few")]], ["top-1 %", "many %", "medium %", "few %"]
        )
    )
    from ccsam_zoo.metrics import shot_groups

    groups = shot_groups(counts, int(thresholds[0]), int(thresholds[1]), rule) if counts else ["-"] * clf.num_classes
    rows = [
        [c, clf.class_names[c], counts[c] if counts else "-", groups[c], _pct(a)]
        for c, a in enumerate(result["per_class"])
    ]
    print("\nper class:")
    print(_table(rows, ["#", "class", "train n", "group", "acc %"]))
    if "open_set" in result:
        print(f"\nopen set: {args.open_data} ({result['num_open']} images); scores: higher = more likely known")
        rows = [
            [
                s,
                _pct(m["auroc"]),
                _pct(m["fpr95"]),
                _pct(m["f_measure"]),
                f"{m['threshold']:.4g}",
                m["threshold_source"],
            ]
            for s, m in result["open_set"].items()
        ]
        print(_table(rows, ["score", "AUROC %", "FPR95 %", "F %", "threshold", "threshold from"]))
    if args.output:
        print(f"\nwrote {args.output}")
    return 0


# ------------------------------------------------------------------------------------------ list / card
def _cmd_list(args: argparse.Namespace) -> int:
    from ccsam_zoo.hub import list_pretrained

    rows = [r._asdict() if hasattr(r, "_asdict") else dict(r) for r in list_pretrained()]
    if args.json:
        print(_dumps(rows))
        return 0
    print(
        _table(
            [[r["alias"], r["repo_id"] or "-", r["revision"] or "-", r["dataset"] or "-",
              "yes" if r["available_locally"] else "no"] for r in rows],
            ["alias", "repo", "revision", "dataset", "local"],
        )
    )  # fmt: skip
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from ccsam_zoo.hub import render_model_card

    run = Path(args.run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such folder (pass a run folder or a checkpoint folder)")
    candidates = [run / args.stage] if args.stage else [run, run / "stage2", run / "stage1"]
    folder = next((c for c in candidates if (c / "config.json").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"{run}: no checkpoint (config.json) in {', '.join(str(c) for c in candidates)}")
    card = render_model_card(folder)
    if args.output:
        Path(args.output).expanduser().write_text(card, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(card)
    return 0


def _cmd_sharpness(args: argparse.Namespace) -> int:
    from ccsam_zoo.diagnostics import sharpness

    return int(sharpness.run(args) or 0)


# ----------------------------------------------------------------------------------------------- parser
def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, Hub repo id (ORG/NAME) or alias (ccsam-zoo list)")
    p.add_argument("--revision", default=None, help="Hub branch / tag / commit ('stage1' for stage 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return n


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
    p.add_argument("--score", choices=_SCORES, default=None, help="open-set score (default: the calibrated one)")
    p.add_argument("--threshold", type=float, default=None, help="open-set threshold (default: the calibrated one)")
    p.add_argument("--skip-bad", action="store_true", help="report unreadable images and continue")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=_cmd_predict, batch_size=64)

    p = sub.add_parser("evaluate", parents=[common], help="accuracy (+ open-set metrics) on a benchmark")
    _model_args(p)
    p.add_argument("--data", required=True, help="benchmark name (cifar10_lt, ...) or a parquet / image folder path")
    p.add_argument("--data-source", "--source", dest="data_source", default=None,
                   help="where the benchmark's files are (build_benchmark source=)")  # fmt: skip
    p.add_argument("--imbalance-ratio", type=float, default=None, help="training imbalance of cifar*_lt (default 100)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--val-per-class", type=int, default=0, help="carve a validation split (with --split val)")
    p.add_argument("--open-data", default=None, help="open-set images: parquet file / folder or image folder")
    p.add_argument(
        "--scores", default=None, help=f"comma-separated open-set scores (default: all of {','.join(_SCORES)})"
    )
    p.add_argument("--shot-thresholds", type=int, nargs=2, default=None, metavar=("MANY", "FEW"),
                   help="default: the checkpoint's (100 20)")  # fmt: skip
    p.add_argument("--shot-rule", choices=["paper", "authors"], default=None, help="default: the checkpoint's")
    p.add_argument("--num-workers", type=int, default=0, help="loader workers for large images")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--output", default=None, help="also write the JSON report to this file")
    p.set_defaults(func=_cmd_evaluate, batch_size=256)

    p = sub.add_parser("list", parents=[common], help="pretrained aliases")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("card", parents=[common], help="render the model card of a run / checkpoint folder")
    p.add_argument("run_dir", help="run folder (stage2/ preferred, else stage1/) or checkpoint folder")
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
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
