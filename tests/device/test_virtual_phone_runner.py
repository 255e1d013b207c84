"""The virtual phone's built-in executor_runner: real ExecuTorch runs through the real adb-shell client."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from device.adb import AdbOptions, ensure_adb_key, start_virtual
from device.base import InferenceWorkload, run_inferences
from device.push import checked_push
from device.virtual_phone import FaultConfig, read_timeline

HAVE_RUNNER = importlib.util.find_spec("device.runner") is not None


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return ensure_adb_key(tmp_path_factory.mktemp("keys") / "adbkey")


@pytest.fixture()
def lab(tmp_path, key):
    phone, dev = start_virtual(tmp_path / "phone", options=AdbOptions(key_path=str(key)))
    yield phone, dev
    dev.close()
    phone.stop()


def test_missing_model_fails_like_the_real_runner(lab):
    _phone, dev = lab
    res = dev.run(["executor_runner", "--model_path=/data/local/tmp/none.pte", "--num_executions=2"], check=False)
    assert res.exit_code == 1 and "FileDataLoader::from() failed" in res.output
    res = dev.run(["/system/bin/executor_runner", "--num_executions=zero"], check=False)
    assert res.exit_code == 1 and "positive integers" in res.output


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory):
    """A tiny .pte (Linear 8->4).  Test fixture only: the project's exporter is specialist/export.py."""
    torch = pytest.importorskip("torch")
    exir = pytest.importorskip("executorch.exir")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    ep = torch.export.export(Tiny().eval(), (torch.ones(1, 8),))
    path = tmp_path_factory.mktemp("pte") / "tiny.pte"
    path.write_bytes(exir.to_edge_transform_and_lower(ep).to_executorch().buffer)
    return path


@pytest.mark.skipif(not HAVE_RUNNER, reason="device/runner.py (runner contract, export issue) not available yet")
def test_builtin_runner_runs_the_pte_and_marks_the_phone_busy(lab, tiny_pte):
    phone, dev = lab
    remote = "/data/local/tmp/harness/tiny.pte"
    checked_push(dev, tiny_pte, remote)
    work = InferenceWorkload(runner_path="/system/bin/executor_runner", model_path=remote, iterations=6, warmup=2,
                             threads=2)
    res = run_inferences(dev, work, timeout_s=120)
    lat = np.asarray(res.latencies_ms)
    assert lat.shape == (6,) and np.all(lat > 0)
    t, busy = read_timeline(phone.timeline_path)
    assert busy.max() == 2 and busy[-1] == 0  # two busy threads while the runner ran, idle after
    # the phone prints its own paths, never the host sandbox's
    text = dev.run(work.argv()).output
    assert f"Model file {remote} is loaded." in text and str(phone.root) not in text


@pytest.mark.skipif(not HAVE_RUNNER, reason="device/runner.py (runner contract, export issue) not available yet")
def test_builtin_runner_reads_the_inputs_file_and_matches_the_host(lab, tiny_pte, tmp_path):
    from device.runner import RunSpec, run_host, write_input_file

    _phone, dev = lab
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    write_input_file(tmp_path / "x.bin", x)
    checked_push(dev, tiny_pte, "/data/local/tmp/harness/tiny.pte")
    checked_push(dev, tmp_path / "x.bin", "/data/local/tmp/harness/x.bin")
    work = InferenceWorkload("/system/bin/executor_runner", "/data/local/tmp/harness/tiny.pte", iterations=2,
                             input_path="/data/local/tmp/harness/x.bin")
    res = run_inferences(dev, work, timeout_s=120)
    host = run_host(RunSpec(tiny_pte, iterations=1, input_path=tmp_path / "x.bin"))
    np.testing.assert_allclose(res.output, host.output, rtol=1e-4, atol=1e-4)
    ones = run_host(RunSpec(tiny_pte, iterations=1))
    assert not np.allclose(res.output, ones.output)  # the inputs file really was used


@pytest.mark.skipif(not HAVE_RUNNER, reason="device/runner.py (runner contract, export issue) not available yet")
def test_detached_run_survives_a_link_drop_mid_run(lab, tiny_pte):
    phone, dev = lab
    remote = "/data/local/tmp/harness/tiny.pte"
    checked_push(dev, tiny_pte, remote)
    phone.set_faults(FaultConfig(drop_mid_run_s=0.05, drops=1))
    work = InferenceWorkload("/system/bin/executor_runner", remote, iterations=20, warmup=1)
    res = run_inferences(dev, work, timeout_s=120, detached_work_dir="/data/local/tmp/harness", window_s=0.2)
    assert np.asarray(res.latencies_ms).shape == (20,)
    assert phone.state.drops_done == 1
