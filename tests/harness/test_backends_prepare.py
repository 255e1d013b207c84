"""Model preparation for ``harness run``: builds, exports in worker processes, the export cache."""

import hashlib
import os
import pickle

import pytest

from harness.backends import export_workers, prepare_models
from harness.errors import InputError
from harness.plan import make_plan


@pytest.mark.parametrize("cores,n_exports,want", [
    (None, 6, 1),  # core count unknown: one worker
    (1, 6, 1), (2, 6, 1),  # one core kept for the harness, but at least one worker
    (3, 6, 2), (5, 6, 4),
    (16, 6, 4),  # at most 4
    (16, 3, 3), (16, 1, 1), (3, 1, 1),  # never more workers than exports
])
def test_export_workers_one_per_core_but_one_capped_at_four(monkeypatch, cores, n_exports, want):
    monkeypatch.delenv("HARNESS_EXPORT_WORKERS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert export_workers(n_exports) == want


def test_export_workers_env_override(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the default would be 1
    monkeypatch.setenv("HARNESS_EXPORT_WORKERS", "3")
    assert export_workers(6) == 3 and export_workers(2) == 2
    monkeypatch.setenv("HARNESS_EXPORT_WORKERS", "0")
    assert export_workers(6) == 0  # in this process
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv("HARNESS_EXPORT_WORKERS", bad)
        with pytest.raises(InputError, match="HARNESS_EXPORT_WORKERS"):
            export_workers(6)


def test_export_check_error_crosses_process_boundary():
    from harness.exportcheck import ExportCheckError
    from specialist.export import ExportReport

    err = ExportCheckError(ExportReport(pte="m.pte", backend="xnnpack", quantize="none", fold="none", atol=1e-4),
                           "differs")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ExportCheckError and str(back) == "differs" and back.report.pte == "m.pte"


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_prepare_models_exports_in_two_workers_then_hits_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_EXPORT_WORKERS", "2")
    plan = make_plan("virtual", "virtual", {"levels": [50], "method": "paper"})
    cache = tmp_path / "cache"
    models = prepare_models(plan, cache)
    assert [m.level_pct for m in models] == [0, 50]
    for m in models:
        assert os.path.basename(m.artifact_path) == f"{m.model_hash[:24]}.pte"
        assert _sha(m.artifact_path) == m.artifact_hash
    assert models[0].artifact_hash != models[1].artifact_hash
    assert sorted(os.listdir(cache)) == sorted(os.path.basename(m.artifact_path) for m in models)  # no temp files
    mtimes = [os.stat(m.artifact_path).st_mtime_ns for m in models]
    again = prepare_models(plan, cache)
    assert again == models
    assert [os.stat(m.artifact_path).st_mtime_ns for m in again] == mtimes  # nothing exported twice


def test_prepare_models_worker_failure_is_raised_and_nothing_left(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_EXPORT_WORKERS", "2")
    plan = make_plan("virtual", "virtual", {"levels": [50], "method": "paper"})
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")  # the workers cannot create their cache files
    with pytest.raises(OSError):
        prepare_models(plan, blocker)
    assert blocker.read_text() == "not a directory"
