"""Markdown tables of the development-set axis of the accuracy benchmark (``accuracy.py --dev``).

    python benchmarks/report_accuracy_dev.py benchmarks/results/accuracy-dev.json \
        [--crb benchmarks/results/crb-multislice.json]

One table per set: a row per method and dose, MAE per component (strain in %, theta in deg) with the
regression slope of prediction on label in brackets, and the Cramer-Rao bound where given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMPONENTS = ("exx", "eyy", "exy", "theta")
METHODS = (
    ("encoder", "encoder alone"),
    ("distilled", "encoder distilled"),
    ("refined", "encoder + refinement"),
    ("classical", "classical fit"),
)


def tables(result: dict, crb: dict | None) -> str:
    out = []
    sets = list(dict.fromkeys(c["set"] for c in result["cells"]))
    for name in sets:
        out += [f"### {name}", "", "| method | dose | " + " | ".join(COMPONENTS) + " |", "|---" * 6 + "|"]
        cells = [c for c in result["cells"] if c["set"] == name]
        for key, label in METHODS:
            for c in cells:
                m = c.get(key)
                if not m or "mae" not in m:
                    continue
                vals = [f"{m['mae'][k]:.3f} ({m['slope'][k]:.2f})" for k in COMPONENTS]
                out.append(f"| {label} | {c['dose']} | " + " | ".join(vals) + " |")
        sets_crb = (crb or {}).get("sets", {})
        bound = (sets_crb.get(name) or sets_crb.get(f"dev-{name}") or {}).get("binning", {}).get("1")
        if bound:
            for c in cells:
                b = bound.get(c["dose"])
                if b:
                    out.append(
                        f"| Cramer-Rao bound | {c['dose']} | " + " | ".join(f"{b[k]:.3f}" for k in COMPONENTS) + " |"
                    )
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path)
    ap.add_argument("--crb", type=Path, default=None)
    args = ap.parse_args()
    crb = json.loads(args.crb.read_text()) if args.crb else None
    print(tables(json.loads(args.result.read_text()), crb))


if __name__ == "__main__":
    main()
