"""Property-based fuzzing (hypothesis) of the command line's option parsing and of the trace readers.

No generated input may yield a traceback: the command line ends in an exit code (0 for ``--help``,
2 for bad input, one line on stderr) and the readers raise only the project's errors.  Nothing here
starts slow work: argv is parsed (every command), ``harness run`` is driven up to its last input
check (a real-phone profile without ``--serial`` stops it there), and traces are tiny files.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.cli import build_parser, main
from harness.errors import PROJECT_ERRORS

_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
#: Bounded so the whole file stays well under a minute on a busy 2-core machine.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=_HEALTH)
FUZZ_SLOW = settings(max_examples=100, deadline=None, suppress_health_check=_HEALTH)  # a process-like path each

# Tokens: numbers of every shape (NaN, inf, huge, negative, floats for ints), lists, ranges, junk.
NUMBERS = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e6", "1e309", "0", "-1", "10.7", "0x10", "1_000", "", " ", "٣"]),
)
LISTS = st.one_of(
    st.lists(st.integers(min_value=-5, max_value=400), max_size=6).map(lambda xs: ",".join(map(str, xs))),
    st.tuples(st.integers(-10, 10**9), st.integers(-10, 10**9)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.sampled_from(["1-300000000", "10,,20", "a,b", "-", "--", "1--2", "5-1", ",", "10-20,30-99"]),
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
VALUE = st.one_of(NUMBERS, LISTS, TEXT)

COMMANDS: dict[str, list[str]] = {
    "run": ["--levels", "--classes", "--method", "--window-s", "--idle-s", "--min-reps", "--max-reps",
            "--target-ci-pct", "--seed", "--threads", "--monitor", "--device", "--resume", "--config"],
    "build": ["--classes", "--level", "--method", "--compensation", "--impact", "--fold"],
    "export": ["--classes", "--level", "--multiple-of", "--backend", "--quantize"],
    "sweep": ["--sizes", "--levels", "--subsets", "--seed", "--per-class", "--workers", "--threads", "--chunk",
              "--method"],
    "energy": ["--window", "--idle", "--inferences", "--rate-hz", "--time-unit", "--sync-search-s"],
    "bench": ["--iterations", "--warmup", "--threads", "--input"],
    "stats": ["--per-class", "--fd-per-class", "--shift-per-class", "--impact"],
    "accuracy": ["--classes", "--level", "--per-class"],
    "compare": ["--threshold", "--alpha"],
    "virtual-phone": ["--port", "--duration-s", "--fault-delay-ms", "--fault-drop-mid-run-s", "--fault-drops"],
}


def _argv(command: str):
    flags = COMMANDS[command]
    pair = st.tuples(st.sampled_from(flags), VALUE).map(list)
    return st.lists(st.one_of(pair, st.lists(VALUE, min_size=1, max_size=1)), max_size=6).map(
        lambda items: [command] + [tok for item in items for tok in item])


ANY_ARGV = st.sampled_from(sorted(COMMANDS)).flatmap(_argv)


_PARSER = []


@FUZZ
@given(argv=ANY_ARGV)
@example(argv=["run", "\r"])  # found by this test: a control character split the error line
def test_option_parsing_never_tracebacks(argv):
    """Every command's flags: parsed values or one UsageError, never another exception."""
    if not _PARSER:
        _PARSER.append(build_parser())
    parser = _PARSER[0]
    try:
        parser.parse_args(argv)
    except PROJECT_ERRORS as exc:
        assert len(str(exc).splitlines()) == 1
    except SystemExit as exc:  # --help / --version
        assert exc.code in (0, None)


RUN_FLAGS = [f for f in COMMANDS["run"] if f not in ("--device", "--resume", "--config")]


@FUZZ_SLOW
@given(items=st.lists(st.tuples(st.sampled_from(RUN_FLAGS), VALUE), max_size=8))
def test_run_input_checks_never_traceback(tmp_path_factory, capsys, items):
    """``harness run`` through every input check: exit 2 with one line, nothing written."""
    tmp = tmp_path_factory.mktemp("run")
    argv = ["run", "--db", str(tmp / "r" / "h.db"), "--device", "nexus4"]
    for flag, value in items:
        argv += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp.iterdir()) == []


