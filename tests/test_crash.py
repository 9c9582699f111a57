"""Real processes killed with real signals, mid-write."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import ALL_BACKENDS, HERE, DaemonProcess, holder, wait_until

pytestmark = ALL_BACKENDS

WRITER = f"""
import os, sys, time
sys.path.insert(0, {str(HERE)!r})
import zarr
from lab import declare

lab = declare()
with lab.ImagingSession.staged_insert1 as staged:
    staged.rec.update(subject_id=1, session_id=1, n_frames=10, frame_rate=1.0)
    z = zarr.open(staged.store("frames", ".zarr"), mode="w", shape=(10, 64),
                  chunks=(1, 64), dtype="int32")
    z[0] = 1
    print("WRITING", staged.intent, flush=True)
    while not os.path.exists(os.environ["GO_FILE"]):
        time.sleep(0.02)
    for i in range(1, 10):
        z[i] = i
print("DONE", flush=True)
"""


@pytest.fixture
def writer(deployment, spawn, monkeypatch):
    go = deployment.root / "go"
    monkeypatch.setenv("GO_FILE", str(go))

    def start():
        client = spawn(WRITER)
        intent = client.expect("WRITING").split()[1]
        assert deployment.files(), "the writer wrote nothing before the kill"
        return client, intent, go

    return start


def rows(deployment) -> list[tuple]:
    return deployment.rows("imaging", "imaging_session")


def decision(deployment, intent: str) -> str | None:
    return deployment.decision("imaging", intent)


def test_sigkill_client_mid_write_is_cleaned(deployment, daemon, writer):
    client, intent, _ = writer()
    client.kill(signal.SIGKILL)
    client.wait()
    wait_until(lambda: deployment.files() == [], 20, "partial object removed")
    assert rows(deployment) == []
    assert decision(deployment, intent) == "aborted"
    wait_until(lambda: deployment.status()["pending"] == [], 20, "intent finished")
    assert daemon.logged(f"fenced intent={intent}")
    assert daemon.logged(f"deleted intent={intent}")


def test_sigint_client_mid_write_aborts(deployment, daemon, writer):
    client, intent, _ = writer()
    client.kill(signal.SIGINT)
    code, _, err = client.wait()
    assert code != 0 and "KeyboardInterrupt" in err
    # The process aborted before it exited: nothing is left to resolve.
    assert deployment.files() == [] and rows(deployment) == []
    assert decision(deployment, intent) == "aborted"
    assert deployment.status()["pending"] == []


def test_daemon_killed_and_restarted_under_live_client(deployment, daemon, writer):
    client, intent, go = writer()
    daemon.kill()
    second = DaemonProcess(deployment).start()
    try:
        pending = deployment.status()["pending"]
        assert [p["id"] for p in pending] == [intent], "restart lost the intent"
        time.sleep(1.0)  # several sweeps: a live owner must keep its intent
        assert deployment.files(), "the restarted daemon deleted a live upload"

        go.touch()
        code, out, err = client.wait()
        assert code == 0 and "DONE" in out, err
        assert len(rows(deployment)) == 1
        assert decision(deployment, intent) == "committed"
        wait_until(lambda: deployment.status()["pending"] == [], 20, "commit heard")
        assert deployment.status()["counts"] == {"committed": 1}
        assert len(deployment.files()) == 11  # zarr.json and ten chunks
    finally:
        assert second.stop() == 0


def test_client_and_daemon_killed_then_daemon_restarted(deployment, daemon, writer):
    client, intent, _ = writer()
    daemon.kill()
    client.kill(signal.SIGKILL)
    client.wait()
    assert deployment.files(), "nothing should be cleaned while no daemon runs"

    second = DaemonProcess(deployment).start()
    try:
        wait_until(lambda: deployment.files() == [], 20, "startup resolved it")
        wait_until(lambda: deployment.status()["pending"] == [], 20, "finished")
        assert rows(deployment) == [] and decision(deployment, intent) == "aborted"
    finally:
        assert second.stop() == 0


def test_commit_while_daemon_down_is_kept(deployment, daemon, writer):
    deployment.write_config(reconnect_s=0.3)  # the client gives up quickly
    client, intent, go = writer()
    daemon.kill()
    go.touch()
    code, out, err = client.wait()
    assert code == 0 and "DONE" in out, err
    assert "commit of intent=" in err and "deferred" in err

    second = DaemonProcess(deployment).start()
    try:
        wait_until(lambda: deployment.status()["pending"] == [], 20, "resolved")
        assert deployment.status()["counts"] == {"committed": 1}
        assert len(deployment.files()) == 11 and len(rows(deployment)) == 1
    finally:
        assert second.stop() == 0


def test_live_owner_without_connection_is_not_resolved(deployment, daemon, spawn):
    client = spawn(holder(close=True))  # the socket closes; the process lives
    client.expect("HOLDING")
    time.sleep(1.0)  # four sweeps
    assert deployment.files() and len(deployment.status()["pending"]) == 1
    client.kill(signal.SIGKILL)
    wait_until(lambda: deployment.files() == [], 20, "dead owner resolved")


LOOPER = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from lab import declare

lab = declare()
for i in range(40):
    with lab.Recording.staged_insert1 as staged:
        staged.rec["recording_id"] = f"loop-{{i}}"
        with staged.open("raw", ".bin") as f:
            f.write(b"r" * 100)
    print("ACK", i, flush=True)
"""


def test_daemon_restart_costs_a_busy_client_nothing(deployment, daemon, spawn):
    """Inserts that meet a dying daemon wait for the next one and succeed."""
    client = spawn(LOOPER)
    client.expect("ACK 5")
    daemon.kill()
    second = DaemonProcess(deployment).start()
    try:
        code, out, err = client.wait()
        assert code == 0, err
        assert out.count("ACK") == 40 - 6
        wait_until(lambda: deployment.status()["pending"] == [], 20, "all resolved")
        assert len(deployment.rows("imaging", "recording")) == 40
        assert len(deployment.files()) == 40
    finally:
        assert second.stop() == 0
