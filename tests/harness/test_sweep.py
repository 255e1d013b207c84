"""Sweep infrastructure: subset draws, CI statistics, the cell store, options, Table 2 layout (synthetic data)."""

from __future__ import annotations

import math
import sqlite3
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from harness import sweep as sw
from harness.errors import ArtifactError, UsageError
from harness.verdict import mean_ci, mean_ci_along

T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2}
SHARED_TABLE2 = Path(__file__).resolve().parents[3] / "shared" / "paper" / "table2_accuracy.csv"


# --------------------------------------------------------------------------- subsets


def test_seeds_give_identical_subsets_and_different_seeds_differ():
    a, note = sw.draw_subsets(4, 10, seed=0)
    b, _ = sw.draw_subsets(4, 10, seed=0)
    c, _ = sw.draw_subsets(4, 10, seed=1)
    assert a == b and note == ""
    assert a != c
    assert len(set(a)) == 10
    assert all(len(s) == 4 and list(s) == sorted(s) and 0 <= s[0] and s[-1] <= 9 for s in a)


def test_subsets_are_prefix_stable_and_sizes_independent():
    three, _ = sw.draw_subsets(5, 3, seed=7)
    ten, _ = sw.draw_subsets(5, 10, seed=7)
    assert ten[:3] == three


def test_more_subsets_than_exist_uses_them_all_and_says_so():
    got, note = sw.draw_subsets(9, 25, seed=0)
    assert sorted(got) == sorted(combinations(range(10), 9))
    assert "only 10 distinct subsets" in note and "them all" in note
    got, note = sw.draw_subsets(10, 10, seed=3)
    assert got == [tuple(range(10))] and "only 1 distinct subset" in note


# --------------------------------------------------------------------------- statistics


def test_mean_ci_known_answers():
    mean, ci, n = mean_ci_along(np.array([1.0, 2.0, 3.0]))
    assert mean == pytest.approx(2.0)
    # s = 1; with 2 degrees of freedom t_p = (2p - 1) / sqrt(2 p (1 - p)) exactly
    assert ci == pytest.approx(T2 / math.sqrt(3), rel=1e-12)
    assert n == 3


def test_mean_ci_vectorised_ignores_nan_and_needs_two_values():
    v = np.array([[1.0, 2.0, 3.0, np.nan], [5.0, np.nan, np.nan, np.nan], [4.0, 4.0, 4.0, 4.0]])
    mean, ci, n = mean_ci_along(v)
    assert mean.tolist() == pytest.approx([2.0, 5.0, 4.0])
    assert ci[0] == pytest.approx(T2 / math.sqrt(3))
    assert np.isnan(ci[1]) and ci[2] == 0.0
    assert n.tolist() == [3, 1, 4]
    # ten values 0..9: s = sqrt(110/12); t_{0.975, 9} = 2.262157 (printed tables)
    m, c, _ = mean_ci_along(np.arange(10.0))
    assert c == pytest.approx(2.262157 * math.sqrt(110 / 12 / 10), rel=1e-6)
    assert m == pytest.approx(4.5)


def test_scalar_mean_ci_is_the_vectorised_one_on_finite_values():
    v = [3.0, np.nan, 4.5, np.inf, 7.25, 1.0]
    m, c, _ = mean_ci_along(np.array([3.0, 4.5, 7.25, 1.0]))
    assert mean_ci(v) == (float(m), float(c))


# --------------------------------------------------------------------------- store


def _rec(ctx, subset, level, correct=7, n=10):
    return sw.JobRecord(ctx, tuple(subset), level, correct, n, 1000, 38.9, 12.5, 0.25)


