"""Hindsight bound of the level-50 pair variants: per pair, the smallest drop any measured ``recon`` variant
reached on the test set, and the mean of those minima over the ten pairs.

Reads the variant table of docs/methods.md ("Session 10": one row per variant, one column per Table 2 pair,
blank where a variant was not run on that pair) and prints the per-pair minima, which variant gave each, and
their mean (all rows, and the rows run on all ten pairs only).  Choosing per pair with the test set itself is
the most optimistic selection possible (the minimum of noisy values is biased low), so the mean is a lower
bound on what choosing among these variants, by any rule, can reach.

    python benchmarks/probes/oracle.py [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "methods.md"
HEADER = re.compile(r"^\| variant \| (\{\d,\d\} \| ){10}mean \|")
NUMBER = re.compile(r"-?\d+\.\d+")


def variant_table(text: str) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """The pairs and the (variant, drops) rows of the first markdown table whose header matches ``HEADER``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if HEADER.match(line)), None)
    if start is None:
        raise SystemExit(f"oracle: no variant table in {DOC}")
    pairs = [c.strip() for c in lines[start].strip("|").split("|")][1:11]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].replace("*", "")
        drops = []
        for cell in cells[1:11]:
            m = NUMBER.search(cell)
            drops.append(float(m.group()) if m else None)
        rows.append((name, drops))
    return pairs, rows


def hindsight(pairs: list[str], rows: list[tuple[str, list[float | None]]], complete_only: bool) -> dict:
    """Per pair the smallest drop and its variant, and the mean of the minima."""
    use = [r for r in rows if not complete_only or all(d is not None for d in r[1])]
    best = {}
    for j, pair in enumerate(pairs):
        vals = [(d[j], name) for name, d in use if d[j] is not None]
        drop, name = min(vals)
        best[pair] = {"drop": drop, "variant": name}
    mean = sum(b["drop"] for b in best.values()) / len(best)
    return {"rows": len(use), "per_pair": best, "mean_drop": round(mean, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    pairs, rows = variant_table(DOC.read_text())
    out = {"all_rows": hindsight(pairs, rows, False), "complete_rows": hindsight(pairs, rows, True)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, res in out.items():
        print(f"{key} ({res['rows']} variants): mean of per-pair minima {res['mean_drop']:.3f}")
        for pair, b in res["per_pair"].items():
            print(f"  {pair:6s} {b['drop']:5.2f}  {b['variant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
