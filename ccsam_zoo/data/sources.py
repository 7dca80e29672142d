"""Base data of every benchmark name: where each split's images are, their labels, the class names.

Nothing is decoded here. A split is a label array plus an image column: file paths (OLTR split files,
iNaturalist json, image folders) or a table column of ``{"bytes", "path"}`` structs (parquet, Hub).

``source`` forms (see ``build_benchmark``):

- ``cifar10_lt`` / ``cifar100_lt`` / ``parquet`` / ``embedded``: a folder holding ``train.parquet`` and
  ``test.parquet`` (or HF shards ``train-*.parquet``, also under ``data/`` or one sub-folder), a dict
  ``{"train": file(s), "test": file(s)}``, or (cifar only) a Hub dataset id for ``datasets.load_dataset``.
- ``imagenet_lt`` / ``places_lt`` / ``tinyimagenet_lt``: ``{"root": image root, "splits": folder with the
  OLTR .txt files}`` or the string ``"root"`` / ``"root:splits"`` (``os.pathsep``-separated); without
  ``splits`` the files are looked for in ``root`` and ``root/ImageNet_LT`` (``Places_LT``,
  ``TinyImageNet_LT``). Class names come from a ``CLASS_NAME_FILES`` file beside the split files (or in the
  root) when one exists, else from the images' parent folders when unambiguous, else "0", "1", ...
- ``inat2018``: ``{"root": image root, "annotations": folder with train2018.json / val2018.json}`` or
  ``"root"`` / ``"root:annotations"``; without ``annotations`` the json files are looked for in ``root``.
- ``imagefolder``: a root with ``train/`` and ``test/`` (or ``val/``) class-per-folder trees, or
  ``{"train": folder, "test": folder}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ._cache import file_sha256, hash_json
from .decode import open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_IMAGE_COLUMNS = ("img", "image")
_LABEL_COLUMNS = ("label", "fine_label")
_HUB_IDS = {
    "cifar10_lt": ("uoft-cs/cifar10", ("label", "fine_label")),
    "cifar100_lt": ("uoft-cs/cifar100", ("fine_label", "label")),
}
_OLTR = {"imagenet_lt": "ImageNet_LT", "places_lt": "Places_LT", "tinyimagenet_lt": "TinyImageNet_LT"}
# Class-name files looked for beside the OLTR split files (then in the image root), first found wins:
# ``classes.txt`` (``label<TAB>wnid<TAB>words`` or ``label<TAB>name``), ImageNet's ``words.txt`` /
# Kaggle's ``LOC_synset_mapping.txt`` (``wnid<TAB or space>words``, matched to each class's wnid in its image
# paths) and Places-365's ``categories_places365.txt`` (``/a/airfield 0``).
CLASS_NAME_FILES = ("classes.txt", "words.txt", "LOC_synset_mapping.txt", "categories_places365.txt")
_WNID = re.compile(r"^n\d{8}$")
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "embedded"


# ----------------------------------------------------------------------------------------- image columns
class FileImages:
    """Images stored as files (absolute paths)."""

    base_dir = None

    def __init__(self, paths: list[str], origin: str) -> None:
        self.paths = paths
        self.origin = origin

    def __len__(self) -> int:
        return len(self.paths)

    def refs(self, rows: np.ndarray) -> list[str]:
        return [self.paths[i] for i in rows]

    def stat_key(self, rows: np.ndarray) -> str:
        """Hash of (path, size, mtime) of the given files: the cache key part for file sources."""
        digest = hashlib.sha256()
        for i in rows:
            st = os.stat(self.paths[i])
            digest.update(f"{self.paths[i]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def hf_dataset(self, rows: np.ndarray):
        import datasets

        return datasets.Dataset.from_dict({"image": self.refs(rows)})


class TableImages:
    """Images stored in a table column (``datasets.Image`` structs, raw bytes or paths)."""

    def __init__(self, column: str, origin: str, files: list[Path] | None = None, dataset: Any = None) -> None:
        self.column, self.origin, self.files, self.dataset = column, origin, files, dataset
        self.base_dir = str(files[0].parent) if files else None
        self._array: pa.ChunkedArray | None = None
        self._len: int | None = None

    def _data(self) -> pa.ChunkedArray:
        if self._array is None:
            if self.files is not None:
                self._array = pa.chunked_array(
                    [c for f in self.files for c in pq.read_table(f, columns=[self.column]).column(0).chunks]
                )
            else:
                self._array = self.dataset.data.table.column(self.column)
        return self._array

    def __len__(self) -> int:
        if self._len is None:
            if self.files is not None:
                self._len = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
            else:
                self._len = len(self.dataset)
        return self._len

    def refs(self, rows: np.ndarray) -> list[Any]:
        taken = self._data().take(pa.array(np.asarray(rows, dtype=np.int64)))
        if pa.types.is_struct(taken.type):
            taken = taken.combine_chunks()
            names = [taken.type.field(i).name for i in range(taken.type.num_fields)]
            data = taken.field("bytes").to_pylist() if "bytes" in names else [None] * len(taken)
            paths = taken.field("path").to_pylist() if "path" in names else [None] * len(taken)
            return [{"bytes": b, "path": p} for b, p in zip(data, paths)]
        return taken.to_pylist()

    def hf_dataset(self, rows: np.ndarray):
        import datasets

        if self.files is not None:
            ds = datasets.Dataset.from_parquet([str(f) for f in self.files], columns=[self.column])
        else:
            ds = self.dataset.select_columns([self.column])
        ds = ds.select(np.asarray(rows, dtype=np.int64))
        if self.column != "image":
            ds = ds.rename_column(self.column, "image")
        if isinstance(ds.features["image"], datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))
        return ds


ImageColumn = FileImages | TableImages


@dataclass
class Split:
    """One split: integer labels (-1 for open-set images), images, and a JSON-able content identity."""

    labels: np.ndarray
    images: ImageColumn
    identity: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class BaseData:
    """Everything a benchmark is built from."""

    train: Split
    test: Split
    class_names: list[str]
    native_size: int | None = None  # side of the images when small (<= 64 px) and square-ish; None: large
    fixed: bool = False  # the imbalance is given by split files (ImageNet-LT, Places-LT, iNaturalist)
    val: Split | None = None  # an official validation split (OLTR)
    open: Split | None = None  # open-set images (OLTR *_open.txt), labels -1
    identity: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ helpers
def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(
                f"{what} column {wanted!r} not found in {where}; available columns: {columns}; "
                f"pass {what}_column=<one of them>"
            )
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"no {what} column found in {where} (looked for {list(candidates)}); available columns: {columns}; "
        f"pass {what}_column=<name>"
    )


def _class_label_names(schema_or_features: Any, column: str) -> list[str] | None:
    """Names of a ``datasets.ClassLabel`` column, from HF features or a parquet schema's HF metadata."""
    if isinstance(schema_or_features, pa.Schema):
        try:  # read the metadata directly: importing ``datasets`` costs a second on the fast path
            meta = json.loads((schema_or_features.metadata or {})[b"huggingface"])
            feature = meta["info"]["features"][column]
        except (KeyError, TypeError, ValueError):
            return None
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and "names" in feature:
            return [str(n) for n in feature["names"]]
        return None
    feature = schema_or_features.get(column) if hasattr(schema_or_features, "get") else None
    names = getattr(feature, "names", None)
    return list(names) if names is not None else None