def test_store_round_trip_and_resume(tmp_path):
    st = sw.CellStore(tmp_path / "s.sqlite")
    st.put([_rec("a", (0, 1), 30.0), _rec("a", (0, 1), 0.0, 9), _rec("b", (2, 3), 30.0)])
    st.close()
    st = sw.CellStore(tmp_path / "s.sqlite")
    got = st.load("a")
    assert set(got) == {((0, 1), 30.0), ((0, 1), 0.0)}
    assert got[((0, 1), 0.0)].accuracy_pct == pytest.approx(90.0)
    assert st.forget("a") == 2 and st.load("a") == {} and len(st.load("b")) == 1
    st.close()


def test_store_refuses_newer_schema_and_corrupt_files(tmp_path):
    p = tmp_path / "s.sqlite"
    sw.CellStore(p).close()
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == sw.SCHEMA_VERSION
    db.execute(f"PRAGMA user_version = {sw.SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ArtifactError, match="newer"):
        sw.CellStore(p)
    # a store from before user_version: its meta table says newer (as an older harness records it)
    legacy = tmp_path / "legacy.sqlite"
    db = sqlite3.connect(legacy)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", str(sw.SCHEMA_VERSION + 1)))
    db.commit()
    db.close()
    with pytest.raises(ArtifactError, match="newer"):
        sw.CellStore(legacy)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ArtifactError, match="not a usable SQLite"):
        sw.CellStore(bad)


@pytest.mark.parametrize("with_cpu", [True, False])
def test_store_migrates_a_version_1_store_keeping_its_jobs(tmp_path, with_cpu):
    """The layout of the first sweeps (a meta table, no user_version; the oldest without ``cpu_s``)."""
    p = tmp_path / "v1.sqlite"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", "1"))
    cpu = ", cpu_s REAL NOT NULL DEFAULT 0" if with_cpu else ""
    db.execute("CREATE TABLE jobs (context TEXT NOT NULL, subset TEXT NOT NULL, level REAL NOT NULL, "
               "correct INTEGER NOT NULL, n INTEGER NOT NULL, flops INTEGER NOT NULL, flops_pruned_pct REAL NOT NULL, "
               f"build_ms REAL NOT NULL, eval_s REAL NOT NULL, finished_at TEXT NOT NULL{cpu}, "
               "PRIMARY KEY (context, subset, level))")
    cols = "context, subset, level, correct, n, flops, flops_pruned_pct, build_ms, eval_s, finished_at"
    vals = ("a", "0,1", 30.0, 7, 10, 1000, 38.9, 12.5, 0.25, "2026-01-01T00:00:00+00:00")
    if with_cpu:
        cols, vals = cols + ", cpu_s", (*vals, 1.5)
    db.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(vals))})", vals)
    db.commit()
    db.close()
    st = sw.CellStore(p)
    got = st.load("a")
    assert got == {((0, 1), 30.0): sw.JobRecord("a", (0, 1), 30.0, 7, 10, 1000, 38.9, 12.5, 0.25,
                                                1.5 if with_cpu else 0.0)}
    st.put([_rec("a", (2, 3), 30.0)])  # and it takes new jobs
    assert len(st.load("a")) == 2
    st.close()
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == sw.SCHEMA_VERSION
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(sw.SCHEMA_VERSION)
    db.close()


def test_store_is_append_only_duplicates_are_refused_and_not_overwritten(tmp_path):
    from harness.store import DuplicateError

    st = sw.CellStore(tmp_path / "s.sqlite")
    st.put([_rec("a", (0, 1), 30.0, correct=7)])
    with pytest.raises(DuplicateError, match="already stored"):
        st.put([_rec("a", (4, 5), 30.0), _rec("a", (0, 1), 30.0, correct=3)])
    assert set(st.load("a")) == {((0, 1), 30.0)}  # nothing of the failed call was written
    assert st.load("a")[((0, 1), 30.0)].correct == 7
    # --fresh starts a new epoch: the old job stays in the file but no longer counts, and may be run again
    assert st.forget("a") == 1 and st.load("a") == {}
    st.put([_rec("a", (0, 1), 30.0, correct=3)])
    assert st.load("a")[((0, 1), 30.0)].correct == 3
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
    st.close()


