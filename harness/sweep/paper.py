"""The paper's Table 2 (Guo & Potkonjak 2017), embedded and readable from its CSV layout."""

from __future__ import annotations

import math
from pathlib import Path

from harness.errors import UsageError

#: Per subset size, per level (% channels removed) ``(mean %, 95% CI half-width %)``; level 0 is "None".
PaperTable = dict[int, dict[float, tuple[float, float]]]

#: Levels 10..50 are the paper's 14.3/27.9/38.9/48.6/57.8% FLOPs pruned.
PAPER_LEVEL_FLOPS_PCT: dict[float, float] = {50.0: 57.8, 40.0: 48.6, 30.0: 38.9, 20.0: 27.9, 10.0: 14.3}
#: ``../shared/paper/table2_accuracy.csv`` without its header.
_PAPER_ROWS = """\
2,84.1,6.7,90.8,4.0,95.2,2.4,96.1,3.1,97.7,1.5,98.5,0.6
3,72.7,7.0,84.0,4.5,91.1,2.6,93.9,1.9,95.4,1.9,96.4,1.2
4,62.0,9.0,76.0,7.6,85.8,4.4,90.8,2.7,93.3,2.1,95.1,1.0
5,59.8,2.5,74.9,3.2,83.8,2.6,89.3,1.7,92.4,1.2,94.2,0.8
6,55.1,3.4,72.5,2.9,82.7,1.6,88.7,0.8,92.0,0.7,92.9,0.9
7,47.0,5.6,68.9,2.5,79.5,1.8,86.0,1.5,89.6,1.2,91.8,0.8
8,47.4,2.9,67.7,1.2,78.7,1.3,86.3,0.7,89.8,0.7,90.7,0.6
9,36.3,2.2,65.8,1.5,75.4,1.2,83.7,0.7,88.0,0.5,90.3,0.6
10,28.7,,62.6,,74.3,,82.7,,87.2,,89.6,
"""
_PAPER_CSV_LEVELS = (50.0, 40.0, 30.0, 20.0, 10.0, 0.0)


def _parse_paper_rows(text: str) -> PaperTable:
    out: PaperTable = {}
    for line in text.strip().splitlines():
        parts = line.split(",")
        row = {}
        for i, lvl in enumerate(_PAPER_CSV_LEVELS):
            m, c = parts[1 + 2 * i], parts[2 + 2 * i]
            row[lvl] = (float(m), float(c) if c.strip() else math.nan)
        out[int(parts[0])] = row
    return out


PAPER_TABLE2: PaperTable = _parse_paper_rows(_PAPER_ROWS)


def load_paper_table(path: str | Path) -> PaperTable:
    """Read a Table 2 CSV in the paper's layout (``classes,p57.8_mean,p57.8_ci,...,none_mean,none_ci``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"paper table {p}: cannot read ({exc})") from None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("classes,"):
        raise UsageError(f"paper table {p}: expected a header 'classes,p57.8_mean,...' as in table2_accuracy.csv")
    try:
        return _parse_paper_rows("\n".join(lines[1:]))
    except (ValueError, IndexError):
        raise UsageError(f"paper table {p}: rows are not classes + 12 numbers as in table2_accuracy.csv") from None
