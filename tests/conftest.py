"""Fixtures: a deployment in a temp dir, a real daemon process, real clients.

Every test gets its own config file, state dir, database and object store.
The database is a SQLite file or a throwaway MariaDB server; the store is
a local folder or a bucket on a moto S3 server process. A test module opts
into every pair with ``pytestmark = ALL_BACKENDS``. The daemon runs as
``python -m stagerd serve`` in a subprocess and client scripts run as their
own processes, so kills are real kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import stagerd_client
from lab import SUFFIX_VARIABLE, schema_name
from mariadb import MariaDB, SharedMariaDB, available, reachable
from s3server import make_bucket, s3_options, start_moto, stop_moto
from stagerd.core import ledger, protocol
from stagerd.core.config import StoreConfig
from stagerd.core.db import connect as connect_db
from stagerd.core.stores import Store

HERE = Path(__file__).parent

PAIRS = [("sqlite", "file"), ("sqlite", "s3"), ("mariadb", "file"), ("mariadb", "s3")]
ALL_BACKENDS = pytest.mark.parametrize(
    "backend", PAIRS, indirect=True, ids=[f"{d}-{s}" for d, s in PAIRS]
)

# A client that stages one object of Recording, prints HOLDING and its
# intent, then lives on; {close} may close its daemon connection first.
HOLDER = """
import sys, time
sys.path.insert(0, {here!r})
import stagerd_client as dj
from lab import declare
from stagerd_client.staged import daemon_link

lab = declare()
staged = lab.Recording.staged_insert1.__enter__()
staged.rec["recording_id"] = "held"
with staged.open("raw", ".bin") as f:
    f.write(b"partial")
if {close}:
    daemon_link(dj.config).close()
print("HOLDING", staged.intent, flush=True)
time.sleep(600)
"""


def holder(close: bool = False) -> str:
    return HOLDER.format(here=str(HERE), close=close)


class Deployment:
    """One host's worth of config, state and storage under ``root``."""

    def __init__(
        self, root: Path, database_url: str | None = None,
        s3_endpoint: str | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.socket = root / "run" / "stagerd.sock"
        self.state = root / "state"
        self.objects = root / "objects"
        self.database = root / "lab.db"
        self.config = root / "stagerd.toml"
        self.database_url = database_url or f"sqlite:///{self.database}"
        if s3_endpoint is None:
            self.store_kind = "file"
            self.store_url, self.store_options = f"file://{self.objects}", {}
        else:
            self.store_kind = "s3"
            bucket = f"stagerd-{root.name.lower().replace('_', '-')[-40:]}"
            make_bucket(s3_endpoint, bucket)
            self.store_url = f"s3://{bucket}/objects"
            self.store_options = s3_options(s3_endpoint)
        self.store = Store(StoreConfig("default", self.store_url, self.store_options))
        self.db = connect_db(self.database_url)
        self.write_config()

    def write_config(self, reconnect_s: float = 10, **extra: dict) -> None:
        values = {
            "daemon": {"socket": str(self.socket), "state_dir": str(self.state)},
            "database": {"url": self.database_url},
            "stores": {"default": {"url": self.store_url,
                                   "options": self.store_options}},
            "client": {"reconnect_s": reconnect_s},
        }
        for section, table in extra.items():
            values.setdefault(section, {}).update(table)
        self.config.write_text(tomli_w.dumps(values))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STAGERD_CONFIG": str(self.config)}

    def files(self) -> list[str]:
        """Every file in the object store, relative to its root."""
        root = self.store.root
        self.store.fs.invalidate_cache()
        try:
            found = self.store.fs.find(root)
        except FileNotFoundError:
            return []
        return sorted(name[len(root) + 1:] for name in found)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.db.connect()
        try:
            return [tuple(r) for r in self.db.execute(conn, sql, params).fetchall()]
        finally:
            conn.close()

    def rows(self, schema: str, table: str) -> list[tuple]:
        """The rows of ``table`` in the test schema named ``schema``."""
        name = self.db.table(schema_name(schema), table)
        return self.query(f"SELECT * FROM {name}")

    def decision(self, schema: str, intent: str) -> str | None:
        name = self.db.table(schema_name(schema), ledger.TABLE)
        found = self.query(
            f"SELECT outcome FROM {name} "
            f"WHERE intent_id = {self.db.param}", (intent,),
        )
        return found[0][0] if found else None

    def status(self) -> dict[str, Any]:
        return protocol.call(self.socket, "status")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "stagerd", *args, "--config", str(self.config)],
            capture_output=True, text=True, env=self.env, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"stagerd {args} failed:\n{result.stderr}")
        return result


