"""Host measurement: rows with the shared keys, Table 4 writers, interleaved timing of real programs."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from harness.errors import UsageError
from harness.hostrun import (
    HostRunOptions,
    ModelEntry,
    measure_host,
    summarize_rows,
    table4_csv,
    table4_markdown,
    write_tables,
)

SEAM_KEYS = {"level", "flops_pruned_pct", "time_ms", "time_ms_ci", "time_saved_pct", "energy_mj", "energy_mj_ci",
             "energy_saved_pct", "valid_windows", "invalid_windows"}


def _models():
    return [ModelEntry(0, "base.pte", 1000, 0.0), ModelEntry(10, "l10.pte", 850, 15.0),
            ModelEntry(50, "l50.pte", 400, 60.0)]


def test_rows_from_synthetic_latencies_have_exact_answers():
    lat = np.vstack([np.full(100, 10.0), np.full(100, 9.0), np.full(100, 4.0)])
    lat[:, 0] = 1000.0  # one outlier per model, trimmed away
    rows = summarize_rows(_models(), lat)
    assert [r["level"] for r in rows] == [0, 10, 50] and all(SEAM_KEYS <= set(r) for r in rows)
    assert [r["time_ms"] for r in rows] == [10.0, 9.0, 4.0]
    assert [r["time_saved_pct"] for r in rows] == pytest.approx([0.0, 10.0, 60.0])
    assert rows[2]["time_saved_per_flops_saved"] == pytest.approx(1.0)
    assert rows[1]["time_saved_per_flops_saved"] == pytest.approx(10.0 / 15.0)
    assert all(r["energy_mj"] is None and r["energy_saved_pct"] is None for r in rows)
    assert rows[1]["time_ms_mean"] == pytest.approx((99 * 9.0 + 1000.0) / 100)


def test_rows_carry_percentiles_and_phases():
    from harness.latency import Phases

    lat = np.vstack([np.arange(1.0, 102.0), np.arange(1.0, 102.0) / 2, np.full(101, 4.0)])
    phases = [Phases(20.0, 9.0, 30.0), Phases(10.0, 4.5, 15.0), Phases()]
    rows = summarize_rows(_models(), lat, phases=phases)
    assert (rows[0]["latency_p50_ms"], rows[0]["latency_p90_ms"], rows[0]["latency_p99_ms"]) == (51.0, 91.0, 100.0)
    assert rows[1]["latency_p99_ms"] == 50.0
    assert (rows[0]["load_ms"], rows[0]["first_inference_ms"], rows[0]["warmup_ms"]) == (20.0, 9.0, 30.0)
    assert rows[2]["load_ms"] is None
    assert summarize_rows(_models(), lat)[0]["first_inference_ms"] is None


def test_ci_propagates_into_time_saved():
    rng = np.random.default_rng(0)
    lat = np.vstack([10 + rng.normal(0, 0.5, 400), 5 + rng.normal(0, 0.25, 400)])
    rows = summarize_rows(_models()[:2], lat)
    assert rows[0]["time_ms_ci"] == pytest.approx(0.05, rel=0.3)  # ~ 1.98 * 0.5 / sqrt(400) / ...
    assert rows[1]["time_saved_pct"] == pytest.approx(50.0, abs=0.5)
    assert 0 < rows[1]["time_saved_pct_ci"] < 1.0 and rows[0]["time_saved_pct_ci"] == 0.0


def test_without_a_base_model_nothing_is_saved():
    rows = summarize_rows(_models()[1:], np.ones((2, 10)))
    assert rows[0]["time_saved_pct"] is None and rows[0]["time_saved_per_flops_saved"] is None


def test_table4_layout_markdown_and_csv(tmp_path):
    lat = np.vstack([np.full(20, 10.0), np.full(20, 9.0), np.full(20, 4.0)])
    rows = summarize_rows(_models(), lat)
    text = table4_csv(rows)
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["channels_removed_pct"] for r in table] == ["50", "10", "0"]  # paper order: base last
    assert table[0]["flops_pruned_pct"] == "60.00" and table[0]["time_ms"] == "4.000"
    assert table[0]["time_saved_pct"] == "60.00" and table[2]["time_saved_pct"] == "0.00"
    assert {table[0]["energy_mj"], table[0]["energy_saved_pct"]} == {"not measured"}
    md = table4_markdown(rows, "host")
    lines = md.splitlines()
    assert lines[0] == "**host**" and lines[2].startswith("| FLOPs pruned (%) | channels removed (%) | time (ms)")
    assert lines[4] == "| 60.0 | 50 | 4.000 ± 0.000 | 60.0 ± 0.0 | 1.00 | not measured | not measured |"
    assert lines[-1].startswith("| 0.0 | 0 | 10.000 ± 0.000 |  |")
    md_p, csv_p = write_tables(rows, tmp_path / "results", "t4")
    assert md_p.read_text() == table4_markdown(rows) and csv_p.read_text() == text
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["t4.csv", "t4.md"]


def test_options_validate_and_load_from_toml(tmp_path):
    with pytest.raises(UsageError):
        HostRunOptions(iterations=1)
    with pytest.raises(UsageError):
        HostRunOptions(order="random")
    (tmp_path / "h.toml").write_text("[hostrun]\niterations = 300\nthreads = 2\norder = 'abba'\n")
    o = HostRunOptions.from_toml(tmp_path / "h.toml")
    assert (o.iterations, o.threads, o.order, o.warmup) == (300, 2, "abba", 20)
    (tmp_path / "bad.toml").write_text("[hostrun]\niterationz = 3\n")
    with pytest.raises(UsageError, match="iterationz"):
        HostRunOptions.from_toml(tmp_path / "bad.toml")


@pytest.fixture(scope="module")
def two_programs(tiny_pte, tiny_weights, tmp_path_factory):
    """The shared 16-wide XNNPACK program and an 8-wide portable one."""
    from harness.exportcheck import export_weights
    from specialist.export import ExportOptions

    b = tmp_path_factory.mktemp("hostrun") / "tiny8-portable.pte"
    export_weights(tiny_weights(8), b, ExportOptions(backend="portable", verify_images=1))
    return tiny_pte, b


@pytest.mark.parametrize("order", ["abab", "abba"])
def test_measure_host_times_real_programs_interleaved(two_programs, order):
    a, b = two_programs
    models = [ModelEntry(0, str(a), 1000, 0.0), ModelEntry(30, str(b), 500, 50.0)]
    res = measure_host(models, options=HostRunOptions(iterations=12, warmup=2, order=order))
    assert res.latencies_ms.shape == (2, 12) and np.all(res.latencies_ms > 0)
    assert [r["level"] for r in res.rows] == [0, 30] and all(SEAM_KEYS <= set(r) for r in res.rows)
    assert res.rows[0]["time_saved_pct"] == 0.0 and res.rows[1]["n_inferences"] == 12
    j = res.to_json()
    assert j["device"] == "host" and j["energy"] == "not measured" and j["fingerprint"]["threads"] == 1


def test_measure_host_profiling_mode_writes_one_etdump_per_model(two_programs, tmp_path, tiny_weights):
    from device.etdump import read_etdump
    from harness.profile import align, nin_layers

    a, b = two_programs
    models = [ModelEntry(0, str(a), 1000, 0.0), ModelEntry(30, str(b), 500, 50.0)]
    opts = HostRunOptions(iterations=3, warmup=1, profile_dir=str(tmp_path / "prof"), profile_runs=2)
    res = measure_host(models, options=opts)
    assert sorted(res.profiles) == ["L0", "L30"] and res.to_json()["profiles"] == res.profiles
    xnn, portable = read_etdump(res.profiles["L0"]), read_etdump(res.profiles["L30"])
    assert xnn.runs == portable.runs == 2
    assert all(o.delegated for o in xnn.operators)
    # the portable program: one native_call per operator; its nine convolutions are NIN's nine layers
    assert all(o.name.startswith("native_call_") and not o.delegated for o in portable.operators)
    layers = nin_layers(tiny_weights(8))
    got = align([o.as_dict() for o in portable.operators], layers)
    assert [g for g in got if g] == [lay.name for lay in layers]
    with pytest.raises(UsageError):
        HostRunOptions(profile_runs=0)
