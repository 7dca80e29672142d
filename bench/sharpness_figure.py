"""The results page's sharpness figure and table: several ``ccsam-zoo sharpness`` reports side by side.

Reads ``sharpness.json`` from each ``LABEL=FOLDER``, plots the loss increase against the relative noise norm
(``ccsam_zoo.diagnostics.plots.plot_comparison``; one panel per parameter set, colour = shot group, line
style = model) and prints, as JSON, per report and group: clean loss, mean loss increase at the summary
norms and the worst-case increase with its ball.

    python bench/sharpness_figure.py ce=runs/sharpness/ce-head ccsam=runs/sharpness/ccsam-head \\
        ce=runs/sharpness/ce-all ccsam=runs/sharpness/ccsam-all --out docs/figures/sharpness_ce_vs_ccsam.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ccsam_zoo.diagnostics.plots import plot_comparison


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", metavar="LABEL=FOLDER", help="a label and a sharpness report folder")
    ap.add_argument("--curve", default="local", help="which range to plot (default local)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    results, table = {}, {}
    for item in args.reports:
        label, sep, folder = item.partition("=")
        if not sep:
            ap.error(f"expected LABEL=FOLDER, got {item!r}")
        path = Path(folder) / "sharpness.json"
        if not path.is_file():
            ap.error(f"{path} not found: run `ccsam-zoo sharpness ... --output {folder}` first")
        result = json.loads(path.read_text())
        key = f"{label}, {result['config']['params']}"
        results[key] = result
        worst = result["summary"].get("worst_case") or {}
        table[key] = {
            "clean": result["clean"],
            "loss_increase": result["summary"]["loss_increase"],
            "worst_case": {k: worst.get(k) for k in ("rho", "rho_mode", "increase")} if worst else None,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_comparison(results, args.out, curve=args.curve)
    print(json.dumps({"figure": str(args.out), "reports": table}, indent=1))


if __name__ == "__main__":
    main()