class DaemonProcess:
    """``stagerd serve`` in a subprocess, with its log collected."""

    def __init__(
        self, deployment: Deployment, env: dict[str, str] | None = None
    ) -> None:
        self.deployment = deployment
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def start(self) -> DaemonProcess:
        d = self.deployment
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stagerd", "serve", "--config", str(d.config),
             "--log-level", "debug"],
            stderr=subprocess.PIPE, text=True, env={**d.env, **self.extra_env},
        )
        threading.Thread(target=self._collect, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited:\n" + "\n".join(self.log))
            try:
                protocol.call(d.socket, "status")
                return self
            except (OSError, stagerd_client.StagerdError):
                time.sleep(0.05)
        raise AssertionError("daemon did not answer within 20 s")

    def _collect(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.log.append(line.rstrip())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return self.proc.returncode

    def logged(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]


class Client:
    """A client script in its own process, talking back through stdout."""

    def __init__(
        self, deployment: Deployment, code: str, env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**deployment.env, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, marker: str, timeout: float = 30) -> str:
        """Read stdout until a line starts with ``marker``; that line."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"client exited before {marker!r}: {self.proc.stderr.read()}"
                )
            if line.startswith(marker):
                return line.strip()
        raise AssertionError(f"client did not print {marker!r}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def need_mariadb(what: str) -> None:
    """Fail under CI, skip elsewhere, naming what is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {what}")
    pytest.skip(f"no MariaDB: needs {what}")


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory):
    """A throwaway MariaDB for the session, else the machine's own server.

    Tests on the machine's server touch only databases named with their
    own suffix (see ``lab.schema_name``) and drop just those.
    """
    if available():
        server = MariaDB(tmp_path_factory.mktemp("mariadb")).start()
        yield server
        server.stop()
    elif reachable():
        yield SharedMariaDB()
    else:
        need_mariadb("mariadbd, or a server at 127.0.0.1:3306 (user root)")


@pytest.fixture(scope="session")
def moto_endpoint():
    proc, endpoint = start_moto()
    yield endpoint
    stop_moto(proc)


@pytest.fixture
def backend(request) -> tuple[str, str]:
    return getattr(request, "param", ("sqlite", "file"))


@pytest.fixture
def deployment(tmp_path: Path, backend, request, monkeypatch) -> Deployment:
    database, store = backend
    database_url = s3 = None
    if database == "mariadb":
        server = request.getfixturevalue("mariadb_server")
        suffix = f"_t{uuid.uuid4().hex[:10]}"
        monkeypatch.setenv(SUFFIX_VARIABLE, suffix)
        request.addfinalizer(lambda: server.drop(suffix))
        database_url = server.url
    else:
        monkeypatch.delenv(SUFFIX_VARIABLE, raising=False)
    if store == "s3":
        s3 = request.getfixturevalue("moto_endpoint")
    return Deployment(tmp_path, database_url, s3)


@pytest.fixture
def daemon(deployment: Deployment):
    proc = DaemonProcess(deployment).start()
    yield proc
    code = proc.stop()
    assert code in (0, -signal.SIGKILL), "\n".join(proc.log)
    errors = proc.logged("level=ERROR")
    assert not errors, "\n".join(errors)


@pytest.fixture
def client_config(deployment: Deployment):
    """Point this process's stagerd_client at the test deployment."""
    stagerd_client.config.load(deployment.config)
    yield stagerd_client.config
    stagerd_client.config.load(deployment.config)


@pytest.fixture
def spawn(deployment: Deployment):
    clients: list[Client] = []

    def make(code: str, env: dict[str, str] | None = None) -> Client:
        clients.append(Client(deployment, code, env))
        return clients[-1]

    yield make
    for c in clients:
        if c.proc.poll() is None:
            c.proc.kill()
        c.proc.wait(10)
        for stream in (c.proc.stdout, c.proc.stderr):
            if stream:
                stream.close()


def register_fields(
    deployment: Deployment, recording_id: str = "a", **over: Any
) -> dict[str, Any]:
    """A register request's fields for the test tables' ``recording.raw``."""
    return {
        "schema": schema_name("imaging"), "table": "recording",
        "key": {"recording_id": recording_id}, "field": "raw", "ext": ".bin",
        "store": "default", "store_url": deployment.store_url,
        "database": deployment.db.identity, **over,
    }


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")