def _encode_labels(
    raw: dict[str, np.ndarray], names: list[str] | None, where: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Integer-encode every split's labels with the training split's classes."""
    train = raw["train"]
    if train.dtype.kind in "OUS":
        names = sorted({str(v) for v in train})
        index = {n: i for i, n in enumerate(names)}
        out = {}
        for split, values in raw.items():
            unknown = sorted({str(v) for v in values} - index.keys())
            if unknown:
                raise ValueError(f"{split} labels of {where} not among the training classes: {unknown[:5]}")
            out[split] = np.array([index[str(v)] for v in values], dtype=np.int64)
        return out, names
    out = {}
    for split, values in raw.items():
        if values.dtype.kind not in "iub" and not np.array_equal(values, np.round(values)):
            raise ValueError(f"{split} labels of {where} are not integers (dtype {values.dtype})")
        values = values.astype(np.int64)
        if len(values) and values.min() < 0:
            raise ValueError(f"{split} labels of {where} contain negative values ({values.min()})")
        out[split] = values
    num = max(int(v.max()) + 1 for v in out.values() if len(v))
    if names is None:
        names = [str(i) for i in range(num)]
    elif num > len(names):
        split, values = next((k, v) for k, v in out.items() if len(v) and int(v.max()) >= len(names))
        bad = sorted({int(x) for x in values[values >= len(names)]})
        row = int(np.flatnonzero(values >= len(names))[0])
        raise ValueError(
            f"{split} labels of {where} outside the {len(names)} declared class names ({names[0]!r} .. "
            f"{names[-1]!r}, labels 0..{len(names) - 1}): {bad[:5]}" + (" ..." if len(bad) > 5 else "")
            + f", first at row {row}; fix those labels (or the class names in the file's metadata)"
        )
    return out, names


def _parquet_files(path: Path) -> dict[str, list[Path]]:
    """Split name -> parquet files: ``train.parquet`` / ``train-*.parquet`` in the folder, data/ or one sub-folder."""
    if path.is_file():
        return {"train": [path]}
    found: dict[str, list[Path]] = {}
    folders = [path, path / "data", *sorted(p for p in path.iterdir() if p.is_dir() and p.name != "data")]
    for folder in folders:
        if not folder.is_dir():
            continue
        for split in ("train", "test", "validation", "val"):
            if split in found:
                continue
            files = sorted({*folder.glob(f"{split}.parquet"), *folder.glob(f"{split}-*.parquet")})
            if files:
                found[split] = files
        if "train" in found:
            break
    return found


def _as_files(value: Any) -> list[Path]:
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    files = [Path(v).expanduser() for v in items]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"parquet file not found: {f}")
    return files


def _table_source(
    source: Any,
    image_column: str | None,
    label_column: str | None,
    cache: Path,
    name: str,
    label_candidates: tuple[str, ...] = _LABEL_COLUMNS,
) -> BaseData:
    """Local parquet (folder, file dict) as base data."""
    if isinstance(source, dict):
        unknown = set(source) - {"train", "test"}
        if unknown or "train" not in source:
            raise ValueError(f"a parquet source dict needs the keys 'train' and 'test' (got {sorted(source)})")
        files = {split: _as_files(v) for split, v in source.items()}
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name} source {str(path)!r} does not exist")
        files = _parquet_files(path)
        if "train" not in files:
            raise FileNotFoundError(
                f"no training parquet in {path}: expected train.parquet or train-*.parquet "
                "(also under data/), or pass source={'train': FILE, 'test': FILE}"
            )
    if "test" not in files:
        for alt in ("validation", "val"):
            if alt in files:
                files["test"] = files.pop(alt)
                break
        else:
            raise FileNotFoundError(
                f"no test parquet for {name} next to {files['train'][0]}: expected test.parquet or test-*.parquet "
                "(or validation/val), or pass source={'train': FILE, 'test': FILE}"
            )
    files = {k: files[k] for k in ("train", "test")}
    schema = pq.read_schema(files["train"][0])
    where = str(files["train"][0])
    img_col = _pick_column(schema.names, image_column, _IMAGE_COLUMNS, "image", where)
    lab_col = _pick_column(schema.names, label_column, label_candidates, "label", where)
    raw = {}
    for split, fs in files.items():
        for f in fs:
            cols = pq.read_schema(f).names
            _pick_column(cols, img_col, (), "image", str(f))
            _pick_column(cols, lab_col, (), "label", str(f))
        raw[split] = np.concatenate([pq.read_table(f, columns=[lab_col]).column(0).to_numpy() for f in fs])
    labels, names = _encode_labels(raw, _class_label_names(schema, lab_col), where)
    splits = {}
    for split, fs in files.items():
        identity = {
            "files": [{"name": f.name, "sha256": file_sha256(f, cache)} for f in fs],
            "image_column": img_col,
            "label_column": lab_col,
        }
        origin = str(fs[0]) if len(fs) == 1 else f"{fs[0].parent}/{split}-*.parquet"
        splits[split] = Split(labels[split], TableImages(img_col, origin, files=fs), identity)
    return BaseData(splits["train"], splits["test"], names, native_size=_probe_size(splits["train"]))


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (at import: the environment variable is the truth here)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub's endpoint (a DNS failure or a closed network answers at once)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_source(
    repo_id: str, image_column: str | None, label_column: str | None, name: str, label_candidates: tuple[str, ...]
) -> BaseData:
    fix = (
        "give a local copy (a folder holding train.parquet and test.parquet): --set data.source=DIR on the "
        "command line, source=DIR in Python"
    )
    if not _hub_offline() and not _hub_reachable():  # fail now, not after ~30 s of retries
        raise FileNotFoundError(
            f"{name}: the Hugging Face Hub is unreachable, so {repo_id!r} cannot be downloaded; {fix} (or set "
            "HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache)"
        )
    import datasets

    try:
        dd = datasets.load_dataset(repo_id)
    except Exception as err:
        offline = " (HF_HUB_OFFLINE is set and it is not in the Hugging Face cache)" if _hub_offline() else ""
        raise FileNotFoundError(
            f"{name}: could not load {repo_id!r} from the Hub{offline} ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}); {fix}"
        ) from err
    if "train" not in dd or "test" not in dd:
        raise ValueError(f"{repo_id} has splits {list(dd)}; {name} needs 'train' and 'test'")
    columns = dd["train"].column_names
    img_col = _pick_column(columns, image_column, _IMAGE_COLUMNS, "image", repo_id)
    lab_col = _pick_column(columns, label_column, label_candidates, "label", repo_id)
    raw = {s: np.asarray(dd[s].data.table.column(lab_col).to_numpy()) for s in ("train", "test")}
    labels, names = _encode_labels(raw, _class_label_names(dd["train"].features, lab_col), repo_id)
    splits = {
        s: Split(
            labels[s],
            TableImages(img_col, f"{repo_id}[{s}]", dataset=dd[s]),
            {"hub": repo_id, "split": s, "fingerprint": getattr(dd[s], "_fingerprint", None)},
        )
        for s in ("train", "test")
    }
    return BaseData(splits["train"], splits["test"], names, native_size=_probe_size(splits["train"]))


def _probe_size(split: Split) -> int | None:
    """Side of the first training image if it is small (<= 64 px), else None (large-image path)."""
    if not len(split):
        return None
    ref = split.images.refs(np.array([0]))[0]
    try:
        if isinstance(ref, dict) and ref.get("bytes") is not None:
            import io

            w, h = Image.open(io.BytesIO(ref["bytes"])).size
        elif isinstance(ref, (bytes, bytearray)):
            import io

            w, h = Image.open(io.BytesIO(ref)).size
        else:
            w, h = open_image(ref, f"at row 0 of {split.images.origin}", split.images.base_dir).size
    except Exception:
        return None  # reported with context when the image is decoded
    return max(w, h) if max(w, h) <= 64 else None


def _split_root(source: Any, key: str, name: str, example: str) -> tuple[Path, Path | None]:
    """``{"root": ..., key: ...}`` or ``"root"`` / ``"root<os.pathsep>dir"`` -> (root, dir or None)."""
    if source is None:
        raise ValueError(
            f"{name} needs source={{'root': IMAGE_ROOT, '{key}': FOLDER}} or 'ROOT{os.pathsep}FOLDER' ({example})"
        )
    if isinstance(source, dict):
        unknown = set(source) - {"root", key}
        if unknown or "root" not in source:
            raise ValueError(f"{name} source dict takes the keys 'root' and '{key}' (got {sorted(source)})")
        other = source.get(key)
        root, folder = Path(source["root"]).expanduser(), (Path(other).expanduser() if other else None)
    else:
        text = str(source)
        if os.path.exists(text) or os.pathsep not in text:
            root, folder = Path(text).expanduser(), None
        else:
            head, tail = text.rsplit(os.pathsep, 1)
            root, folder = Path(head).expanduser(), Path(tail).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} image root {str(root)!r} is not a folder")
    return root, folder


# Where the split / annotation files come from (named when they are missing).
_FILES_FROM = {
    "imagenet_lt": "the OLTR release, https://github.com/zhmiao/OpenLongTailRecognition-OLTR",
    "places_lt": "the OLTR release, https://github.com/zhmiao/OpenLongTailRecognition-OLTR",
    "tinyimagenet_lt": "the Tiny-ImageNet-LT folder (TinyImageNet_LT_*.txt, classes.txt, images/)",
    "inat2018": "https://github.com/visipedia/inat_comp/tree/master/2018",
}


def _find_files(folders: list[Path], required: list[str], optional: list[str], name: str) -> tuple[Path, ...]:
    for folder in folders:
        if all((folder / r).is_file() for r in required):
            return tuple(folder / r for r in required) + tuple(
                (folder / o) if (folder / o).is_file() else None for o in optional
            )
    origin = f" (from {_FILES_FROM[name]})" if name in _FILES_FROM else ""
    raise FileNotFoundError(
        f"{name}: split files not found in {[str(f) for f in folders]}; expected {required}"
        + (f" (optionally {optional})" if optional else "")
        + f"{origin}; pass the folder that holds them: source='IMAGE_ROOT{os.pathsep}FOLDER' "
        "(recipes: --set data.source=IMAGE_ROOT" + os.pathsep + "FOLDER) or source={'root': ..., ...}"
    )


def _check_first(root: Path, paths: list[str], listing: Path, name: str) -> None:
    if paths and not os.path.exists(paths[0]):
        raise FileNotFoundError(
            f"{name}: the first image of {listing} is not at {paths[0]}: the paths in {listing.name} must be "
            f"relative to the image root (now {root}); pass source={{'root': <that folder>, ...}}"
        )


def _names_from_parents(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Class names from the parent folder of each class's images when that is unambiguous, else '0', '1', ..."""
    names: dict[int, str] = {}
    for p, y in zip(paths, labels.tolist()):
        parent = os.path.basename(os.path.dirname(p))
        if names.setdefault(y, parent) != parent:
            return [str(i) for i in range(num_classes)]
    if len(names) != num_classes or len(set(names.values())) != num_classes:
        return [str(i) for i in range(num_classes)]
    return [names[i] for i in range(num_classes)]


def _class_wnids(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str | None]:
    """The WordNet id (``n########`` folder in the image path) of each class, None where absent or mixed."""
    wnids: dict[int, str | None] = {}
    for p, y in zip(paths, labels.tolist()):
        found = next((part for part in reversed(Path(p).parts[:-1]) if _WNID.match(part)), None)
        if wnids.setdefault(y, found) != found:
            wnids[y] = None
    return [wnids.get(c) for c in range(num_classes)]


def _unique_names(words: list[str], keys: list[str]) -> list[str]:
    """First synonym of each class's words ("flagpole, flagstaff" -> "flagpole"); the full words, then
    ``words (key)``, where that would name two classes alike (ImageNet has two "crane" and two "maillot")."""
    names = [w.split(",")[0].strip() or w for w in words]
    for candidate in (words, [f"{w} ({k})" for w, k in zip(words, keys)]):
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        names = [c if counts[n] > 1 else n for n, c in zip(names, candidate)]
    return names


def _names_from_file(path: Path, paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Class names from a ``CLASS_NAME_FILES`` file (see there), checked against the split files' labels."""
    by_label: dict[int, tuple[str, str]] = {}
    by_wnid: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.strip().split(maxsplit=1)
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit():  # label<TAB>[wnid<TAB>]words
            by_label[int(parts[0])] = (parts[-1], parts[1] if len(parts) > 2 else parts[0])
        elif len(parts) == 2 and _WNID.match(parts[0]):  # wnid<TAB>words (words.txt, LOC_synset_mapping.txt)
            by_wnid[parts[0]] = parts[1]
        elif len(parts) == 2 and parts[1].isdigit():  # /a/airfield 0 (categories_places365.txt)
            place = parts[0].strip("/")
            by_label[int(parts[1])] = (place.split("/", 1)[1] if place[1:2] == "/" else place, parts[0])
        else:
            raise ValueError(
                f"{path}:{lineno}: expected 'label<TAB>wnid<TAB>words', 'label<TAB>name', 'wnid<TAB>words' or "
                f"'/x/name label', got {line!r}; fix the line or remove {path.name} to use numeric class names"
            )
    if by_label:
        missing = [c for c in range(num_classes) if c not in by_label]
        if missing:
            raise ValueError(
                f"{path} names no class for label(s) {missing[:5]}" + (" ..." if len(missing) > 5 else "")
                + f" of the {num_classes} classes in the split files; add them or remove {path.name}"
            )
        words, keys = zip(*(by_label[c] for c in range(num_classes)))
        return _unique_names(list(words), list(keys))
    wnids = _class_wnids(paths, labels, num_classes)
    unnamed = [c for c, w in enumerate(wnids) if w is None or w not in by_wnid]
    if unnamed:
        c = unnamed[0]
        raise ValueError(
            f"{path}: no words for class {c} (wnid {wnids[c]!r} from its image paths)"
            + (f" and {len(unnamed) - 1} more" if len(unnamed) > 1 else "")
            + f"; the image paths must hold the class's n######## folder, or remove {path.name}"
        )
    return _unique_names([by_wnid[w] for w in wnids], [w for w in wnids])


def _oltr_file(path: Path, root: Path, open_set: bool = False) -> tuple[list[str], np.ndarray, str]:
    paths, labels = [], []
    text = path.read_text()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            if len(parts) != 2:
                raise ValueError
            label = int(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected '<relative path> <integer label>', got {line!r}") from None
        paths.append(str(root / parts[0].lstrip("/")))
        labels.append(-1 if open_set else label)
    return paths, np.array(labels, dtype=np.int64), hashlib.sha256(text.encode()).hexdigest()


def _oltr_source(name: str, source: Any) -> BaseData:
    prefix = _OLTR[name]
    root, folder = _split_root(source, "splits", name, f"the folder of {prefix}_train.txt")
    folders = [folder] if folder else [root, root / prefix]
    files = _find_files(
        folders, [f"{prefix}_train.txt", f"{prefix}_test.txt"], [f"{prefix}_val.txt", f"{prefix}_open.txt"], name
    )
    splits: dict[str, Split] = {}
    for split, f in zip(("train", "test", "val", "open"), files):
        if f is None:
            continue
        paths, labels, sha = _oltr_file(f, root, open_set=split == "open")
        if split == "train":
            _check_first(root, paths, f, name)
        if split != "open" and len(labels) and labels.min() < 0:
            raise ValueError(f"{f} has negative labels")
        splits[split] = Split(labels, FileImages(paths, str(f)), {"file": f.name, "sha256": sha, "root": str(root)})
    num_classes = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
    train = splits["train"]
    folders = list(dict.fromkeys([files[0].parent, root]))
    names_file = next((d / n for d in folders for n in CLASS_NAME_FILES if (d / n).is_file()), None)
    if names_file is not None:
        names = _names_from_file(names_file, train.images.paths, train.labels, num_classes)
    else:
        names = _names_from_parents(train.images.paths, train.labels, num_classes)
    return BaseData(
        splits["train"],
        splits["test"],
        names,
        native_size=_probe_size(train) if name == "tinyimagenet_lt" else None,
        fixed=True,
        val=splits.get("val"),
        open=splits.get("open"),
    )


def _inat_source(source: Any) -> BaseData:
    root, folder = _split_root(source, "annotations", "inat2018", "the folder of train2018.json")
    files = _find_files([folder] if folder else [root], ["train2018.json", "val2018.json"], [], "inat2018")
    parsed = []
    for f in files:
        with open(f, "rb") as fh:
            blob = fh.read()
        try:
            meta = json.loads(blob)
            files_by_id = {im["id"]: im["file_name"] for im in meta["images"]}
            cats = {c["id"]: c.get("name", str(c["id"])) for c in meta["categories"]}
            pairs = [(files_by_id[a["image_id"]], a["category_id"]) for a in meta["annotations"]]
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{f} is not an iNaturalist/COCO-style file with images[{{id, file_name}}], "
                f"annotations[{{image_id, category_id}}], categories[{{id, name}}]: {type(err).__name__}: {err}"
            ) from err
        parsed.append((pairs, cats, hashlib.sha256(blob).hexdigest()))
    categories = parsed[0][1]
    cat_ids = sorted(categories)
    index = {c: i for i, c in enumerate(cat_ids)}
    splits = {}
    for split, f, (pairs, _, sha) in zip(("train", "test"), files, parsed):
        unknown = {c for _, c in pairs} - index.keys()
        if unknown:
            raise ValueError(f"{f}: category ids {sorted(unknown)[:5]} are not in train2018.json's categories")
        paths = [str(root / p.lstrip("/")) for p, _ in pairs]
        labels = np.array([index[c] for _, c in pairs], dtype=np.int64)
        if split == "train":
            _check_first(root, paths, f, "inat2018")
        splits[split] = Split(labels, FileImages(paths, str(f)), {"file": f.name, "sha256": sha, "root": str(root)})
    names = [str(categories[c]) for c in cat_ids]
    return BaseData(splits["train"], splits["test"], names, fixed=True)


def _list_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS))
    return out


