"""A real local lab for the lab tests: a private network namespace (only ``lo``), a Ray head and worker nodes
started with ``harness lab head`` / ``harness lab join``, each worker owning virtual phones
(``harness virtual-phone``, discovered through the node's own ``HARNESS_CACHE_DIR``).

Ray's servers listen on every interface of their namespace, so every process of the lab runs inside a network
namespace of its own (``unshare --net`` holder, entered with ``nsenter``): the only interface there is loopback.
The nodes advertise 127.0.0.2, 127.0.0.3...: Ray keeps such addresses as given (it replaces only 127.0.0.1).
A node is killed by its session id (every process ``harness lab join`` started, Ray workers included).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAD_PORT = 46001
START_TIMEOUT_S = 300.0


def netns_available() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    res = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True,
                         check=False)
    return res.returncode == 0


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (field 6 of /proc/PID/stat)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:
            out.append(int(d.name))
    return out


class Lab:
    """The namespace, the head, the nodes and their phones; everything is stopped by :meth:`close`."""

    def __init__(self, work: Path, env: dict[str, str], port: int = HEAD_PORT):
        self.work = work
        self.env = {**env, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "10",
                    "HARNESS_PROGRESS": "0"}
        self.sessions: dict[str, int] = {}
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c",
                                        "ip link set lo up && echo ready && exec sleep 7200"],
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.holder.stdout.readline().strip() == "ready"
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        self.port = port  # Ray refuses a head address a gcs_server of this machine has, in any namespace
        self.address = f"127.0.0.2:{port}"

    def ns(self, args: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--", *args]

    def harness(self, *args: str) -> list[str]:
        return self.ns([sys.executable, "-m", "harness.cli", *args])

    def spawn(self, name: str, args: list[str], env: dict[str, str], ready: str) -> None:
        """Start ``args`` in its own session and wait for ``ready`` in its stdout."""
        self.wait_ready(name, self.launch(name, args, env), ready)

    def launch(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start ``args`` in its own session (its output in ``<work>/<name>.log``)."""
        with open(self.work / f"{name}.log", "w") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(self.work), start_new_session=True)
        self.sessions[name] = proc.pid
        return proc

    def wait_ready(self, name: str, proc: subprocess.Popen, ready: str) -> None:
        log = self.work / f"{name}.log"
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)

    def node_env(self, node: str) -> dict[str, str]:
        return {**self.env, "HARNESS_CACHE_DIR": str(self.work / node / "cache")}

    def start_head(self) -> None:
        for attempt in range(2):  # Ray's fixed 30 s node start-up limit, again
            try:
                self.spawn("head", self.harness("lab", "head", "--node-ip", "127.0.0.2", "--port", str(self.port),
                                                "--num-cpus", "1", "--block"), self.env, "lab head")
                return
            except RuntimeError:
                self.kill("head")
                if attempt:
                    raise

    def start_phones(self, owners: dict[str, str]) -> list[tuple[str, subprocess.Popen]]:
        """Start the virtual phones ``serial -> node`` at once; :meth:`phones_ready` waits for them."""
        return [(f"phone-{serial}", self.launch(f"phone-{serial}", self.harness(
            "virtual-phone", "--port", "0", "--serial", serial, "--accept-new-keys",
            "--root", str(self.work / node / serial), "--duration-s", "3600"), self.node_env(node)))
            for serial, node in owners.items()]

    def phones_ready(self, started: list[tuple[str, subprocess.Popen]]) -> None:
        for name, proc in started:
            self.wait_ready(name, proc, "listening on")

    def join(self, node: str, ip: str) -> None:
        for attempt in range(2):  # a loaded machine can miss Ray's fixed 30 s node start-up limit
            try:
                self.spawn(node, self.harness("lab", "join", "--address", self.address, "--node-ip", ip,
                                              "--host", node, "--num-cpus", "1", "--block"),
                           self.node_env(node), "lab node up")
                return
            except RuntimeError:
                self.kill(node)
                if attempt:
                    raise

    def kill(self, name: str) -> None:
        """SIGKILL every process of ``name``'s session (a host going down)."""
        sid = self.sessions.pop(name, None)
        if sid is None:
            return
        for _ in range(3):
            pids = session_pids(sid)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    def all_pids(self) -> list[int]:
        return [p for sid in self.sessions.values() for p in session_pids(sid)]

    def cli(self, *args: str, timeout_s: float = 900.0) -> subprocess.CompletedProcess:
        return self.cli_env(self.env, *args, timeout_s=timeout_s)

    def cli_env(self, env: dict[str, str], *args: str, timeout_s: float = 900.0) -> subprocess.CompletedProcess:
        """``harness ARGS`` inside the lab's network namespace, with ``env``."""
        return subprocess.run(self.harness(*args), env=env, capture_output=True, text=True,
                              timeout=timeout_s, cwd=str(self.work), check=False)

    def status(self) -> dict:
        res = self.cli("lab", "status", "--address", self.address, "--json", timeout_s=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    def close(self) -> None:
        for name in list(self.sessions):
            self.kill(name)
        self.holder.kill()
        self.holder.wait(10)


# ---------------------------------------------------------------- the tests

import pytest  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from harness.errors import PROJECT_ERRORS  # noqa: E402

PLAN = {"levels": [50], "window_s": 0.1, "idle_s": 0.1, "min_reps": 2, "max_reps": 2, "target_ci_pct": 0.001,
        "warmup_inferences": 1, "min_inference_s_per_model": 0.1, "min_inferences_per_model": 4}
N_WINDOWS = 2 * 2 * 2 + 1  # rounds x models x (idle + inference) + the closing idle

pytestmark = pytest.mark.skipif(not netns_available(),
                                reason="needs network namespaces (unshare --net) to keep Ray on loopback")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Head + node-a (phone vp1) + node-b (phones vp2, vp3), the plan's models exported once into the cache."""
    from harness.backends import ModelPreparation
    from harness.plan import make_plan

    work = tmp_path_factory.mktemp("lab")
    (work / "plan.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in PLAN.items()))
    (work / "results").mkdir()
    if os.environ.get("HARNESS_LAB_TEST_CACHE"):  # .pte files of this plan exported earlier (a loaded machine)
        shutil.copytree(os.environ["HARNESS_LAB_TEST_CACHE"], work / "results" / "cache")
    with ModelPreparation(make_plan("virtual", "virtual", PLAN), work / "results" / "cache") as prep:
        prep.finish()
    lab = Lab(work, {**os.environ, "HARNESS_LOCK_DIR": str(work / "locks")})
    try:
        phones = lab.start_phones({"vp1": "node-a", "vp2": "node-b", "vp3": "node-b"})  # while the head starts
        lab.start_head()
        lab.phones_ready(phones)
        lab.join("node-a", "127.0.0.3")
        lab.join("node-b", "127.0.0.4")
        yield lab
    finally:
        lab.close()


def _db_runs(db: Path | str) -> dict[str, dict]:
    """serial -> {run_id, lab_run, host, seqs (list, repeats kept), invalid reasons, status} from the store (a
    SQLite file or a PostgreSQL URL), read through the harness's own store."""
    from harness.store import Store

    out = {}
    with Store(db, readonly=True) as st:
        for summary in st.list_runs():
            run_id = summary.run.run_id
            for event, detail, _ in st.events(run_id):
                if event == "lab":
                    info = json.loads(detail)
                    wins = st.windows(run_id)
                    out[info["serial"]] = {"run_id": run_id, "lab_run": info["lab_run"], "host": info["host"],
                                           "seqs": [w.seq for w in wins], "status": st.run_status(run_id),
                                           "invalid": {w.seq: w.reason for w in wins if w.status != "valid"}}
    return out


def _socket_url(url: str) -> str | None:
    """The database of ``url`` through the server's unix socket: the lab's private network namespace has only
    its own loopback, a socket file is reachable from any namespace.  None when the server has no socket."""
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(url, connect_timeout=10) as con:
        sockets = str(con.execute("SHOW unix_socket_directories").fetchone()[0])
        port = str(con.execute("SHOW port").fetchone()[0])
    if not sockets.strip():
        return None
    u = make_url(url)
    return f"postgresql://{u.username}@/{u.database}?host={sockets.split(',')[0].strip()}&port={port}"


@pytest.fixture
def lab_db(request, lab):
    """A fresh PostgreSQL database reached through its socket when a server is at hand, else a SQLite file."""
    try:
        url = _socket_url(request.getfixturevalue("pg_url"))
    except pytest.skip.Exception:
        url = None
    return url or str(lab.work / "results" / "three.db")


def _run_args(lab: Lab, db: Path | str, *extra: str) -> list[str]:
    return ["run", "--lab", lab.address, "--db", str(db), "--no-report", "--json", *extra]


def _netns(pid: int) -> str | None:
    """The network namespace of a process, or None when it has exited meanwhile."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_three_phone_lab_run_stores_every_window_once(lab, lab_db):
    st = lab.status()
    hosts = {h["ip"]: h for h in st["hosts"] if h["alive"]}
    assert set(hosts) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert [d["serial"] for d in hosts["127.0.0.3"]["devices"]] == ["vp1"]
    assert [d["serial"] for d in hosts["127.0.0.4"]["devices"]] == ["vp2", "vp3"]
    assert hosts["127.0.0.4"]["monitors"] == ["vmon-vp2", "vmon-vp3"]
    # each phone paired with its own (virtual) Monsoon; the jobs below need both, and the node checks the pairing
    assert [d["monitors"] for d in hosts["127.0.0.4"]["devices"]] == [["vmon-vp2"], ["vmon-vp3"]]
    # every process of the lab lives in the private network namespace (only loopback there)
    ns = os.readlink(lab.netns)
    assert all(_netns(p) in (ns, None) for p in lab.all_pids())  # None: the process has exited

    db = lab_db  # PostgreSQL (or SQLite when no server is at hand)
    res = lab.cli(*_run_args(lab, db, "--devices", "vp1,vp2,vp3", "--config", str(lab.work / "plan.toml")))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["status"] == "complete" and set(out["devices"]) == {"vp1", "vp2", "vp3"}
    runs = _db_runs(db)
    assert set(runs) == {"vp1", "vp2", "vp3"}
    assert len({r["run_id"] for r in runs.values()}) == 3
    assert {r["lab_run"] for r in runs.values()} == {out["lab_run"]}
    assert runs["vp1"]["host"] == "node-a" and runs["vp2"]["host"] == runs["vp3"]["host"] == "node-b"
    for serial, r in runs.items():
        assert r["seqs"] == list(range(N_WINDOWS)), serial
        assert r["status"] == "complete", serial
        # a loaded machine may distort a window's sync markers (invalid, with its measurement reason); no window
        # of a run that completed may say its node was lost
        assert not any("node lost" in reason for reason in r["invalid"].values()), (serial, r["invalid"])
        rows = out["devices"][serial]["rows"]  # a table per device
        assert {row["level"] for row in rows} == {0, 50}


def test_lost_node_windows_invalid_then_resume_completes(lab):
    db = lab.work / "results" / "lost.db"
    plan = lab.work / "plan.toml"
    with open(lab.work / "driver.log", "w") as log:
        driver = subprocess.Popen(lab.harness(*_run_args(lab, db, "--devices", "vp1,vp2,vp3", "--config", str(plan))),
                                  env=lab.env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(lab.work))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S * 2
        while True:  # node-b goes down once vp2 has stored a few windows
            try:
                runs = _db_runs(db) if db.exists() else {}
            except (*PROJECT_ERRORS, SQLAlchemyError):  # the store's tables are being created
                runs = {}
            if len(runs.get("vp2", {}).get("seqs", [])) >= 2:
                break
            assert driver.poll() is None and time.monotonic() < deadline, (lab.work / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        lab.kill("node-b")
        stdout, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, (lab.work / "driver.log").read_text()[-3000:]
    out = json.loads(stdout)
    runs = _db_runs(db)
    assert out["devices"]["vp1"]["status"] == "complete" and runs["vp1"]["seqs"] == list(range(N_WINDOWS))
    for serial in ("vp2", "vp3"):
        assert out["devices"][serial]["status"] == "lost", out["devices"][serial]
        if runs.get(serial):  # a lost run: its in-flight window invalid with the reason, nothing twice
            r = runs[serial]
            assert len(r["seqs"]) == len(set(r["seqs"])) < N_WINDOWS
            assert any("node lost" in reason for reason in r["invalid"].values()), r
            assert r["status"] == "interrupted"
    lost_before = {s: dict(runs[s]["invalid"]) for s in ("vp2", "vp3") if runs.get(s)}

    lab.join("node-b", "127.0.0.4")  # the host is back
    res = lab.cli(*_run_args(lab, db, "--resume", out["lab_run"]))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = _db_runs(db)
    for serial in ("vp1", "vp2", "vp3"):
        assert runs[serial]["seqs"] == list(range(N_WINDOWS)), serial  # nothing lost, nothing twice
        assert runs[serial]["status"] == "complete"
    for serial, bad in lost_before.items():
        assert runs[serial]["invalid"] == bad  # the lost windows stay invalid with their reason


def test_sweep_on_the_lab_fills_the_same_resumable_cell_store(lab, data_dir, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--sizes", "2", "--levels", "50", "--subsets", "2", "--per-class", "20", "--method", "paper",
            "--data", str(data_dir), "--out", str(out), "--json"]
    res = lab.cli(*argv, "--lab", lab.address)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got["timing"]["jobs_run"] == got["timing"]["jobs_total"] == 2 * 2
    assert all(m["cells_missing"] == 0 for m in got["methods"])
    again = lab.cli(*argv, "--workers", "1")  # the same cells, found in the store the lab tasks filled
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["timing"]["jobs_run"] == 0 and second["timing"]["jobs_resumed"] == got["timing"]["jobs_total"]
    assert second["methods"][0]["cells"] == got["methods"][0]["cells"]
