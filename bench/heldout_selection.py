"""Choose among trained models without the test split: held-out training images + a per-class sanity floor.

    python bench/heldout_selection.py RUN/stage2 [RUN/stage2 ...] [--heldout-per-class 1000] [--floor 0.5]

For a recipe without a validation split (the paper protocol: every image of the long-tailed subset trains), the
only images a model never saw that are not test images are the base training split's images that the subset
left out (``open_set_report._heldout``). At IR 100 the head class has none (all 5,000 of its images are in the
subset), so the held-out accuracy is the mean over the classes that have held-out images, and a model that
fails a class is caught on that class's own training images instead: a model below ``--floor`` on some class of
its training subset is not eligible. Among the eligible models the highest held-out mean is ``selected``.
Prints JSON: per model the held-out and training per-class accuracy (%), the held-out mean and eligibility.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import open_set_report  # noqa: E402
import torch  # noqa: E402

import ccsam_zoo  # noqa: E402
from ccsam_zoo.inference import evaluate_model  # noqa: E402


def _percent(per_class: list[float | None]) -> list[float | None]:
    return [None if a is None else round(100 * a, 2) for a in per_class]


def select(models: list[str], data_source: str | None, per_class: int = 1000, floor: float = 0.5) -> dict[str, Any]:
    """Held-out and training per-class accuracy of each model, and the selected one (see the module docstring)."""
    rows: dict[str, Any] = {}
    built: dict[str, Any] = {}  # data fingerprint -> (benchmark, held-out split): built once for same-data models
    for model in models:
        clf = ccsam_zoo.from_pretrained(model)
        key = clf.meta.get("data_fingerprint") or model
        if key not in built:
            bench, name, source, kwargs = open_set_report.rebuild_benchmark(clf, data_source)
            built[key] = bench, open_set_report._heldout(bench, name, source, kwargs, per_class)
        bench, held = built[key]
        transform = bench.batch_transform(train=False)
        on_held = evaluate_model(clf, held, transform=transform, scores=())["per_class"]
        on_train = evaluate_model(clf, bench.train, transform=transform, scores=())["per_class"]
        seen = [a for a in on_held if a is not None]
        rows[model] = {
            "heldout_per_class": _percent(on_held),
            "heldout_counts": torch.bincount(held.labels, minlength=bench.num_classes).tolist(),
            "heldout_mean": round(100 * sum(seen) / len(seen), 2),
            "train_per_class": _percent(on_train),
            "eligible": min(on_train) >= floor,
        }
    eligible = [m for m, r in rows.items() if r["eligible"]]
    selected = max(eligible, key=lambda m: rows[m]["heldout_mean"]) if eligible else None
    return {"per_class": per_class, "floor": floor, "models": rows, "selected": selected}


def main() -> None:
    data = Path(os.environ.get("CCSAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="checkpoint folders or aliases trained on the same benchmark")
    p.add_argument("--data-source", default=str(data / "cifar10"), help="the models' training data copy")
    p.add_argument("--heldout-per-class", type=int, default=1000)
    p.add_argument("--floor", type=float, default=0.5, help="minimum per-class accuracy on the training subset")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps(select(a.models, a.data_source, a.heldout_per_class, a.floor), indent=1))


if __name__ == "__main__":
    main()
