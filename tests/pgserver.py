"""A real PostgreSQL server for the store tests: ``$HARNESS_TEST_PG`` (CI starts one, .ci/run), else a throwaway
server started here (``initdb`` in a temporary folder, loopback port, trust auth), else the tests skip.

Fixtures (registered by the root conftest.py):
- ``pg_admin_url`` (session): a URL of a role that may create databases.
- ``pg_url``: a fresh, empty database on it for one test (dropped afterwards).
- ``store_db``: parametrised ``sqlite`` / ``postgresql``: a new results database (a file path or a URL).

``python -m tests.pgserver`` starts a server, prints its URL and stops it on Ctrl-C (for trying things by hand).
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` system user (``runuser``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_ENV = "HARNESS_TEST_PG"


def pg_bin_dir() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """A throwaway server: ``start()`` gives its admin URL, ``stop()`` removes everything."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.data = self.tmp / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses root: run it as the postgres system user
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout_s: float = 120.0) -> None:
        subprocess.run([*self.as_user, *argv], check=True, capture_output=True, timeout=timeout_s, cwd=self.tmp)

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "harness", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        opts = (f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.tmp / "log"),
                  "-w", "-t", "60", "start")
        return f"postgresql://harness@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _admin(url: str):
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                           connect_timeout=10)


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` with its database replaced by ``name``."""
    from sqlalchemy.engine import make_url

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url():
    url = os.environ.get(PG_ENV)
    if url:
        yield url
        return
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL: set {PG_ENV} or install postgresql (initdb)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("PostgreSQL cannot run as root and runuser is missing")
    server = TempPostgres(bin_dir)
    try:
        url = server.start()
    except (OSError, KeyError, subprocess.SubprocessError) as exc:
        server.stop()
        pytest.skip(f"could not start a temporary PostgreSQL ({exc})")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_admin_url):
    """A fresh database for one test (its URL); dropped afterwards."""
    name = f"harness_t_{secrets.token_hex(5)}"
    with _admin(pg_admin_url) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(pg_admin_url, name)
    finally:
        with _admin(pg_admin_url) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request, tmp_path):
    """A new results database: a SQLite file path, or a PostgreSQL URL of a fresh database."""
    if request.param == "sqlite":
        return str(tmp_path / "h.db")
    return request.getfixturevalue("pg_url")


if __name__ == "__main__":  # pragma: no cover - by hand
    srv = TempPostgres(pg_bin_dir() or Path("/usr/lib/postgresql/15/bin"))
    print(srv.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
