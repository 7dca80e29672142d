"""Model cards: Hub metadata (model-index), usage, results beside the paper, training, limits, citation.

The card is rendered with ``huggingface_hub.ModelCard.from_template`` from the Jinja template shipped in the
package (``ccsam_zoo/hub/model_card_template.md``, the single source; ``model_cards/README.md`` documents it).

A card names a Hub repo only when one is given (``push_to_hub`` renders it for its repo); otherwise it says
how to load the folder itself. For a stage folder inside a run folder it also reads what the run left:
``metrics.json`` (both stages' numbers), ``log.jsonl`` (epoch times), ``train.log`` (processes, device),
``recipe.yaml`` (the reproduction command); whatever is missing is left out. Hand-written text between
``<!-- ccsam_zoo:notes -->`` and ``<!-- /ccsam_zoo:notes -->`` in the folder's README.md is kept.

No card holds a path of the machine that trained the model: the data copy is named by its folder name and
fingerprint, commands use placeholders (``data.source=PATH/TO/cifar10``, ``stage2.init=RUN1/stage1``);
``portable_recipe`` / ``portable_text`` do the same for a recipe or a log that is shipped. Only the usage
lines of a card for an unpublished local folder name that folder (how to load it on this machine).
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

from ..jsonio import loads as loads_json
from ..training.run_log import resume_count, stage_seconds
from ._format import CONFIG_NAME, read_extras, read_json
from .registry import pretty_dataset

__all__ = [
    "render_model_card", "paper_result_for", "plot_per_class_accuracy", "TEMPLATE_PATH", "default_repo_id",
    "portable_recipe", "portable_extras", "portable_text", "PLACEHOLDER",
]  # fmt: skip

NOTES_BEGIN = "<!-- ccsam_zoo:notes -->"
NOTES_END = "<!-- /ccsam_zoo:notes -->"

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"
DEFAULT_ORG = "ccsam-zoo"

CITATION = """@inproceedings{zhou2023ccsam,
  title     = {Class-Conditional Sharpness-Aware Minimization for Deep Long-Tailed Recognition},
  author    = {Zhou, Zhipeng and Li, Lanqing and Zhao, Peilin and Heng, Pheng-Ann and Gong, Wei},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""

PAPER_SOURCE = "Zhou et al., Class-Conditional Sharpness-Aware Minimization for Deep Long-Tailed Recognition, CVPR 2023"

# Hub dataset ids for the YAML `datasets` / model-index (the LT subsets are drawn from these).
_HF_DATASETS = {"cifar10_lt": "uoft-cs/cifar10", "cifar100_lt": "uoft-cs/cifar100", "imagenet_lt": "ILSVRC/imagenet-1k"}

# Published top-1 (%) of the paper (ALGORITHM.md). CIFAR: ResNet-32, keyed by (dataset, IR) then method.
_PAPER_CIFAR: dict[tuple[str, int], dict[str, float]] = {
    ("cifar10_lt", 200): {"CE": 65.68, "CE + mixup + cRT": 73.06, "CC-SAM": 80.94},
    ("cifar10_lt", 100): {"CE": 70.70, "CE + mixup + cRT": 79.15, "CC-SAM": 83.92},
    ("cifar10_lt", 50): {"CE": 74.81, "CE + mixup + cRT": 84.21, "CC-SAM": 86.22},
    ("cifar100_lt", 200): {"CE": 34.84, "CE + mixup + cRT": 41.73, "CC-SAM": 45.66},
    ("cifar100_lt", 100): {"CE": 38.43, "CE + mixup + cRT": 45.12, "CC-SAM": 50.83},
    ("cifar100_lt", 50): {"CE": 43.90, "CE + mixup + cRT": 50.86, "CC-SAM": 53.91},
}
# Large-scale CC-SAM results: (dataset, backbone key, backbone name) -> (top1, many, medium, few).
_PAPER_LARGE: list[tuple[str, str, str, tuple[float, float | None, float | None, float | None]]] = [
    ("imagenet_lt", "resnext50", "ResNeXt-50", (55.4, 63.1, 53.4, 41.1)),
    ("imagenet_lt", "resnet50", "ResNet-50", (52.4, None, None, None)),
    ("places_lt", "resnet152", "ResNet-152", (40.6, 41.2, 42.1, 36.4)),
    ("inat2018", "resnet50", "ResNet-50", (70.9, 65.4, 70.9, 72.2)),
]
_GROUPS = (("top1", "Overall"), ("many", "Many-shot"), ("medium", "Medium-shot"), ("few", "Few-shot"))
_METRIC_TYPES = {"top1": "accuracy", "many": "many_shot_accuracy", "medium": "medium_shot_accuracy",
                 "few": "few_shot_accuracy"}


# ------------------------------------------------------------------------------------- portable paths

PLACEHOLDER = "PATH/TO"
TRAIN_COMMAND = "ccsam-zoo train"
# Recipe keys that hold local paths (a data source may also be a Hub id, which stays as it is).
_PATH_KEYS = ("data.source", "model.pretrained_file", "stage2.init", "train.output_dir", "output_dir")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
# An absolute path inside free text (a log line, a command): POSIX, home-relative or Windows.
# POSIX paths need two parts (``/work/x``): a lone ``/word`` is text (``<!-- /ccsam_zoo:notes -->``, ``img/s``).
_SEG = r"[^\s'\"`),;:\]<>/]+"
_PATH_IN_TEXT = re.compile(
    rf"(?<![\w.:/\\-])(?:~/{_SEG}(?:/{_SEG})*|/{_SEG}(?:/{_SEG})+/?|[A-Za-z]:\\[^\s'\"`),;]+)"
)


def _looks_local(value: str) -> bool:
    """A local path (absolute, home-relative, ./ or ../ relative, Windows), not a Hub id such as ORG/NAME."""
    v = value.strip()
    return bool(v) and (v.startswith(("/", "~", "./", "../", ".\\", "..\\", "\\")) or bool(_WINDOWS_ABS.match(v)))


def _portable_path(value: str, hub_ok: bool = True) -> str:
    """``/work/shared/data/cifar10`` -> ``PATH/TO/cifar10``; a stage folder keeps its run's name
    (``PATH/TO/ccsam-s42/stage1``); ``ROOT:SPLITS`` (OLTR sources) is done part by part. A Hub id (``ORG/NAME``)
    stays when ``hub_ok``; placeholders stay as they are."""
    v = value.strip()
    if not v or v.startswith(PLACEHOLDER):
        return value
    if os.pathsep in v and not _WINDOWS_ABS.match(v):
        return os.pathsep.join(_portable_path(part, hub_ok) for part in v.split(os.pathsep))
    if hub_ok and not _looks_local(v) and v.count("/") <= 1 and "\\" not in v:
        return value  # a Hub id or a bare name
    parts = [x for x in re.split(r"[\\/]+", v) if x and x not in (".", "..", "~") and not x.endswith(":")]
    if not parts:
        return PLACEHOLDER
    keep = parts[-2:] if parts[-1] in ("stage1", "stage2") and len(parts) >= 2 else parts[-1:]
    return "/".join([PLACEHOLDER, *keep])


def portable_recipe(recipe: Any) -> Any:
    """A copy of a recipe (dict) whose local paths are placeholders (``data.source: PATH/TO/cifar10``); Hub ids,
    numbers and names are kept. What a shipped ``recipe.yaml`` / ``ccsam_zoo.json`` holds."""
    if not isinstance(recipe, dict):
        return recipe
    out = copy.deepcopy(recipe)
    for dotted in _PATH_KEYS:
        *parents, key = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(key)
        if isinstance(value, str):
            node[key] = _portable_path(value, hub_ok=dotted == "data.source")
        elif isinstance(value, dict):  # a source given as {"root": ..., "splits": ...}
            node[key] = {k: _portable_path(v) if isinstance(v, str) else v for k, v in value.items()}
    return out


def portable_extras(extras: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``ccsam_zoo.json``'s extras for others (a shipped folder, a Hub upload): the recipe's paths and
    ``data_source`` are placeholders; everything else (numbers, names, fingerprint) is unchanged."""
    out = dict(extras)
    if isinstance(out.get("recipe"), dict):
        out["recipe"] = portable_recipe(out["recipe"])
    if isinstance(out.get("data_source"), str):
        out["data_source"] = _portable_path(out["data_source"])
    return out


def portable_text(text: str) -> str:
    """Free text (a log, a command line) with every absolute or home-relative path replaced by a placeholder."""
    return _PATH_IN_TEXT.sub(lambda m: _portable_path(m.group(0), hub_ok=False), text)


def data_copy_name(source: Any) -> str | None:
    """The data copy a recipe names, without the machine's path: ``/work/shared/data/cifar10`` -> ``cifar10``,
    a Hub id as it is."""
    if isinstance(source, dict):
        source = next((v for v in source.values() if isinstance(v, str)), None)
    if not isinstance(source, str) or not source.strip():
        return None
    return _portable_path(source).removeprefix(PLACEHOLDER + "/")


# ------------------------------------------------------------------------------------------------ helpers


def _pretty_arch(arch: str | None) -> str:
    if not arch:
        return "unknown architecture"
    base = arch.removesuffix("_cifar")
    for prefix, label in (("resnext", "ResNeXt-"), ("resnet", "ResNet-")):
        if base.startswith(prefix) and base[len(prefix):].split("_")[0].isdigit():
            return label + base[len(prefix):]
    return arch


def _ir_int(extras: dict[str, Any]) -> int | None:
    ir = extras.get("imbalance_ratio")
    try:
        return int(round(float(ir))) if ir is not None else None
    except (TypeError, ValueError):
        return None


def method_names(extras: dict[str, Any]) -> tuple[str | None, str | None]:
    """(recipe method flag, this stage's method name), e.g. ("ccsam", "ccsam_adv")."""
    recipe = extras.get("recipe") or {}
    top = recipe.get("method") if isinstance(recipe, dict) else None
    method = extras.get("method")
    current = method.get("name") if isinstance(method, dict) else method
    return (str(top) if top else None), (str(current) if current else None)


_METHOD_LABELS = {
    "ccsam": "CC-SAM",
    "ccsam_adv": "adversarial feature re-training",
    "crt": "cRT",
    "ce": "CE",
    "sam": "SAM",
    "asam": "ASAM",
    "balanced_softmax": "Balanced Softmax",
    "ldam_drw": "LDAM-DRW",
    "mixup": "CE + mixup",
    "none": "none",
}


def _stage_label(cfg: Any) -> str | None:
    """``{"name": "ccsam", "preset": "official"}`` -> "CC-SAM (official preset)"; with ``"scale": 0.01``:
    "CC-SAM (official preset, s = 0.01)"."""
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, dict) or not cfg.get("name"):
        return None
    label = _METHOD_LABELS.get(str(cfg["name"]), str(cfg["name"]))
    details = [f"{cfg['preset']} preset"] if cfg.get("preset") else []
    if isinstance(cfg.get("scale"), (int, float)) and not isinstance(cfg["scale"], bool):
        details.append(f"s = {cfg['scale']:g}")  # set apart from the preset's own scale (method=ccsam_rec: 0.01)
    if cfg.get("perturbation") and cfg["perturbation"] not in ("both", "full"):
        details.append(f"{cfg['perturbation']} ablation")
    return label + (f" ({', '.join(details)})" if details else "")


def stage_method_labels(extras: dict[str, Any]) -> dict[int, str | None]:
    """Both stages' method labels: this stage's from ``method``, the other one's from the recipe."""
    recipe = extras.get("recipe") if isinstance(extras.get("recipe"), dict) else {}
    cfgs: dict[int, Any] = {1: None, 2: None}
    try:
        from ..training.config import METHODS

        s1, s2 = METHODS[recipe["method"]]
        for n, base in ((1, s1), (2, s2)):
            override = (recipe.get(f"stage{n}") or {}).get("method") or {}
            cfgs[n] = {**base, **override} if isinstance(override, dict) else base
    except Exception:  # noqa: BLE001  (no recipe, an unknown method flag, a partial recipe)
        pass
    stage = extras.get("stage")
    if stage in (1, 2) and extras.get("method"):
        cfgs[stage] = extras["method"]
    init = ((recipe.get("stage2") or {}).get("init")) if recipe else None
    labels = {n: _stage_label(c) for n, c in cfgs.items()}
    stage1 = extras.get("stage1_method")  # the stage-1 folder shipped beside this one (a separate run)
    if init:
        labels[1] = _stage_label(stage1) if stage1 else f"loaded from {_portable_path(str(init), hub_ok=False)}"
    return labels


def _method_label(extras: dict[str, Any]) -> str:
    top, current = method_names(extras)
    method = extras.get("method")
    preset = method.get("preset") if isinstance(method, dict) else None
    label = top or current or "unknown method"
    if current and current != top:
        label += f" / {current}"
    return label + (f" ({preset} preset)" if preset else "")


def metrics_percent(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics in percent: lt_accuracy gives fractions in [0, 1]; values already in percent stay."""
    keys = [k for k, _ in _GROUPS]
    values = [metrics.get(k) for k in keys] + list(metrics.get("per_class") or [])
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    scale = 100.0 if numbers and max(numbers) <= 1.0 else 1.0

    def conv(v: Any) -> float | None:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(float(v)):
            return None
        return float(v) * scale

    out = {k: conv(metrics.get(k)) for k in keys}
    out["per_class"] = [conv(v) for v in metrics.get("per_class") or []]
    return out


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def default_repo_id(extras: dict[str, Any], org: str = DEFAULT_ORG) -> str:
    """``ccsam-zoo/<method>-<dataset>[-ir<IR>]-<arch>``, e.g. ``ccsam-zoo/ccsam-cifar10-lt-ir100-resnet32``."""
    top, current = method_names(extras)
    method = (top or current or "model").replace("_", "-")
    dataset = (extras.get("dataset_name") or "data").replace("_", "-")
    ir = _ir_int(extras)
    arch = (extras.get("architecture") or "model").removesuffix("_cifar").replace("_", "-")
    parts = [method, dataset] + ([f"ir{ir}"] if ir and dataset.startswith("cifar") else []) + [arch]
    return f"{org}/{'-'.join(parts)}"


# ------------------------------------------------------------------------------------------ paper lookup


def paper_result_for(extras: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's published result for the same setting, or None when the paper has no such number."""
    dataset = extras.get("dataset_name")
    arch = (extras.get("architecture") or "").lower()
    stage = extras.get("stage")
    top, current = method_names(extras)
    names = {n for n in (top, current) if n}
    if any(n.startswith("ccsam") for n in names) and not ({"ccsam_dir", "ccsam_mag"} & names):
        family = "CC-SAM"
    elif top == "mixup_crt" and stage == 2:
        family = "CE + mixup + cRT"
    elif stage == 1 and current == "ce":
        family = "CE"
    else:
        return None
    note = None
    if family == "CC-SAM" and stage == 1:
        note = "the paper's number is after both stages; this is the stage-1 model"
    key = (dataset, _ir_int(extras))
    if key in _PAPER_CIFAR:
        arch_note = None if arch.startswith("resnet32") else "the paper used ResNet-32"
        note = "; ".join(n for n in (note, arch_note) if n) or None
        if key == ("cifar10_lt", 100) and family == "CC-SAM":
            extra = "a public run of the authors' code on CIFAR-10-LT IR 100 reported 74.0"
            note = f"{note}; {extra}" if note else extra
        return {
            "setting": f"{family}, {pretty_dataset(dataset)} IR {key[1]}, ResNet-32",
            "method": family,
            "top1": _PAPER_CIFAR[key][family],
            "many": None,
            "medium": None,
            "few": None,
            "source": PAPER_SOURCE,
            "note": note,
        }
    if family != "CC-SAM":
        return None
    for ds, backbone, label, (top1, many, medium, few) in _PAPER_LARGE:
        if ds == dataset and arch.startswith(backbone):
            return {
                "setting": f"CC-SAM, {pretty_dataset(dataset)}, {label}",
                "method": family,
                "top1": top1,
                "many": many,
                "medium": medium,
                "few": few,
                "source": PAPER_SOURCE,
                "note": note,
            }
    return None


# ------------------------------------------------------------------------------------------------- plot


def plot_per_class_accuracy(folder: str | os.PathLike, extras: dict[str, Any]) -> Path | None:
    """Write ``per_class_accuracy.png`` (accuracy per class, head to tail, with training counts)."""
    metrics = metrics_percent(extras.get("metrics") or {})
    acc = metrics["per_class"]
    counts = extras.get("class_counts")
    if not acc or not counts or len(acc) != len(counts):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = extras.get("shot_groups") or ["many"] * len(counts)
    colors = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    order = sorted(range(len(counts)), key=lambda c: -counts[c])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if len(order) <= 100:
        x = list(range(len(order)))
        ax.bar(x, [acc[c] or 0.0 for c in order], color=[colors.get(groups[c], "gray") for c in order])
        if len(order) <= 20:
            names = extras.get("class_names") or [str(c) for c in order]
            ax.set_xticks(x, [names[c] for c in order], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("classes by training count (head to tail)")
        twin = ax.twinx()
        twin.plot(x, [counts[c] for c in order], "k.-", lw=1, label="training images")
        twin.set_yscale("log")
        twin.set_ylabel("training images (log)")
    else:
        ax.scatter([counts[c] for c in order], [acc[c] or 0.0 for c in order], s=4,
                   c=[colors.get(groups[c], "gray") for c in order])
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log)")
    for name, color in colors.items():
        if name in groups:
            ax.bar([0], [0], color=color, label=f"{name}-shot")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower left", fontsize=8)
    title = f"{_pretty_arch(extras.get('architecture'))} on {pretty_dataset(extras.get('dataset_name'))}"
    ax.set_title(f"Per-class test accuracy: {title}, stage {extras.get('stage') or '?'}", fontsize=10)
    fig.tight_layout()
    path = Path(folder) / "per_class_accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- card


def _limitations(extras: dict[str, Any], results: list[dict[str, Any]], paper: dict[str, Any] | None) -> list[str]:
    out = [str(x) for x in extras.get("limitations") or []]
    recipe = extras.get("recipe") or {}
    dataset = extras.get("dataset_name") or ""
    if dataset.startswith("cifar") and isinstance(recipe, dict):
        for stage, paper_epochs in (("stage1", 200), ("stage2", 30)):
            epochs = (recipe.get(stage) or {}).get("epochs")
            if isinstance(epochs, int) and epochs < paper_epochs:
                out.append(f"Shortened schedule: {stage} ran {epochs} epochs (the authors' recipe: {paper_epochs}).")
    source = extras.get("data_source")
    if source is None and isinstance(recipe, dict):
        source = (recipe.get("data") or {}).get("source")
    fp = extras.get("data_fingerprint")
    copy_text = extras.get("data_copy") if isinstance(extras.get("data_copy"), str) else None
    name = data_copy_name(source)
    what = copy_text or (f"the data copy `{name}`" if name else "the data copy recorded in the recipe")
    data_line = f"Trained and evaluated on {what}."
    data_line += (f" Data fingerprint `{fp}`: it covers the copy's files, the long-tailed subset rule and its "
                  "seed.") if fp else ""  # fmt: skip
    data_line += (" Another copy of the same images (re-encoded: e.g. the original lossless pixels rather than a "
                  "JPEG copy) has another fingerprint and shifts accuracies slightly.")  # fmt: skip
    out.append(data_line)
    if any(r["key"] == "few" and r["ours"] is None for r in results):
        out.append("No class falls in the few-shot group under the chosen thresholds: the few-shot accuracy is empty.")
    selection = (extras.get("metrics") or {}).get("selection")
    if selection == "last":
        out.append("Reported numbers are from the last epoch: no checkpoint selection, and none on the test split.")
    elif selection:
        out.append(f"The reported model was selected on the `{selection}` split, never on the test split.")
    if paper is None:
        out.append("The paper reports no number for this exact setting: no comparison is made.")
    return out


def _sharpness_section(folder: Path) -> dict[str, Any] | None:
    """The ``ccsam-zoo sharpness --card`` report kept in the folder (summary table, plot, settings), if any."""
    table = folder / "sharpness_summary.md"
    if not table.is_file():
        return None
    try:
        cfg = loads_json((folder / "sharpness.json").read_text()).get("config", {})
    except (OSError, ValueError):
        cfg = {}
    return {
        "table": table.read_text(encoding="utf-8").strip(),
        "plot": (folder / "sharpness.png").is_file(),
        "params": cfg.get("params"),
        "num_samples": cfg.get("num_samples"),
        "num_directions": cfg.get("num_directions"),
        "data": cfg.get("data"),
        "split": cfg.get("split"),
    }


def _default_rule_summary(open_set: dict[str, Any] | None) -> str | None:
    """"selection AUROC 76.9%, noise guard met" of a stored default chosen by the rule (``open_set.selection``)."""
    sel = (open_set or {}).get("selection")
    score = (open_set or {}).get("score")
    if not isinstance(sel, dict) or not isinstance(sel.get(score), dict):
        return None
    m = sel[score]
    guard = all(float(m.get(k, 0.0)) >= 0.99 for k in ("uniform", "constant"))
    met = "noise guard met" if guard else "no score met the noise guard"
    return f"selection AUROC {100 * float(m['auroc']):.1f}%, {met}"


def _kept_notes(folder: Path) -> str | None:
    """Hand-written notes of the folder's current README.md (between the markers), kept across re-renders."""
    path = folder / "README.md"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
    if start < 0 or end < start:
        return None
    return text[start : end + len(NOTES_END)]


def _shipped_alias(location: Path) -> str | None:
    """The alias of a model folder shipped inside the package or installed as an optional asset (it loads by that
    name wherever it is installed)."""
    from .registry import _REGISTRY  # the live table: register_pretrained / tests may change it

    try:
        here = location.resolve()
    except OSError:
        return None
    for alias, entry in _REGISTRY.items():
        if not (entry.shipped or entry.optional) or entry.local_dir is None:
            continue
        root = entry.local_dir.resolve()
        if here in (root, root / "stage2"):
            return alias
        if here == root / "stage1":
            return f"{alias}:stage1"
    return None


def _is_optional(alias: str) -> bool:
    """An optional asset alias (outside the package; hub/registry.py ``_OPTIONAL``)."""
    from .registry import _REGISTRY

    entry = _REGISTRY.get(alias.split(":")[0])
    return bool(entry is not None and entry.optional)


def _run_folder(location: Path) -> Path | None:
    """The run folder around a ``stage1`` / ``stage2`` checkpoint folder, if it looks like one."""
    parent = location.parent
    if location.name not in ("stage1", "stage2"):
        return None
    if any((parent / name).is_file() for name in ("metrics.json", "log.jsonl", "recipe.yaml", "train.log")):
        return parent
    return None


def _read_json_quietly(path: Path) -> Any:
    try:
        return loads_json(path.read_text(encoding="utf-8"), str(path))  # too deep: a ValueError
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _minutes(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _hardware(run: Path) -> str | None:
    """"1 process, device cpu, mixed precision no" from the trainer's first line in ``train.log``."""
    import re

    try:
        with open(run / "train.log", encoding="utf-8", errors="replace") as f:
            head = f.read(20000)
    except OSError:
        return None
    m = re.search(r"accelerate: (\d+) process\(es\), device ([^,\s]+), mixed precision ([^,\s]+)", head)
    if not m:
        return None
    n = int(m.group(1))
    return f"{n} process{'es' if n > 1 else ''}, device {m.group(2)}, mixed precision {m.group(3)}"


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    text = str(v)
    return f"'{text}'" if any(c in text for c in " '\"$`\\;&|<>()*?{}") else text


def _recipe_changes(base: Any, recipe: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted keys whose value in ``recipe`` differs from ``base`` (keys the run's recipe lacks are skipped)."""
    out: list[tuple[str, Any]] = []
    if not isinstance(recipe, dict):
        return out
    for key, value in recipe.items():
        dotted = f"{prefix}{key}"
        old = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict) and value and isinstance(old, dict):
            out.extend(_recipe_changes(old, value, dotted + "."))
        elif key != "description" and value != old and not (isinstance(value, dict) and not value and not old):
            out.append((dotted, value))
    return out


_MAX_SETS = 16  # longer --set lists point to the run folder's recipe.yaml instead


def _reproduce(recipe: dict[str, Any], run: Path | None) -> tuple[list[str], list[str]]:
    """The training commands that rebuild this recipe (``ccsam-zoo train``, which a wheel has), and the ``--set``
    overrides of the published recipe. A stage 2 trained in a separate run from saved stage-1 weights
    (``stage2.init``) takes two commands: the stage-1 run, then the stage-2 run from its ``stage1/`` folder.
    Paths are placeholders (``data.source=PATH/TO/cifar10``)."""
    name = recipe.get("name")
    if not name:
        return [], []
    recipe = portable_recipe(recipe)
    init = (recipe.get("stage2") or {}).get("init")
    try:
        from ..training.config import list_recipes, load_recipe, resolve_recipe

        if name in list_recipes():
            changes = _recipe_changes(resolve_recipe(load_recipe(name)), resolve_recipe(recipe))
            sets = [f"{k}={_yaml_value(v)}" for k, v in changes if k != "stage2.init"]
            if len(sets) <= _MAX_SETS:
                base = f"{TRAIN_COMMAND} --recipe {name}"
                if not init:
                    return [base + (" --set " + " ".join(sets) if sets else "")], sets
                first = [s for s in sets if not s.startswith("stage2.")]
                return [
                    f"{base} --output-dir RUN1" + (" --set " + " ".join(first) if first else "")
                    + "  # stage 1 (its own stage 2 is not used)",
                    f"{base} --output-dir RUN2 --set stage2.init=RUN1/stage1 {' '.join(sets)}".rstrip()
                    + "  # stage 2 from RUN1's stage-1 weights",
                ], sets  # fmt: skip
    except Exception:  # noqa: BLE001  (recipes not installed, a recipe that no longer loads)
        pass
    if run is not None and (run / "recipe.yaml").is_file():
        return [f"{TRAIN_COMMAND} --recipe recipe.yaml  # the run folder's recipe.yaml (set data.source first)"], []
    return [], []


def _run_recipe(run: Path | None, extras: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe: the run folder's ``recipe.yaml`` (``yaml.safe_load``), else the one in the extras."""
    if run is not None and (run / "recipe.yaml").is_file():
        import yaml

        try:
            data = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None
        if isinstance(data, dict):
            return data
    recipe = extras.get("recipe")
    return recipe if isinstance(recipe, dict) else {}


def _training_context(location: Path, extras: dict[str, Any], local: bool) -> dict[str, Any]:
    """Both stages (method, schedule, numbers, time), the command, wall time and hardware, from what exists."""
    run = _run_folder(location)
    recipe = _run_recipe(run, extras)
    run_metrics = _read_json_quietly(run / "metrics.json") if run else None
    run_metrics = run_metrics if isinstance(run_metrics, dict) else {}
    times, wall = stage_seconds(run) if run else ({}, None)
    sibling1 = _read_json_quietly(run / "stage1" / "ccsam_zoo.json") if run else None
    shipped1 = isinstance(sibling1, dict) and sibling1.get("method") is not None
    labels = stage_method_labels({**extras, "recipe": recipe,
                                  **({"stage1_method": sibling1["method"]} if shipped1 else {})})  # fmt: skip
    this = extras.get("stage")
    rows = []
    for n in (1, 2):
        cfg = recipe.get(f"stage{n}") if isinstance(recipe.get(f"stage{n}"), dict) else {}
        metrics = run_metrics.get(f"stage{n}")
        if not isinstance(metrics, dict) and run is not None:
            sibling = _read_json_quietly(run / f"stage{n}" / "ccsam_zoo.json")
            metrics = sibling.get("metrics") if isinstance(sibling, dict) else None
        if not isinstance(metrics, dict) and n == this:
            metrics = extras.get("metrics")
        m = metrics_percent(metrics) if isinstance(metrics, dict) else {}
        lr = cfg.get("lr")
        schedule = ", ".join(str(x) for x in (lr, cfg.get("schedule")) if x is not None)
        batch = cfg.get("batch_size")
        if n == 2 and cfg.get("sampler") and batch is not None:
            batch = f"{batch}, {str(cfg['sampler']).replace('_', '-')}"
        epochs = cfg.get("epochs")
        if n == 1 and (recipe.get("stage2") or {}).get("init") and not shipped1:
            epochs = "–"
        rows.append({
            "stage": f"{n} (this model)" if n == this else str(n),
            "method": labels.get(n) or "–",
            "epochs": "–" if epochs is None else epochs,
            "batch": "–" if batch is None else batch,
            "lr": schedule or "–",
            "top1": _fmt(m.get("top1")), "many": _fmt(m.get("many")),
            "medium": _fmt(m.get("medium")), "few": _fmt(m.get("few")),
            "time": _minutes(times.get(f"stage{n}")) or "–",
        })  # fmt: skip
    if all(r["method"] == "–" and r["epochs"] == "–" for r in rows):
        rows = []
    command = run_metrics.get("command") if isinstance(run_metrics.get("command"), str) else None
    command = portable_text(command) if command else None
    reproduce, sets = _reproduce(recipe, run) if recipe else ([], [])
    wall_s = run_metrics.get("wall_time_s")
    wall_s = float(wall_s) if isinstance(wall_s, (int, float)) and not isinstance(wall_s, bool) else wall
    resumed = resume_count(run) if run else 0
    if resumed and wall_s == wall:  # the epochs' span of a resumed run holds its pauses: no wall time
        wall_s = None
    hardware = run_metrics.get("hardware") if isinstance(run_metrics.get("hardware"), str) else None
    return {
        "stage_rows": rows,
        "stage_gaps": any("–" in (r["top1"], r["time"]) for r in rows),
        "recipe_name": recipe.get("name"),
        "recipe_sets": sets,
        "command": command,
        "reproduce": None if command or not reproduce else reproduce[0],
        "reproduce_runs": [] if command or len(reproduce) < 2 else reproduce,
        "train_command": TRAIN_COMMAND,
        "wall_time": _minutes(wall_s),
        "wall_time_source": "metrics.json" if wall_s is not None and wall_s != wall else "log.jsonl",
        "resumed": resumed,
        "hardware": hardware or (_hardware(run) if run else None),
        "run_recipe_link": local and run is not None and (run / "recipe.yaml").is_file(),
    }


def _card_context(
    folder: Path,
    extras: dict[str, Any],
    config: dict[str, Any],
    repo_id: str | None,
    revision: str | None,
    location: Path,
):
    from huggingface_hub import EvalResult, ModelCardData

    metrics = metrics_percent(extras.get("metrics") or {})
    paper = extras.get("paper_results")
    if paper is None:
        paper = paper_result_for(extras)
    dataset = extras.get("dataset_name")
    ir = _ir_int(extras)
    ds_label = pretty_dataset(dataset) + (f" (IR {ir})" if ir and (dataset or "").startswith("cifar") else "")
    arch = extras.get("architecture") or config.get("architecture")
    stage = extras.get("stage")
    run = _run_folder(location)
    sibling1 = _read_json_quietly(run / "stage1" / "ccsam_zoo.json") if run else None
    if isinstance(sibling1, dict) and sibling1.get("method") is not None:
        extras = {**extras, "stage1_method": sibling1["method"]}
    labels = stage_method_labels(extras)
    methods = " + ".join(labels[n] for n in (1, 2) if labels.get(n)) or _method_label(extras)
    title = f"CC-SAM zoo: {_pretty_arch(arch)} on {ds_label}: {methods}" + (f", stage-{stage} model" if stage else "")
    results = []
    for key, label in _GROUPS:
        ours = metrics.get(key)
        ref = paper.get(key) if paper else None
        gap = ours - ref if ours is not None and ref is not None else None
        results.append({"key": key, "group": label, "ours": _fmt(ours), "paper": _fmt(ref), "gap": _fmt(gap, True)})
    for row in results:  # keep None for the limitation check, strings for the template
        row["ours_value"] = metrics.get(row["key"])
    split = (extras.get("metrics") or {}).get("split", "test")
    hf_dataset = _HF_DATASETS.get(dataset or "")
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Long-tailed image classification",
            dataset_type=hf_dataset or (dataset or "unknown"),
            dataset_name=ds_label,
            dataset_config=f"lt-ir{ir}" if ir else None,
            dataset_split=split,
            metric_type=_METRIC_TYPES[key],
            metric_name=f"{label} top-1 accuracy",
            metric_value=round(metrics[key], 2),
        )
        for key, label in _GROUPS
        if metrics.get(key) is not None
    ]
    recipe = extras.get("recipe") or {}
    base_model = extras.get("base_model")
    if base_model is None and isinstance(recipe, dict):
        pretrained = (recipe.get("model") or {}).get("pretrained")
        if isinstance(pretrained, str) and "/" in pretrained:
            base_model = pretrained
    card_data = ModelCardData(
        license=extras.get("license") or (config.get("pretrained_cfg") or {}).get("license") or "apache-2.0",
        library_name="timm",
        pipeline_tag="image-classification",
        tags=["image-classification", "long-tailed", "cc-sam", "timm", "ccsam_zoo"],
        datasets=[hf_dataset] if hf_dataset else None,
        base_model=base_model,
        metrics=["accuracy"],
        model_name=(repo_id or default_repo_id(extras)).split("/")[-1],
        eval_results=eval_results or None,
    )
    names = extras.get("class_names") or config.get("label_names") or []
    counts = extras.get("class_counts") or []
    groups = extras.get("shot_groups") or []
    per_class = metrics["per_class"]
    classes = []
    if names and len(names) <= 20:
        for c, name in enumerate(names):
            classes.append({
                "index": c,
                "name": name,
                "count": counts[c] if c < len(counts) else "–",
                "group": groups[c] if c < len(groups) else "–",
                "acc": _fmt(per_class[c] if c < len(per_class) else None),
            })
    pcfg = config.get("pretrained_cfg") or {}
    rev = None if revision in (None, "main") else revision
    pretrained = (recipe.get("model") or {}).get("pretrained") if isinstance(recipe, dict) else None
    alias = None if repo_id else _shipped_alias(location)
    open_set = extras.get("open_set") if isinstance(extras.get("open_set"), dict) else None
    threshold = open_set.get("threshold") if open_set else None
    tpr = open_set.get("tpr") if open_set else None
    val_per_class = ((recipe.get("data") or {}).get("val_per_class")) if isinstance(recipe, dict) else None
    return card_data, {
        "title": title,
        "repo_id": repo_id,
        "revision": rev,
        "alias": alias,
        "alias_optional": bool(alias) and _is_optional(alias),
        "local_path": None if repo_id or alias else str(location),
        "local_relative": not location.is_absolute(),
        "has_threshold": threshold is not None,
        "threshold": f"{threshold:.4g}" if isinstance(threshold, (int, float)) else threshold,
        "threshold_score": (open_set or {}).get("score") or "cosine",
        "threshold_tpr": f"{100 * tpr:.0f}%" if isinstance(tpr, (int, float)) else None,
        "default_rule": _default_rule_summary(open_set),
        "calibrated_scores": ", ".join(f"`{s}`" for s in (open_set or {}).get("thresholds") or {}
                                       if s != (open_set or {}).get("score")) or None,  # fmt: skip
        "no_val_split": val_per_class == 0,
        "notes": _kept_notes(folder),
        **_training_context(location, extras, local=not repo_id),
        "arch": arch,
        "arch_pretty": _pretty_arch(arch),
        "num_classes": config.get("num_classes"),
        "model_args": config.get("model_args") or {},
        "stage": stage,
        "method_label": _method_label(extras),
        "stage1_method": labels.get(1),
        "stage2_method": labels.get(2),
        "dataset_label": ds_label,
        "split": split,
        "counts_total": f"{sum(counts):,}" if counts else None,
        "max_count": max(counts) if counts else None,
        "min_count": min(counts) if counts else None,
        "shot_thresholds": extras.get("shot_thresholds"),
        "shot_rule": extras.get("shot_rule"),
        "input_size": "x".join(str(v) for v in pcfg.get("input_size", [])),
        "mean": pcfg.get("mean"),
        "std": pcfg.get("std"),
        "pretrained_backbone": pretrained,
        "results": results,
        "paper": paper,
        "classes": classes,
        "has_plot": (folder / "per_class_accuracy.png").exists(),
        "open_set": extras.get("open_set"),
        "sharpness": _sharpness_section(folder),
        "prototypes": bool(extras.get("prototypes")),
        "open_set_stats": extras.get("open_set_stats"),
        "fingerprint": extras.get("data_fingerprint"),
        "limitations": _limitations(extras, [{"key": r["key"], "ours": r["ours_value"]} for r in results], paper),
        "citation": CITATION,
    }


def render_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    *,
    location: str | os.PathLike | None = None,
) -> str:
    """Render the model card (README.md text) of a checkpoint folder from its config and extras.

    ``repo_id`` / ``revision``: the Hub repo the card is for (``push_to_hub`` passes them); the usage lines
    load from it. Without a repo the card says how to load the folder itself (by its path, or by its alias
    for the model shipped in the package) and names no Hub repo. ``location``: where the folder will live
    when it is rendered elsewhere first (``save_pretrained`` renders into a temporary folder); it is the
    path shown and the place the run folder (``metrics.json``, ``log.jsonl``, ...) is looked for.
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    location = Path(location) if location is not None else folder
    config = read_json(folder / CONFIG_NAME, "timm config")
    extras = read_extras(folder)
    extras.setdefault("architecture", config.get("architecture"))
    if repo_id and revision is None and extras.get("stage") == 1:
        revision = "stage1"  # push_to_hub puts stage 1 on the "stage1" branch
    card_data, context = _card_context(folder, extras, config, repo_id, revision, location)
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **context)
    return str(card)
