"""MariaDB: the commit/fence race, a server lost during COMMIT, passwords."""

from __future__ import annotations

import threading
import time

import pytest

import stagerd_client as dj
from conftest import (
    HERE, Client, DaemonProcess, Deployment, need_mariadb, wait_until,
)
from lab import declare
from mariadb import MariaDB, available
from stagerd.core import protocol
from stagerd.core.db import connect as connect_db
from stagerd.core.errors import ConfigError, StagerdError

on_mariadb = pytest.mark.parametrize(
    "backend", [("mariadb", "file")], indirect=True, ids=["mariadb-file"]
)


@on_mariadb
def test_commit_racing_a_fence_has_exactly_one_outcome(
    deployment, daemon, client_config
):
    lab = declare()
    outcomes = {"committed": 0, "fenced": 0}
    for i in range(12):
        staged = lab.Recording.staged_insert1.__enter__()
        staged.rec["recording_id"] = f"race-{i}"
        with staged.open("raw", ".bin") as f:
            f.write(b"x" * 100)
        barrier = threading.Barrier(2)
        replies: list = []

        def fence():
            barrier.wait()
            # Root may abort any intent: the same fence a dead owner gets.
            try:
                replies.append(protocol.call(deployment.socket, "abort",
                                             intent=staged.intent)["state"])
            except StagerdError as e:
                replies.append(e)

        t = threading.Thread(target=fence)
        t.start()
        barrier.wait()
        time.sleep(i * 0.006)  # sweep the commit across the fence's timing
        try:
            staged.__exit__(None, None, None)
            won = True
        except dj.DecisionConflict as e:
            assert "fenced" in str(e)
            won = False
        t.join()

        key = {"recording_id": f"race-{i}"}
        decision = deployment.decision("imaging", staged.intent)
        row = (lab.Recording & key).to_dicts()
        if won:
            outcomes["committed"] += 1
            assert decision == "committed" and row and row[0]["raw"].verify()
        else:
            outcomes["fenced"] += 1
            assert decision == "aborted" and not row
            assert not [f for f in deployment.files() if f"race-{i}/" in f]
    print(f"race outcomes: {outcomes}")
    wait_until(lambda: deployment.status()["pending"] == [], 20, "all finished")
    assert len(deployment.files()) == outcomes["committed"]


@pytest.fixture
def own_server(tmp_path_factory):
    """A MariaDB this test may kill and restart."""
    if not available():
        need_mariadb("mariadbd, to run a server this test may kill")
    server = MariaDB(tmp_path_factory.mktemp("own-mariadb")).start()
    yield server
    server.kill()


COMMIT_KILLS_SERVER = f"""
import os, signal, sys
sys.path.insert(0, {str(HERE)!r})
import stagerd_client as dj
from lab import declare

lab = declare()
db = lab.schema.db
real_commit = type(db).commit

def commit_after_server_dies(self, conn):
    # The server dies between the row insert and COMMIT.
    os.kill(int(os.environ["MARIADB_PID"]), signal.SIGKILL)
    real_commit(self, conn)

type(db).commit = commit_after_server_dies
try:
    with lab.Recording.staged_insert1 as staged:
        staged.rec["recording_id"] = "lost-commit"
        with staged.open("raw", ".bin") as f:
            f.write(b"y" * 1000)
except dj.OutcomeUnknown as e:
    print("UNKNOWN", staged.intent, e, flush=True)
"""


def test_server_lost_during_commit(tmp_path, own_server, monkeypatch):
    deployment = Deployment(tmp_path / "host", own_server.url)
    daemon = DaemonProcess(deployment).start()
    monkeypatch.setenv("MARIADB_PID", str(own_server.proc.pid))
    client = Client(deployment, COMMIT_KILLS_SERVER)
    try:
        line = client.expect("UNKNOWN")
        intent = line.split()[1]
        assert "the daemon decides it" in line
        assert client.wait()[0] == 0

        # The owner is gone but the outcome is unknown: nothing is deleted,
        # and the daemon keeps retrying while the server is down.
        time.sleep(2.0)
        assert deployment.files(), "an object of unknown outcome was deleted"
        [pending] = deployment.status()["pending"]
        assert pending["id"] == intent and "cannot connect" in pending["last_error"]

        own_server.start()
        wait_until(lambda: deployment.status()["pending"] == [], 30, "decided")
        # The COMMIT never reached the server: the fence wins, objects go.
        assert deployment.decision("imaging", intent) == "aborted"
        assert deployment.rows("imaging", "recording") == []
        assert deployment.files() == []
        assert daemon.logged(f"resolve failed intent={intent}")
    finally:
        client.proc.kill()
        client.wait()
        assert daemon.stop() == 0


def test_password_sources_and_secrecy(tmp_path, monkeypatch):
    monkeypatch.delenv("STAGERD_DB_PASSWORD", raising=False)
    secret_file = tmp_path / "db.password"
    secret_file.write_text("hunter2\n")
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        connect_db("mysql://lab@127.0.0.1:1", str(secret_file))
    secret_file.chmod(0o600)
    db = connect_db("mysql://lab@127.0.0.1:1", str(secret_file))
    assert db.identity == "mysql://127.0.0.1:1"
    with pytest.raises(StagerdError) as info:
        db.connect()  # nothing listens on port 1
    assert "hunter2" not in str(info.value) and "'lab'" in str(info.value)

    monkeypatch.setenv("STAGERD_DB_PASSWORD", "from-env")
    with pytest.raises(StagerdError) as info:
        connect_db("mysql://lab:in-url@127.0.0.1:1").connect()
    assert "in-url" not in str(info.value) and "from-env" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        connect_db("postgres://u:topsecret@h/x")
    assert "topsecret" not in str(info.value)
