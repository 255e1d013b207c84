"""``harness run`` from the command line, end to end (builds, exports, measures, reports).

Slow (it exports two programs with ExecuTorch): runs with HARNESS_SLOW=1.
"""

import json
import os

import pytest

from harness.cli import main

pytestmark = pytest.mark.slow

FAST = ["--levels", "50", "--window-s", "0.3", "--idle-s", "0.3", "--min-reps", "2", "--max-reps", "2"]


def _stats_flags():
    """Extra flags, e.g. HARNESS_TEST_RUN_FLAGS="--stats my.stats.npz --method paper-grad"."""
    return os.environ.get("HARNESS_TEST_RUN_FLAGS", "").split()


@pytest.mark.parametrize("device", ["virtual", "host"])
def test_harness_run_json_then_show_report_compare(tmp_path, capsys, device):
    db = str(tmp_path / "h.db")
    code = main(["run", "--device", device, *FAST, *_stats_flags(), "--db", db, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    res = json.loads(out.out)
    assert res["device"] == device and res["virtual"] is (device == "virtual")
    assert [r["level"] for r in res["rows"]] == [0, 50]
    spec = res["rows"][1]
    for key in ("flops_pruned_pct", "time_ms", "time_ms_ci", "time_saved_pct", "energy_mj", "energy_mj_ci",
                "energy_saved_pct", "valid_windows", "invalid_windows"):
        assert key in spec
    assert spec["flops_pruned_pct"] == pytest.approx(57.8, abs=1.0)
    assert spec["valid_windows"] == 2 and spec["time_ms"] > 0
    if device == "host":
        assert spec["energy_mj"] is None
    else:
        assert spec["energy_mj"] > 0 and spec["energy_saved_pct"] is not None
    assert os.path.isfile(res["report"])
    assert 0 <= res["overhead_pct"] <= 100
    # a second run hits the export cache; compare them
    assert main(["run", "--device", device, *FAST, *_stats_flags(), "--db", db, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["prepare_s"] < res["prepare_s"]
    code = main(["compare", res["run_id"], second["run_id"], "--db", db, "--json", "--threshold", "50"])
    cmp = json.loads(capsys.readouterr().out)
    assert code == (1 if cmp["regressed"] else 0)
    assert {c["model"] for c in cmp["comparisons"]} == {"L0", "L50"}