TOML_VALUES = st.recursive(
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), TEXT),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


@FUZZ_SLOW
@given(table=st.dictionaries(st.sampled_from(["levels", "classes", "window_s", "idle_s", "min_reps", "max_reps",
                                              "target_ci_pct", "seed", "threads", "cooldown_temp_c", "monitor",
                                              "method", "device", "warmup_inferences", "bogus"]),
                             TOML_VALUES, max_size=6))
def test_run_files_never_traceback(tmp_path_factory, table):
    """A ``--config`` run file of any types: a plan, or one UsageError naming the file."""
    from harness.errors import UsageError
    from harness.plan import load_toml, make_plan

    p = tmp_path_factory.mktemp("cfg") / "run.toml"
    p.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items()), encoding="utf-8")
    try:
        settings_ = load_toml(p)
        make_plan("virtual", "virtual", settings_)
    except UsageError as exc:
        assert len(str(exc).splitlines()) == 1


# --------------------------------------------------------------------------- trace readers


def _check_reader(path: Path) -> None:
    from device.tracefile import open_trace

    try:
        tr = open_trace(path)
        for _chunk in tr.iter_chunks():
            pass
        _ = (tr.samples, tr.dropped_samples, tr.first_index, tr.end_index)
    except PROJECT_ERRORS as exc:
        assert len(str(exc).splitlines()) == 1 and len(str(exc)) < 1000


HEADER_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT,
                          st.lists(st.integers(), max_size=3), st.dictionaries(TEXT, st.integers(), max_size=2))


@FUZZ
@given(header=st.one_of(
           st.dictionaries(st.sampled_from(["rate_hz", "schema_version", "anchor_mono_s", "instrument", "x"]),
                           HEADER_VALUES, max_size=5).map(lambda d: json.dumps(d).encode()),
           st.binary(max_size=64)),
       claimed=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       body=st.binary(max_size=200),
       block=st.one_of(st.none(), st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**32 - 1),
                                            st.integers(0, 2**32 - 1), st.floats(width=32))))
def test_ptrc_reader_never_tracebacks(tmp_path_factory, header, claimed, body, block):
    n = len(header) if claimed is None else claimed
    data = b"PWRTRC01" + struct.pack("<I", n) + header
    if block is not None:
        data += struct.pack("<4sqIIf", b"BLK1", *block)
    data += body
    p = tmp_path_factory.mktemp("ptrc") / "t.ptrc"
    p.write_bytes(data)
    _check_reader(p)


CSV_CELLS = st.one_of(NUMBERS, TEXT.filter(lambda s: "\n" not in s and "\r" not in s),
                      st.sampled_from(["np.float64(1.5)", "", "nan", "inf"]))


@FUZZ_SLOW
@given(header=st.one_of(st.sampled_from(["Time(ms),Main(mA),Main Voltage(V),", "Time(s),Main(mA)",
                                         "Time(ms),Main(mA),Main Voltage(V),USB(mA)"]),
                        st.lists(TEXT.filter(lambda s: "\n" not in s and "\r" not in s), max_size=5).map(",".join)),
       rows=st.lists(st.lists(CSV_CELLS, max_size=5), max_size=12),
       raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_csv_reader_never_tracebacks(tmp_path_factory, header, rows, raw):
    p = tmp_path_factory.mktemp("csv") / "t.csv"
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns about ragged rows; the reader's answer is what counts
        _check_reader(p)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, -1.0, 1e12])
def test_open_trace_rate_flag_checked(tmp_path, rate):
    from device.errors import DataError
    from device.tracefile import open_trace

    p = tmp_path / "t.csv"
    p.write_text("Time(s),Main(mA)\n0,1\n0.0002,1\n")
    with pytest.raises(DataError):
        open_trace(p, rate_hz=rate)
