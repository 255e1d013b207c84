"""Write a sweep's files (Markdown, CSV, PNG and JSON per method) atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.cliutil import _clean, atomic_write_bytes
from harness.sweep.paper import PaperTable
from harness.sweep.plot import plot_png
from harness.sweep.report import result_json
from harness.sweep.tables import SweepResult
from harness.sweep.text import compare_paper_markdown, footer, methods_markdown, table2_csv, table2_markdown


def safe_name(name: str) -> str:
    """A method name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if name.endswith(".toml") else name) or "method"


def write_outputs(res: SweepResult, out_dir: str | Path, paper: PaperTable | None = None) -> dict[str, str]:
    """Write Markdown, CSV, PNG and JSON for every method (atomically); returns kind -> path."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    for t in res.tables:
        name = safe_name(t.method)
        items = {
            f"table2_{name}.md": (f"# Table 2 — method {t.method}\n\n{t.description}\n\n" + table2_markdown(t)
                                  + footer(res, t)).encode(),
            f"table2_{name}.csv": table2_csv(t).encode(),
            f"accuracy_vs_flops_{name}.png": plot_png(t),
        }
        if paper is not None:
            items[f"compare_paper_{name}.md"] = compare_paper_markdown(t, paper).encode()
        for fname, blob in items.items():
            atomic_write_bytes(out / fname, blob)
            files[fname] = str(out / fname)
    if len(res.tables) > 1:
        atomic_write_bytes(out / "methods.md", methods_markdown(res.tables).encode())
        files["methods.md"] = str(out / "methods.md")
    files["sweep.json"] = str(out / "sweep.json")
    blob = json.dumps(_clean(result_json(res, paper, files)), indent=1).encode()
    atomic_write_bytes(out / "sweep.json", blob)
    return files
