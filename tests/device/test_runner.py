"""The runner contract: executor_runner text (format and parser), input files, the host runner."""

from __future__ import annotations

import numpy as np
import pytest

from device.errors import DataError, InputError, MeasurementError
from device.runner import (
    RunResult,
    RunSpec,
    check_output,
    executor_runner_command,
    format_runner_output,
    format_tensor,
    host_reference,
    parse_runner_output,
    read_input_file,
    run_host,
    write_input_file,
)

# What ExecuTorch 1.x's examples/portable/executor_runner prints (logging build, ET_LOG to stderr merged
# into the adb shell output), for --num_executions=4: load lines, one line per iteration, the total, and
# the output tensor on stdout (print_evalue format).
REAL_RUNNER_TEXT = """\
I 00:00:00.000655 executorch:executor_runner.cpp:264] Resetting threadpool with num threads = 1
I 00:00:00.002031 executorch:executor_runner.cpp:384] Model file /data/local/tmp/harness/L30.pte is loaded.
I 00:00:00.002065 executorch:executor_runner.cpp:394] Using method forward
I 00:00:00.002082 executorch:executor_runner.cpp:445] Setting up CPU planned buffer 0, size 458752.
I 00:00:00.010433 executorch:executor_runner.cpp:520] Model loaded in 8.351000 ms.
I 00:00:00.024991 executorch:executor_runner.cpp:700] Iteration 1 of 4: 14.512000 ms
I 00:00:00.033102 executorch:executor_runner.cpp:700] Iteration 2 of 4: 8.101000 ms
I 00:00:00.041150 executorch:executor_runner.cpp:700] Iteration 3 of 4: 8.040000 ms
I 00:00:00.049260 executorch:executor_runner.cpp:700] Iteration 4 of 4: 8.100000 ms
I 00:00:00.049300 executorch:executor_runner.cpp:712] Model executed successfully 4 time(s) in 38.753000 ms.
I 00:00:00.049310 executorch:executor_runner.cpp:716] 1 outputs:
OutputX 0: tensor(sizes=[1, 3], [0., 2.5, 13.0371])
"""


def test_parses_the_real_runner_text_and_drops_warmup():
    r = parse_runner_output(REAL_RUNNER_TEXT, warmup=1)
    np.testing.assert_allclose(r.latencies_ms, [8.101, 8.04, 8.1])
    np.testing.assert_allclose(r.warmup_latencies_ms, [14.512])
    assert r.total_ms == pytest.approx(24.241)
    np.testing.assert_allclose(r.output, [0.0, 2.5, 13.0371], rtol=1e-6)
    assert r.output_shape == (1, 3)


def test_old_output_label_and_logcat_prefix_parse_too():
    text = ("11-22 07:00:00.000  123  123 I ExecuTorch: Iteration 1 of 2: 5.000000 ms\n"
            "11-22 07:00:00.005  123  123 I ExecuTorch: Iteration 2 of 2: 4.000000 ms\n"
            "Output 0: tensor(sizes=[2], [1., -1.5])\n")
    r = parse_runner_output(text, warmup=0)
    np.testing.assert_allclose(r.latencies_ms, [5.0, 4.0])
    np.testing.assert_allclose(r.output, [1.0, -1.5])


def test_format_then_parse_round_trips():
    lat = np.array([3.25, 3.125, 2.0625, 4.5, 3.0])
    out = np.array([0.0, 1e-5, 123456.7, -2.5, 7.0], dtype=np.float32)
    res = RunResult(latencies_ms=lat[2:], total_ms=float(lat[2:].sum()), output=out, warmup_latencies_ms=lat[:2],
                    output_shape=(1, 5), model_path="/data/local/tmp/m.pte")
    text = format_runner_output(res)
    assert "Iteration 5 of 5: 3.000000 ms" in text and "Model file /data/local/tmp/m.pte is loaded." in text
    assert "Model executed successfully 5 time(s) in 15.937500 ms." in text
    assert "OutputX 0: tensor(sizes=[1, 5], [0., 1e-05, 123457., -2.5, 7.])" in text
    back = parse_runner_output(text, warmup=2)
    np.testing.assert_allclose(back.latencies_ms, lat[2:])
    np.testing.assert_allclose(back.output, out, rtol=1e-5)


