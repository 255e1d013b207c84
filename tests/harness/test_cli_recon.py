"""``--method recon`` through the real CLI: NIN builds from calibration images; graph models need --stats
(tests/specialist/test_graph_recon.py builds them)."""

import json

import pytest

from harness.cli import main
from specialist.stats import default_stats_path

needs_artifact = pytest.mark.skipif(not default_stats_path().is_file(), reason="no shipped statistics artifact")


@needs_artifact
def test_build_recon_json(capsys, data_dir):
    code = main(["build", "--classes", "0,1", "--level", "30", "--method", "recon", "--calib-per-class", "4",
                 "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    d = json.loads(out)
    assert d["method"] == "recon" and d["extra_nodes"] == 6 and abs(d["flops_pruned_pct"] - 39.2) < 0.5


def test_recon_on_a_graph_model_without_stats_is_refused_in_one_line(capsys):
    code = main(["build", "--model", "resnet20", "--classes", "0,1", "--level", "30", "--method", "recon"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "needs --stats" in err and len(err.strip().splitlines()) == 1


def test_negative_calib_per_class_is_refused(capsys):
    code = main(["build", "--classes", "0,1", "--level", "30", "--method", "recon", "--calib-per-class", "-3"])
    _, err = capsys.readouterr()
    assert code == 2 and "calib_per_class" in err
