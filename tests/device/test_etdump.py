"""ETDump round trip on the host: the runner's profiling mode writes one, ``device.etdump`` reads it back."""

import pytest

from device.errors import DataError
from device.etdump import op_kind, profile_host, read_etdump
from device.runner import RunSpec, executor_runner_argv, run_host


def test_profile_host_round_trip(tiny_pte, tmp_path):
    path = profile_host(tiny_pte, tmp_path / "tiny.etdp", runs=3)
    assert path.is_file() and path.stat().st_size > 0
    prof = read_etdump(path)
    assert prof.runs == 3
    assert prof.execute_ms is not None and prof.execute_ms > 0
    kinds = [o.kind for o in prof.operators]
    # the tiny NIN: 3 spatial convolutions and 6 1x1 ones, all inside the XNNPACK delegate
    assert kinds.count("conv") == 3 and kinds.count("fc") == 6, [o.name for o in prof.operators]
    assert all(o.delegated and o.runs == 3 for o in prof.operators)
    assert all(0 <= o.min_ms <= o.median_ms for o in prof.operators)
    # the operators run inside Method::execute: their medians cannot add up to much more than it
    assert sum(o.median_ms for o in prof.operators) <= 1.5 * prof.execute_ms + 0.05
    assert [o.index for o in prof.operators] == list(range(len(prof.operators)))
    assert read_etdump(data=path.read_bytes()).runs == 3


def test_run_without_profiling_writes_no_etdump(tiny_pte, tmp_path):
    res = run_host(RunSpec(tiny_pte, iterations=2))
    assert res.iterations == 2 and not list(tmp_path.iterdir())


def test_unreadable_etdumps_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_etdump(tmp_path / "missing.etdp")
    (tmp_path / "empty.etdp").write_bytes(b"")
    with pytest.raises(DataError, match="empty.*EVENT_TRACER"):
        read_etdump(tmp_path / "empty.etdp")
    (tmp_path / "junk.etdp").write_bytes(b"\x00\x01junk" * 50)
    with pytest.raises(DataError, match="not a readable ETDump"):
        read_etdump(tmp_path / "junk.etdp")


@pytest.mark.parametrize("name,kind", [
    ("Convolution (NHWC, F32) IGEMM #1", "conv"), ("Convolution (NHWC, F32) DWConv #1", "depthwise"),
    ("Fully Connected (NC, F32) GEMM #2", "fc"), ("Max Pooling (NHWC, F32) #1", "pool"),
    ("Transpose (ND, X32) #1", "layout"), ("native_call_convolution.out", "conv"), ("Sigmoid #1", "other"),
])
def test_op_kind(name, kind):
    assert op_kind(name) == kind


def test_runner_argv_carries_the_etdump_path():
    argv = executor_runner_argv("/data/local/tmp/er", "/m.pte", 5, 1, etdump_path="/data/local/tmp/p.etdp")
    assert argv[-1] == "--etdump_path=/data/local/tmp/p.etdp" and "--num_executions=6" in argv
    assert not any(a.startswith("--etdump") for a in executor_runner_argv("er", "m.pte", 5))


def test_virtual_phone_runner_writes_an_etdump_that_pulls_and_reads(tiny_pte, tmp_path):
    from device.adb import AdbOptions, ensure_adb_key, start_virtual
    from device.push import checked_push

    key = ensure_adb_key(tmp_path / "adbkey")
    phone, dev = start_virtual(tmp_path / "phone", options=AdbOptions(key_path=str(key)))
    try:
        checked_push(dev, tiny_pte, "/data/local/tmp/t.pte")
        base = ["executor_runner", "--model_path=/data/local/tmp/t.pte", "--num_executions=2"]
        res = dev.run([*base, "--etdump_path=/data/local/tmp/t.etdp"], check=False)
        assert res.exit_code == 0, res.output
        assert "Iteration 2 of 2" in res.output
        dev.pull("/data/local/tmp/t.etdp", tmp_path / "t.etdp")
        prof = read_etdump(tmp_path / "t.etdp")
        assert prof.runs == 2 and prof.operators
        # a directory that does not exist: the runner's error line, status 1
        res = dev.run([*base, "--etdump_path=/data/local/tmp/nodir/t.etdp"], check=False)
        assert res.exit_code == 1 and "No such file or directory" in res.output
    finally:
        dev.close()
        phone.stop()