def test_tensor_printing_wraps_and_elides_like_print_evalue():
    wrapped = format_tensor(np.arange(12.0), (12,))
    assert wrapped == ("tensor(sizes=[12], [\n  0., 1., 2., 3., 4., 5., 6., 7., 8., 9., \n  10., 11., \n])")
    assert format_tensor(np.arange(8.0), (8,), edge_items=3) == "tensor(sizes=[8], [0., 1., 2., ..., 5., 6., 7.])"
    r = parse_runner_output("Iteration 1 of 1: 1.0 ms\nOutputX 0: " + wrapped + "\n", 0)
    np.testing.assert_allclose(r.output, np.arange(12.0))


@pytest.mark.parametrize("text,match", [
    ("I 00:00:00.000 executorch:x.cpp:1] Model file m.pte is loaded.\nOutputX 0: tensor(sizes=[1], [1.])\n",
     "logging"),
    ("E 00:00:00.000100 executorch:executor_runner.cpp:129] Failed to parse model file m.pte\n", "Failed to parse"),
    ("Iteration 1 of 3: 1.0 ms\nIteration 3 of 3: 1.0 ms\n", "incomplete"),
    ("Iteration 1 of 2: 1.0 ms\nIteration 2 of 2: 1.0 ms\n", "warm-up"),
    ("Iteration 1 of 3: 1.0 ms\nIteration 2 of 3: 1.0 ms\nIteration 3 of 3: 1.0 ms\n"
     "Model executed successfully 4 time(s) in 3.0 ms.\n", "executed 4 times"),
])
def test_parser_refuses_what_cannot_be_trusted(text, match):
    with pytest.raises(MeasurementError, match=match):
        parse_runner_output(text, warmup=2 if match == "warm-up" else 0)


def test_output_check_catches_a_broken_build():
    res = parse_runner_output(REAL_RUNNER_TEXT, 0)
    assert check_output(res, [0.0, 2.5, 13.0371]) < 1e-6
    with pytest.raises(MeasurementError, match="differs from the host reference"):
        check_output(res, [0.0, 2.5, 14.0])
    with pytest.raises(MeasurementError, match="3 values"):
        check_output(res, [0.0, 2.5])


def test_command_quotes_every_argument():
    spec = RunSpec("/data/local/tmp/a b;rm -rf x.pte", iterations=10, warmup=5, threads=2,
                   input_path="/data/local/tmp/in put.bin")
    cmd = executor_runner_command("/data/local/tmp/executor_runner", spec)
    assert cmd == ("/data/local/tmp/executor_runner '--model_path=/data/local/tmp/a b;rm -rf x.pte' "
                   "--num_executions=15 --cpu_threads=2 '--inputs=/data/local/tmp/in put.bin'")


def test_spec_refuses_nonsense():
    with pytest.raises(InputError):
        RunSpec("m.pte", iterations=0)
    with pytest.raises(InputError):
        RunSpec("m.pte", iterations=1, threads=0)


# ------------------------------------------------------------------------ the host runner, real runtime


# tiny_weights / tiny_pte: tests/conftest.py


