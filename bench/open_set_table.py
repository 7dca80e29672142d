"""One markdown table of every open-set score of several ``bench/open_set_report.py`` reports (docs/RESULTS.md).

    python bench/open_set_table.py REPORT.json [REPORT.json ...] [--all-variants]

Per model and score: the SELECTION columns (validation images vs the selection half of ``tinyimagenet_ood``;
uniform-noise and constant images rejected, the rule's guard) beside the REPORT columns (CIFAR-10 test vs the
report half; AUROC, FPR95, TinyImageNet rejected, each generated far-OOD kind rejected, known test images rejected
per shot group), all in %. The default (``open_set.DEFAULT_RULE``) is in bold. The post-hoc variants of the report
(prior-corrected logits; class-conditional thresholds) are kept where they win on the SELECTION set: a selection
AUROC above the plain score's by more than the rule's 0.1-point tie, or, for class-conditional thresholds (same
AUROC), more selection uniform-noise + constant images rejected. ``--all-variants`` shows every variant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FAR = ("uniform", "gaussian", "constant", "blurred", "uniform_64px")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def wins_on_selection(rep: dict[str, Any], name: str) -> bool:
    """A variant row better than its plain score on the selection set (see the module docstring)."""
    r = rep["scores"][name]
    plain = rep["scores"][r["score"]]["select"]
    if r["select"]["auroc"] > plain["auroc"] + 0.001:
        return True
    junk = sum(r["select"][k] for k in ("uniform", "constant"))
    return "class-conditional" in name and junk > sum(plain[k] for k in ("uniform", "constant")) + 0.01


def rows_of(rep: dict[str, Any], variants: bool) -> list[list[str]]:
    """Table rows of one report."""
    groups = list(dict.fromkeys(rep["shot_groups"].values()))
    out = []
    for name, r in rep["scores"].items():
        wins = "[" in name and wins_on_selection(rep, name)
        if "[" in name and not (variants or wins):
            continue
        sel, rpt = r["select"], r["report"]
        label = f"**{name}** (default)" if name == rep["default"] else name
        if wins:
            label += " (wins on selection)"
        by_group = rpt.get("known_rejected_by_group") or {}
        out.append([
            f"`{rep['model']}`", label, _pct(sel["auroc"]), _pct(sel["fpr95"]),
            f"{_pct(sel['uniform'])} / {_pct(sel['constant'])}",
            _pct(rpt["auroc"]), _pct(rpt["fpr95"]), _pct(rpt["ood_rejected"]),
            " / ".join(_pct(rpt[k]) for k in FAR),
            " / ".join(_pct(by_group.get(g)) for g in groups),
        ])  # fmt: skip
    return out


def table(reports: list[dict[str, Any]], variants: bool = False) -> str:
    """The markdown table of ``reports`` (one block of rows per model)."""
    head = ["Model", "Score", "Sel. AUROC", "Sel. FPR95", "Sel. uniform / constant rej.", "AUROC", "FPR95",
            "TinyImageNet rej.", "uniform / gaussian / constant / blurred / uniform_64px rej.",
            "known rej. per shot group"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rep in reports:
        groups = "/".join(dict.fromkeys(rep["shot_groups"].values()))
        for row in rows_of(rep, variants):
            row[-1] = f"{row[-1]} ({groups})"
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--all-variants", action="store_true", help="every class-conditional and prior-corrected row")
    a = p.parse_args(argv)
    print(table([json.loads(f.read_text(encoding="utf-8")) for f in a.reports], a.all_variants))


if __name__ == "__main__":
    main()
