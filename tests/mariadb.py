"""MariaDB for tests: a throwaway ``mariadbd`` in a temp dir, or the
machine's own server at 127.0.0.1:3306 when mariadbd is not installed.

A throwaway server has its own data dir, socket and port, runs without
grant tables (it is a sandbox) and is killed at the end, so tests may stop
it mid-commit. On either kind, a test works in databases named with its own
suffix and drops only those.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pymysql

from s3server import free_port

__all__ = ["MariaDB", "SharedMariaDB", "available", "reachable"]


def available() -> bool:
    return bool(shutil.which("mariadbd") and shutil.which("mariadb-install-db"))


def reachable(host: str = "127.0.0.1", port: int = 3306) -> bool:
    try:
        pymysql.connect(host=host, port=port, user="root", connect_timeout=2).close()
        return True
    except pymysql.err.MySQLError:
        return False


class MariaDB:
    """One mariadbd process with its data dir under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}",
             "--user=root", "--auth-root-authentication-method=normal",
             "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def start(self) -> MariaDB:
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.data}",
             f"--socket={self.root / 'mariadb.sock'}", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
             "--skip-log-bin", "--innodb-buffer-pool-size=64M",
             "--innodb-log-file-size=16M", f"--log-error={self.root / 'error.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not reachable(port=self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "error.log").read_text(errors="replace")
                raise RuntimeError(f"mariadbd did not start:\n{log[-2000:]}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does to the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def drop(self, suffix: str) -> None:
        drop_databases(self.port, suffix)


class SharedMariaDB:
    """The machine's own server at 127.0.0.1:3306, shared with others.

    It cannot be killed by a test; each test drops only its own databases.
    """

    port = 3306
    url = "mysql://root@127.0.0.1:3306"

    def drop(self, suffix: str) -> None:
        drop_databases(self.port, suffix)


def drop_databases(port: int, suffix: str) -> None:
    """Drop the databases whose names end with one test's ``suffix``."""
    assert len(suffix) >= 8, "a short suffix could match someone else's database"
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root")
    try:
        cur = conn.cursor()
        cur.execute("SHOW DATABASES")
        for (name,) in cur.fetchall():
            if name.endswith(suffix):
                cur.execute(f"DROP DATABASE `{name}`")
    finally:
        conn.close()