def test_run_host_times_w_plus_n_and_returns_the_output(tiny_pte, tiny_weights, tmp_path):
    import torch

    from specialist.model import build_module

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    write_input_file(tmp_path / "x.bin", x)
    res = run_host(RunSpec(tiny_pte, iterations=7, warmup=3, input_path=tmp_path / "x.bin"))
    assert res.latencies_ms.shape == (7,) and res.warmup_latencies_ms.shape == (3,)
    assert np.all(res.latencies_ms > 0) and res.total_ms == pytest.approx(res.latencies_ms.sum())
    with torch.no_grad():
        want = build_module(tiny_weights(16))(torch.from_numpy(x)).numpy().ravel()
    np.testing.assert_allclose(res.output, want, atol=1e-4)
    back = parse_runner_output(res.raw_text, warmup=3)  # the host's text parses like the phone's
    np.testing.assert_allclose(back.latencies_ms, res.latencies_ms, atol=1e-6)
    np.testing.assert_allclose(back.output, res.output, rtol=1e-5, atol=1e-6)
    assert check_output(back, host_reference(tiny_pte, tmp_path / "x.bin")) < 1e-4  # the phone-side check
    ones = run_host(RunSpec(tiny_pte, iterations=1))
    assert not np.allclose(ones.output, res.output)  # the input file was used
    with pytest.raises(MeasurementError):  # a build that is off by 0.01 everywhere does not pass
        check_output(back, res.output + 0.01)


def test_npy_inputs_are_checked_for_dtype_and_shape(tiny_pte, tmp_path):
    np.save(tmp_path / "f64.npy", np.zeros((1, 3, 32, 32)))
    with pytest.raises(InputError, match="float64"):
        run_host(RunSpec(tiny_pte, iterations=1, input_path=tmp_path / "f64.npy"))
    np.save(tmp_path / "shape.npy", np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"shape \[1, 3, 16, 16\]"):
        run_host(RunSpec(tiny_pte, iterations=1, input_path=tmp_path / "shape.npy"))
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="short.bin has 100 bytes"):
        read_input_file(tmp_path / "short.bin", (1, 3, 32, 32))
    with pytest.raises(InputError, match="float32"):
        write_input_file(tmp_path / "x.bin", np.zeros((1, 3, 32, 32)))


def test_corrupt_truncated_and_foreign_files_are_named(tiny_pte, tmp_path):
    blob = tiny_pte.read_bytes()
    cases = {"trunc.pte": blob[: len(blob) // 2], "junk.pte": b"PK\x03\x04 not a program" * 10, "empty.pte": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=name):
            run_host(RunSpec(tmp_path / name, iterations=1))
    with pytest.raises(DataError, match="not found"):
        run_host(RunSpec(tmp_path / "missing.pte", iterations=1))


def test_programs_loaded_before_a_pool_resize_refuse_to_run(tiny_pte):
    from device.runner import HostProgram, set_host_threads

    before = set_host_threads(1)
    try:
        prog = HostProgram(tiny_pte)
        prog.set_input(np.ones(prog.input_shape, np.float32))
        assert prog.run_once() > 0
        set_host_threads(2)  # recreates the pool the delegate was bound to
        with pytest.raises(MeasurementError, match="resized"):
            prog.run_once()
        res = run_host(RunSpec(tiny_pte, iterations=2, threads=2))  # fresh load on the new pool
        assert res.latencies_ms.shape == (2,)
    finally:
        set_host_threads(before)  # leave the pool as this process had it


def test_load_time_round_trips_through_the_runner_text():
    from device.runner import RunResult, RunSpec, format_runner_output, parse_runner_output

    res = RunResult(latencies_ms=np.array([1.5, 1.25]), total_ms=2.75, output=np.array([1.0]),
                    warmup_latencies_ms=np.array([5.0, 2.0]), load_ms=12.345)
    back = parse_runner_output(format_runner_output(res), warmup=2)
    assert back.load_ms == pytest.approx(12.345, abs=1e-3)  # t(Iteration 1) - latency 1, microsecond stamps
    np.testing.assert_allclose(back.warmup_latencies_ms, [5.0, 2.0])
    no_stamps = "Iteration 1 of 2: 3.0 ms\nIteration 2 of 2: 2.0 ms\n"
    assert parse_runner_output(no_stamps, warmup=1).load_ms is None
    with pytest.raises(InputError, match="one thread"):
        RunSpec("m.pte", iterations=1, threads=2, clock="thread")
    with pytest.raises(InputError, match="clock"):
        RunSpec("m.pte", iterations=1, clock="sundial")
