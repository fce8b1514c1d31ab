"""Figures and Markdown tables from benchmarks/accuracy.py's JSON (what docs/accuracy.md shows).

python benchmarks/report_accuracy.py accuracy.json --out docs/figures   # prints the Markdown tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgestem.report import _pyplot, save_figure

METHODS = [
    ("ccstae", "CC-ST-AE encoder", "C0", "o-"),
    ("ccstae_refined", "encoder + likelihood refinement", "C2", "s-"),
    ("classical", "classical disk fit", "C1", "^-"),
]
COMPONENTS = [("exx", "%"), ("eyy", "%"), ("exy", "%"), ("theta", "deg")]


def table(d: dict, axis: str) -> str:
    """Markdown table of MAE per method along one noise axis."""
    levels = d["noise_w"] if axis == "w" else d["dose"]
    suffix = "" if axis == "w" else "_dose"
    head = "| method | " + " | ".join(f"{'w' if axis == 'w' else 'dose'} = {lv:g}" for lv in levels) + " |"
    lines = [head, "|---|" + "---|" * len(levels)]
    rows = [(f"{m}{suffix}", name) for m, name, _, _ in METHODS]
    if axis != "w":
        rows.append(("crb_dose", "Cramer-Rao bound"))
    for key, name in rows:
        cells = []
        for i in range(len(levels)):
            cells.append(" / ".join(f"{d[key][c][i]:.3f}" for c, _ in COMPONENTS))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(d: dict, axis: str, path: Path) -> Path:
    plt = _pyplot()
    levels = d["noise_w"] if axis == "w" else d["dose"]
    suffix = "" if axis == "w" else "_dose"
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), layout="constrained")
    for ax, (c, unit) in zip(axes, COMPONENTS, strict=True):
        for m, name, color, style in METHODS:
            ax.plot(levels, d[f"{m}{suffix}"][c], style, color=color, label=name)
        if axis != "w":
            ax.plot(levels, d["crb_dose"][c], "k--", label="Cramer-Rao bound")
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("dose (e-/pattern)")
        else:
            ax.set_xlabel("background weight w (1e5 counts)")
        ax.set_yscale("log")
        ax.set_title(f"{c} MAE ({unit})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNG figures")
    args = ap.parse_args()
    d = json.loads(args.json.read_text())
    figure(d, "w", args.out / "accuracy-vs-w.png")
    figure(d, "dose", args.out / "accuracy-vs-dose.png")
    print("MAE exx / eyy / exy (%) / theta (deg)\n")
    print(table(d, "w"))
    print()
    print(table(d, "dose"))


if __name__ == "__main__":
    main()