def test_builder_code_hash_follows_builder_sources_only(tmp_path):
    import shutil

    import specialist

    root = tmp_path / "specialist"
    shutil.copytree(Path(specialist.__file__).parent, root, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    h0 = sw.builder_code_hash(root)
    assert h0 == sw.builder_code_hash() and len(h0) == 64
    (root / "evaluate.py").write_text((root / "evaluate.py").read_text() + "\n# evaluation only\n")
    assert sw.builder_code_hash(root) == h0
    (root / "compensate.py").write_text((root / "compensate.py").read_text() + "\n# changed\n")
    h1 = sw.builder_code_hash(root)
    assert h1 != h0
    (root / "newcriterion.py").write_text("X = 1\n")  # a new builder module counts too
    assert sw.builder_code_hash(root) != h1


# --------------------------------------------------------------------------- options and tasks


def test_options_validate_and_load_from_toml(tmp_path):
    with pytest.raises(UsageError, match="2-10"):
        sw.SweepOptions(sizes=(1, 2))
    with pytest.raises(UsageError, match="--subsets"):
        sw.SweepOptions(subsets=0)
    with pytest.raises(UsageError, match="level"):
        sw.SweepOptions(levels=(0, 10))
    with pytest.raises(UsageError, match="out of range"):
        sw.parse_sizes("2-11")
    with pytest.raises(UsageError, match="not a number"):
        sw.parse_levels("10,abc")
    assert sw.parse_levels("50,10,10") == (10.0, 50.0)
    q = sw.SweepOptions().quick()
    assert (q.subsets, q.per_class) == (3, 200)
    p = tmp_path / "s.toml"
    p.write_text('[sweep]\nsizes = "2-4"\nlevels = [30, 10]\nmethods = ["paper", "l1"]\nsubsets = 2\n')
    o = sw.SweepOptions.from_toml(p)
    assert (o.sizes, o.levels, o.methods, o.subsets) == ((2, 3, 4), (10.0, 30.0), ("paper", "l1"), 2)
    p.write_text("[sweep]\nsize = 3\n")
    with pytest.raises(UsageError, match="unknown key 'size'"):
        sw.SweepOptions.from_toml(p)


def test_tasks_keep_subsets_whole_and_cover_every_job_once():
    jobs = []
    for size in (2, 5):
        for subset in sw.draw_subsets(size, 4, 0)[0]:
            jobs += [sw.Job("c", subset, lvl) for lvl in (0.0, 10.0, 30.0, 50.0)]
    tasks = sw.make_tasks(jobs, task_jobs=7, per_class_images=100)
    flat = [j for t in tasks for j in t]
    assert sorted(flat, key=repr) == sorted(jobs, key=repr)
    unpruned = [t for t in tasks if any(j.level == 0 for j in t)]
    assert len(unpruned) == 1 and len(unpruned[0]) == 8 and all(j.level == 0 for j in unpruned[0])
    for t in tasks:
        if t is unpruned[0]:
            continue
        assert len(t) <= 7 and len({len(j.subset) for j in t}) == 1
        subsets = {j.subset for j in t}
        assert all(sum(j.subset == s for j in t) == 3 for s in subsets)
    assert len(tasks) == 1 + 2 * 2  # two subsets (6 jobs) per task, two tasks per size
    costs = [sw.task_cost(t, 100) for t in tasks]
    assert costs == sorted(costs, reverse=True)


# --------------------------------------------------------------------------- layout and writers


def _table(method="m"):
    sizes, levels = (2, 10), (10.0, 50.0)
    acc = np.full((2, 2, 3), np.nan)
    acc[0, 0] = [90, 92, 94]  # size 2, level 10
    acc[0, 1] = [70, 80, 90]  # size 2, level 50
    acc[1, 0, 0] = 85  # size 10: one subset
    acc[1, 1, 0] = 60
    none = np.array([[98, 99, 100], [89.6, np.nan, np.nan]])
    flops_pct = np.where(np.isnan(acc), np.nan, np.array([14.3, 57.8])[None, :, None])
    ones = np.where(np.isnan(acc), np.nan, 1.0)
    return sw.MethodTable(method, "desc", {"name": method}, sizes, levels, acc, none, flops_pct, ones * 1e8,
                          ones * 200, ones * 5.0)


def test_table2_layout_most_pruned_first_with_none_column():
    t = _table()
    md = sw.table2_markdown(t)
    header = md.splitlines()[0]
    assert header.index("57.8% FLOPs (L50)") < header.index("14.3% FLOPs (L10)") < header.index("None")
    t80 = T2 * 10 / math.sqrt(3)
    assert f"| 2 | 80.0 ± {t80:.1f} | 92.0 ± 5.0 | 99.0 ± 2.5 |" in md
    assert "| 10 | 60.0 | 85.0 | 89.6 |" in md
    rows = sw.table2_csv(t).splitlines()
    assert rows[0] == ("classes,L50_mean,L50_ci,L50_flops_pruned_pct,L10_mean,L10_ci,L10_flops_pruned_pct,"
                       "none_mean,none_ci")
    assert rows[1].startswith(f"2,80.00,{t80:.2f},57.800,92.00,")
    assert rows[2] == "10,60.00,,57.800,85.00,,14.300,89.60,"


def test_cells_json_has_every_cell_and_paired_drops():
    t = _table()
    cells = sw.cells_json(t, {2: [(0, 1), (2, 3), (4, 5)], 10: [tuple(range(10))]}, sw.PAPER_TABLE2)
    assert len(cells) == 2 * 3
    c = next(c for c in cells if c["size"] == 2 and c["level"] == 50.0)
    assert c["mean_pct"] == 80.0 and c["n"] == 3 and c["values_pct"] == [70.0, 80.0, 90.0]
    assert c["drop_mean_pct"] == pytest.approx(19.0)  # paired: (98-70 + 99-80 + 100-90) / 3
    assert c["paper_mean_pct"] == 84.1 and c["delta_vs_paper_pct"] == pytest.approx(-4.1)
    none10 = next(c for c in cells if c["size"] == 10 and c.get("column") == "None")
    assert none10["mean_pct"] == 89.6 and none10["ci_pct"] is None and none10["paper_mean_pct"] == 89.6


def test_compare_paper_and_methods_tables():
    t = _table()
    md = sw.compare_paper_markdown(t, sw.PAPER_TABLE2)
    assert "| 2 | 80.0 ± 24.8 / 84.1 ± 6.7 (-4.1) |" in md
    other = _table("better")
    other.acc_pct = other.acc_pct + 2.0
    cmp = sw.methods_comparison([t, other])
    assert cmp[0]["cells_worse"] == 0 and cmp[0]["cells_not_worse"] == 4
    assert {c["delta_mean_pct"] for c in cmp[0]["cells"]} == {2.0}
    assert "better − m" in sw.methods_markdown([t, other])


def test_plot_is_a_png():
    blob = sw.plot_png(_table())
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000


def test_embedded_paper_table_matches_the_shared_csv():
    if not SHARED_TABLE2.is_file():
        pytest.skip(f"{SHARED_TABLE2} not present")
    assert sw.load_paper_table(SHARED_TABLE2) == sw.PAPER_TABLE2
    assert sw.PAPER_TABLE2[10][30.0] == (74.3, pytest.approx(math.nan, nan_ok=True))
    assert sw.PAPER_TABLE2[5][50.0] == (59.8, 2.5)


def test_bad_paper_table_is_one_clear_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("size,a,b\n2,1,2\n")
    with pytest.raises(UsageError, match="header"):
        sw.load_paper_table(p)