def _imagefolder_source(source: Any) -> BaseData:
    if isinstance(source, dict):
        if set(source) != {"train", "test"}:
            raise ValueError(f"an imagefolder source dict takes the keys 'train' and 'test' (got {sorted(source)})")
        folders = {k: Path(v).expanduser() for k, v in source.items()}
    else:
        if source is None:
            raise ValueError("imagefolder needs source=ROOT (with train/ and test/) or {'train': DIR, 'test': DIR}")
        root = Path(source).expanduser()
        test = next((root / s for s in ("test", "val", "validation") if (root / s).is_dir()), None)
        if not (root / "train").is_dir() or test is None:
            raise FileNotFoundError(
                f"imagefolder root {root} needs train/ and test/ (or val/) sub-folders with one folder per class; "
                "or pass source={'train': DIR, 'test': DIR}"
            )
        folders = {"train": root / "train", "test": test}
    for split, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"imagefolder {split} folder {folder} does not exist")
    names = sorted(p.name for p in folders["train"].iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"{folders['train']} holds no class folders")
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, folder in folders.items():
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unknown = sorted(set(classes) - index.keys())
        if unknown:
            raise ValueError(f"class folders {unknown[:5]} of {folder} are not training classes of {folders['train']}")
        paths, labels = [], []
        for cls in classes:
            files = _list_images(folder / cls)
            paths += [str(p) for p in files]
            labels += [index[cls]] * len(files)
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
        listing = "\n".join(f"{os.path.relpath(p, folder)}\t{y}" for p, y in zip(paths, labels))
        identity = {"folder": str(folder), "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}
        splits[split] = Split(np.array(labels, dtype=np.int64), FileImages(paths, str(folder)), identity)
    return BaseData(splits["train"], splits["test"], names, native_size=_probe_size(splits["train"]))


def open_split(source: Any, image_column: str | None, cache: Path) -> Split:
    """Open-set images (labels -1): a parquet file, a folder of parquet (its test split), or an image folder."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"open_source {str(path)!r} does not exist")
    if path.is_file() or _parquet_files(path):
        found = _parquet_files(path)
        split = next((s for s in ("test", "validation", "val", "train") if s in found), None)
        files = found[split]
        columns = pq.read_schema(files[0]).names
        col = _pick_column(columns, image_column, _IMAGE_COLUMNS, "image", str(files[0]))
        images: ImageColumn = TableImages(col, str(files[0]), files=files)
        identity = {"files": [{"name": f.name, "sha256": file_sha256(f, cache)} for f in files], "image_column": col}
    else:
        paths = [str(p) for p in _list_images(path)]
        if not paths:
            raise ValueError(f"no images or parquet files found under {path}")
        images = FileImages(paths, str(path))
        identity = {"folder": str(path), "listing_sha256": hash_json([os.path.relpath(p, path) for p in paths])}
    return Split(np.full(len(images), -1, dtype=np.int64), images, identity)


def resolve(
    name: str, source: Any, image_column: str | None, label_column: str | None, cache: Path
) -> BaseData:
    """Base data for a benchmark name (see the module docstring for ``source``)."""
    if name in _HUB_IDS:
        hub_id, candidates = _HUB_IDS[name]
        if source is None:
            local = Path(os.environ.get("CCSAM_DATA", "/nonexistent")) / hub_id.split("/")[1]
            source = str(local) if local.is_dir() else hub_id
        if isinstance(source, dict) or Path(str(source)).expanduser().exists():
            return _table_source(source, image_column, label_column, cache, name, candidates)
        if isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/", "~")):
            return _hub_source(source, image_column, label_column, name, candidates)
        raise FileNotFoundError(f"{name} source {source!r} is neither an existing path nor a Hub dataset id")
    if name == "parquet":
        if source is None:
            raise ValueError(
                "parquet needs source=FOLDER (with train.parquet, test.parquet) or {'train': FILE, 'test': FILE}"
            )
        return _table_source(source, image_column, label_column, cache, name)
    if name == "embedded":
        return _table_source(source or EMBEDDED_DIR, image_column, label_column, cache, name)
    if name in _OLTR:
        return _oltr_source(name, source)
    if name == "inat2018":
        return _inat_source(source)
    if name == "imagefolder":
        return _imagefolder_source(source)
    raise AssertionError(name)
