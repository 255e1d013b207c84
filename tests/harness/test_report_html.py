"""The lab report of a real short run (the run loop over a scripted device): its structure, and where Debian's
``chromium`` is installed, a headless rendering with no horizontal overflow."""

import html
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.plan import make_plan
from harness.report import build_report
from harness.runloop import create_run, run_experiment
from harness.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_run_backend import ScriptedBackend, models  # noqa: E402

FAST = {"window_s": 0.01, "idle_s": 0.01, "min_reps": 3, "max_reps": 3, "min_inferences_per_model": 4,
        "min_inference_s_per_model": 0.01, "levels": [10, 50]}
CHROMIUM = "/usr/bin/chromium"


class Page(HTMLParser):
    """The parts of the page the tests look at: section ids, tables by id with their rows, images, links."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
            self.row_classes[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.row_classes[self._table].append(a.get("class") or "")
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "a" and not a.get("href", "#").startswith("#"):
            self.links.append(a["href"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def _run(st, backend):
    plan = make_plan("virtual", "scripted", FAST)
    rid = create_run(st, backend, plan)
    run_experiment(st, backend, plan, models(), rid, progress=False)
    return rid


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two runs on one device; the second loses the phone in one window (an invalid window) and is reported."""
    db = tmp_path_factory.mktemp("report") / "h.db"
    with Store(db) as st:
        earlier = _run(st, ScriptedBackend(noise=0.01, seed=1))
        rid = _run(st, ScriptedBackend(noise=0.01, seed=2, fail_windows={4}))
        rep = build_report(st, rid)
        windows = st.windows(rid)
    return rep, rid, earlier, windows


def test_report_structure(report):
    rep, rid, earlier, windows = report
    text = (rep.out_dir / "report.html").read_text()
    page = Page(text)
    assert page.sections == ["summary", "tables", "latency", "figures", "traces", "windows", "earlier",
                             "fingerprint", "files"]
    # the run in words: device, the method by name (not ""), status, wall time and overhead
    assert "method <b>mean</b>" in text and '"method": ""' not in text
    assert "Status: <b" in text and "overhead" in text and "inside measurement windows" in text
    # Table 3 and 4: header + one row per model, most pruned first
    for name in ("table3", "table4"):
        body = page.tables[name][1:]
        assert [r[1] for r in body] == ["50", "10", "0"], body
        assert all("±" in r[2] for r in body)
    # latency: p50/p90/p99 from the stored per-inference latencies; load / first inference not measured: dash
    lat = {r[0]: r for r in page.tables["latency-table"][1:]}
    assert set(lat) == {"L0", "L10", "L50"}
    assert float(lat["L50"][1]) == pytest.approx(5.0, rel=0.1) and lat["L50"][4] == lat["L50"][5] == "–"
    # one row per window, in schedule order, the lost one invalid with its reason
    rows = page.tables["window-table"][1:]
    assert len(rows) == len(windows) and [int(r[0]) for r in rows] == [w.seq for w in windows]
    bad = [r for r, cls in zip(rows, page.row_classes["window-table"][1:], strict=True) if "invalid" in cls]
    assert len(bad) == 1 and "phone lost" in bad[0][4]
    idle_power = [float(r[8]) for r in rows if r[2] == "idle" and r[4] == "valid"]
    assert idle_power and all(p == pytest.approx(1.0) for p in idle_power)
    # every image exists and is a PNG; drift, FLOPs and the trace thumbnails are there
    assert {"energy_time_vs_flops.png", "drift.png", "traces.png", "power_trace.png"} <= set(page.images)
    for img in page.images:
        assert (rep.out_dir / img).read_bytes()[:4] == b"\x89PNG", img
    # links to the data files, all written
    assert {"tables.csv", "rows.json", "windows.csv", "rows.parquet", "windows.parquet"} <= set(page.links)
    for link in page.links:
        assert (rep.out_dir / link).is_file(), link
    # the earlier run on the same device and code is compared, model by model
    assert f"Against {earlier}" in text
    verdicts = next(v for k, v in page.tables.items() if v and v[0][:3] == ["model", "metric", "verdict"])
    assert len(verdicts) - 1 == 6  # 3 models x (time, energy)
    assert '"serial": "S1"' in html.unescape(text)  # the fingerprint


def test_report_says_target_not_reached_and_shows_row_fields(report, tmp_path):
    rep, rid, _, _ = report
    db = rep.out_dir.parent / "h.db"
    with Store(db) as st:
        st.add_event(rid, "complete", json.dumps({"wall_s": 10.0, "measured_s": 8.0, "target_reached": False,
                                                  "missed": ["L10: savings CI ±3.1 points (target 2)"]}))
        rep2 = build_report(st, rid, tmp_path / "again")
    text = (rep2.out_dir / "report.html").read_text()
    assert "complete, target not reached" in text and "L10: savings CI ±3.1 points" in text
    assert "overhead 20.0%" in text


def test_latency_fields_win_and_absent_ones_are_dashes():
    from harness.report_data import latency_rows

    rows = [{"model": "L0", "level": 0, "latency_p50_ms": 1.5, "latency_p90_ms": 2.0, "latency_p99_ms": 2.5,
             "load_ms": 30.0, "first_inference_ms": None}]
    got, computed = latency_rows(None, rows, [])
    assert not computed
    assert [got[0][k] for k in ("latency_p50_ms", "load_ms", "first_inference_ms")] == ["1.500", "30.000", "–"]


def _chromium(args: list[str], tmp: Path, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}"]
    env = {**os.environ, "HOME": str(tmp)}
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout_s, env=env,
                          check=False)


OVERFLOW_PROBE = """<script>
window.addEventListener('load', function () {
  var d = document.documentElement, p = document.createElement('p');
  p.id = 'overflow-probe';
  p.textContent = 'scroll=' + d.scrollWidth + ' client=' + d.clientWidth + ' imgs=' +
    Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.appendChild(p);
});
</script>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")
@pytest.mark.parametrize("width", [1280, 820])
def test_report_has_no_horizontal_overflow_in_chromium(report, tmp_path, width):
    import re

    rep, *_ = report
    # the probe goes into a copy beside the original, so the images load from the same folder
    probe = rep.out_dir / f"probe-{width}.html"
    probe.write_text((rep.out_dir / "report.html").read_text().replace("</body>", OVERFLOW_PROBE + "</body>"))
    got = _chromium([f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                    tmp_path)
    m = re.search(r"scroll=(\d+) client=(\d+) imgs=(\d+)", got.stdout)
    assert m, (got.returncode, got.stderr[-2000:])
    scroll, client, imgs = map(int, m.groups())
    assert scroll <= client, f"page {scroll} px wide in a {client} px window"
    assert imgs == len(Page((rep.out_dir / "report.html").read_text()).images)  # every figure loaded
    if width != 1280:
        return
    shot = tmp_path / "shot.png"
    got = _chromium([f"--window-size={width},1600", f"--screenshot={shot}", probe.as_uri()], tmp_path)
    assert shot.read_bytes()[:4] == b"\x89PNG", got.stderr[-2000:]


@pytest.mark.parametrize("events,want", [
    ([("complete", '{"wall_s": 10, "measured_s": 9}')], "complete, target not reached"),  # L0 ±10% > 5%
    ([("complete", '{"target_reached": true}')], "complete"),  # the run loop's word wins
    ([("complete", "{}"), ("target_not_reached", "L10 by 1.1 points")], "complete, target not reached"),
    ([("complete", '{"status": "complete, target not reached"}')], "complete, target not reached"),
    ([("interrupted", "phone lost")], "interrupted"),
])
def test_status_in_words(events, want):
    from harness.report_data import run_status

    rows = [{"model": "L0", "time_ms": 10.0, "time_ms_ci": 1.0, "energy_mj": None}]
    got = run_status([("created", "", "t0"), *[(e, d, "t") for e, d in events]], rows, {"target_ci_pct": 5})
    assert got["status"] == want
    assert (want == "complete, target not reached") == (got["target_reached"] is False and bool(got["missed"]))


class HostLike(ScriptedBackend):
    """A device with no power monitor: time only, no traces."""

    measures_energy = False
    instrument = ""

    def run_window(self, model, n, warmup):
        res = super().run_window(model, n, warmup)
        res.energy_j = res.mean_power_w = None
        res.trace = None
        return res


def test_report_of_a_timing_only_run(tmp_path):
    with Store(tmp_path / "h.db") as st:
        plan = make_plan("host", "scripted", {**FAST, "idle_s": 0.0})
        be = HostLike()
        rid = create_run(st, be, plan)
        run_experiment(st, be, plan, models(), rid, progress=False)
        rep = build_report(st, rid)
    text = (rep.out_dir / "report.html").read_text()
    page = Page(text)
    assert "table3" not in page.tables and len(page.tables["table4"]) == 4
    assert "energy is not measured" in text and "No raw traces were kept" in text
    assert page.tables["window-table"][0][-1] == "ms"  # no mJ column
    assert "traces.png" not in page.images and "drift.png" in page.images


def test_no_valid_window_is_no_precision():
    from harness.report_data import run_status

    rows = [{"model": "L0", "time_ms": float("nan"), "time_ms_ci": float("nan"), "valid_windows": 0}]
    got = run_status([("created", "", "t0"), ("complete", '{"wall_s": 1, "measured_s": 1}', "t")], rows,
                     {"target_ci_pct": 5})
    assert got["status"] == "complete, target not reached" and "L0: 0 valid window(s)" in got["missed"][0]
