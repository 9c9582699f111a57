"""Operating the daemon: stopping, reloading, watching it, pruning its log."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import pytest

import lab
from conftest import HERE, DaemonProcess, holder, register_fields, wait_until
from stagerd.core import protocol
from stagerd.core.errors import StagerdError
from stagerd.daemon import owners
from stagerd.daemon.intents import Intent, IntentLog, ObjectEntry
from stagerd.daemon.server import LOG_NAME
from test_systemd import served  # noqa: F401  (the fixture)

RAW_CLIENT = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from lab import declare
lab = declare()
with lab.Raw.staged_insert1 as staged:
    staged.rec["raw_id"] = 1
    with staged.open("data", ".bin") as f:
        f.write(b"raw bytes")
print("PATH", lab.Raw.fetch1()["data"].path, flush=True)
"""

COMMIT_CLIENT = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from lab import declare
lab = declare()
with lab.Recording.staged_insert1 as staged:
    staged.rec["recording_id"] = "done"
    with staged.open("raw", ".bin") as f:
        f.write(b"all of it")
print("COMMITTED", flush=True)
"""


def _raw_store(deployment) -> dict:
    return {"raw": {"url": f"file://{deployment.root / 'raw'}"}}


# Stopping.


def test_sigterm_keeps_pending_intents_for_the_next_start(deployment, daemon, spawn):
    held = spawn(holder())
    intent = held.expect("HOLDING").split()[1]

    assert daemon.stop() == 0
    assert daemon.logged("stopping pending=1")
    assert not deployment.socket.exists()
    assert deployment.files(), "a live client's object was removed"
    assert deployment.decision("imaging", intent) is None

    second = DaemonProcess(deployment).start()
    try:
        [pending] = deployment.status()["pending"]
        assert pending["id"] == intent and pending["pid"] == held.pid
        held.kill()
        held.wait()
        wait_until(lambda: deployment.files() == [], 3, f"{intent} resolved")
        assert deployment.decision("imaging", intent) == "aborted"
    finally:
        assert second.stop() == 0
    assert not second.logged("level=ERROR"), "\n".join(second.log)


def _register(deployment, n: int) -> dict:
    return {"v": protocol.VERSION, "id": n, "op": "register",
            **register_fields(deployment, f"r{n}")}


def test_sigterm_while_registrations_stream_in(deployment, daemon):
    """Every registration that was answered is in the log after a restart."""
    answered: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def register(worker: int) -> None:
        try:
            sock = protocol.connect(deployment.socket, timeout=30)
        except StagerdError as e:
            failures.append(str(e))
            return
        try:
            for i in range(10_000):
                protocol.send(sock, _register(deployment, worker * 100_000 + i))
                reply = protocol.check_reply(protocol.recv(sock))
                with lock:
                    answered.append(reply["intent"])
        except (OSError, StagerdError):
            pass  # the daemon stopped: what was answered counts
        finally:
            sock.close()

    threads = [threading.Thread(target=register, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answered) >= 200, 30, "registrations flowing")
    assert daemon.stop() == 0, "\n".join(daemon.log)
    for t in threads:
        t.join(30)
    assert not failures

    second = DaemonProcess(deployment).start()
    try:
        log = IntentLog(deployment.state / LOG_NAME)
        try:
            pending = {i.id for i in log.load("pending")}
        finally:
            log.close()
        missing = set(answered) - pending
        assert not missing, f"{len(missing)} of {len(answered)} answered lost"
    finally:
        assert second.stop() == 0
    assert not second.logged("level=ERROR"), "\n".join(second.log)


# Reloading.


def _status_on(sock: socket.socket, n: int) -> dict:
    protocol.send(sock, {"v": protocol.VERSION, "id": n, "op": "status"})
    return protocol.check_reply(protocol.recv(sock))


def test_sighup_reloads_stores_without_dropping_clients(
    deployment, served, spawn, tmp_path
):
    daemon = served().start()
    conn = protocol.connect(deployment.socket, timeout=30)
    try:
        assert _status_on(conn, 1)["ok"]

        # Changed through a second hard link in another folder, which the
        # file watcher (on the config's own folder) cannot see: only SIGHUP
        # can make the daemon notice.
        alias = tmp_path / "elsewhere" / "alias.toml"
        alias.parent.mkdir()
        os.link(deployment.config, alias)
        real, deployment.config = deployment.config, alias
        try:
            deployment.write_config(stores=_raw_store(deployment))
        finally:
            deployment.config = real
        time.sleep(0.6)
        assert not daemon.logged("reloaded")

        daemon.signal(signal.SIGHUP)
        wait_until(lambda: daemon.logged("reloaded"), 20, "the reload")
        assert "stores=default,raw" in daemon.logged("reloaded")[0]
        assert _status_on(conn, 2)["ok"], "the open connection was dropped"
    finally:
        conn.close()

    code, out, err = spawn(RAW_CLIENT).wait()
    assert code == 0, err
    path = out.split()[1]
    assert (deployment.root / "raw" / path).read_bytes() == b"raw bytes"


def test_saving_the_config_file_reloads_it(deployment, served, spawn):
    daemon = served().start()
    code, _, err = spawn(RAW_CLIENT).wait()
    assert code == 1 and "raw" in err

    deployment.write_config(stores=_raw_store(deployment))
    wait_until(lambda: daemon.logged("reloaded"), 20, "the reload")
    code, out, err = spawn(RAW_CLIENT).wait()
    assert code == 0, err


def test_a_symlinked_config_reloads_when_its_target_changes(
    deployment, served, tmp_path
):
    target = tmp_path / "managed" / "stagerd.toml"
    target.parent.mkdir()
    deployment.config.rename(target)
    deployment.config.symlink_to(target)
    daemon = served().start()

    link, deployment.config = deployment.config, target
    try:
        deployment.write_config(stores=_raw_store(deployment))
    finally:
        deployment.config = link
    wait_until(lambda: daemon.logged("reloaded"), 20, "the reload")


def test_a_bad_config_is_refused_and_the_old_one_kept(deployment, served, spawn):
    daemon = served().start()
    good = deployment.config.read_text()

    def refused(why: str) -> None:
        wait_until(lambda: any(why in line for line in daemon.logged(
            "reload refused")), 5, f"a refusal for {why}")

    deployment.config.write_text(good + "\nthis is not toml\n")
    refused("Expected '=' after a key")
    line = daemon.logged("reload refused")[0]
    assert "level=WARNING" in line and str(deployment.config) in line

    # What only a restart can change is refused too.
    moved = deployment.root / "elsewhere.sock"
    deployment.write_config(daemon={"socket": str(moved)})
    refused("daemon.socket changes from")
    deployment.write_config(daemon={"log_level": "loud"})
    refused("daemon.log_level")

    # The daemon still serves with the config it had.
    deployment.config.write_text(good)
    code, _, err = spawn(COMMIT_CLIENT).wait()
    assert code == 0, err
    assert not daemon.logged("reloaded")


def test_a_store_in_use_cannot_move(deployment, served, spawn):
    daemon = served().start()
    held = spawn(holder())
    intent = held.expect("HOLDING").split()[1]

    moved = {"default": {"url": f"file://{deployment.root / 'moved'}"}}
    deployment.write_config(stores=moved)
    wait_until(lambda: daemon.logged("reload refused"), 20, "the refusal")
    assert f"while intent {intent} has objects in it" in daemon.text()

    # The intent is still finished in the store it was staged in.
    held.kill()
    held.wait()
    wait_until(lambda: deployment.files() == [], 3, f"{intent} resolved")


def test_log_level_comes_from_the_config_and_reloads(deployment, served):
    deployment.write_config(daemon={"log_level": "warning"})
    daemon = served(log_level=None).start()
    assert not daemon.logged("level=INFO") and not daemon.logged("level=DEBUG")

    deployment.write_config(daemon={"log_level": "debug"})
    wait_until(lambda: daemon.logged("reloaded"), 20, "the reload")
    deployment.status()
    wait_until(lambda: daemon.logged("level=DEBUG"), 20, "a debug line")


def test_log_level_option_wins_over_the_config(deployment, served, spawn):
    daemon = served(log_level="warning").start()
    deployment.write_config(daemon={"log_level": "debug"},
                            stores=_raw_store(deployment))
    # The reload is not logged at this level; the new store shows it happened.
    wait_until(lambda: spawn(RAW_CLIENT).wait()[0] == 0, 15, "the new store")
    assert not daemon.logged("level=INFO") and not daemon.logged("level=DEBUG")


def test_a_bad_log_level_at_start_is_one_line(deployment):
    deployment.write_config(daemon={"log_level": "loud"})
    result = deployment.cli("serve", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("stagerd: daemon.log_level in config file")
    assert "debug, info, warning, error" in result.stderr


# stagerd status.


def test_status_shows_owner_age_and_bytes_written(deployment, daemon, spawn):
    held = spawn(holder())
    intent = held.expect("HOLDING").split()[1]

    reply = json.loads(deployment.cli("status", "--json").stdout)
    [p] = reply["pending"]
    assert p["id"] == intent and p["uid"] == os.getuid() and p["pid"] == held.pid
    assert p["bytes_written"] == len(b"partial")
    assert p["age_s"] >= 0 and reply["daemon"]["uptime_s"] > 0

    lines = deployment.cli("status").stdout.splitlines()
    assert lines[0].startswith(f"stagerd pid {reply['daemon']['pid']}, up ")
    [head] = [line for line in lines if line.startswith("INTENT")]
    [row] = [line for line in lines if line.startswith(intent)]
    for column, value in [("UID", str(os.getuid())), ("PID", str(held.pid)),
                          ("TABLE", f"{lab.schema_name('imaging')}.recording"),
                          ("KEY", "recording_id=held"), ("WRITTEN", "7 B")]:
        assert row.index(value, head.index(column)) == head.index(column), (
            head, row)


def test_status_on_a_narrow_terminal_shortens_the_key(deployment, daemon, spawn):
    held = spawn(holder().replace('"held"', '"' + "k" * 120 + '"'))
    held.expect("HOLDING")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stagerd", "status", "--config",
             str(deployment.config)],
            stdout=follower, stderr=subprocess.PIPE, timeout=60,
            env={**deployment.env, "COLUMNS": "120"},
        )
        os.close(follower)
        assert proc.returncode == 0, proc.stderr
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
    table = [line for line in out.decode().splitlines()
             if line.startswith("INTENT") or re.match(r"[0-9a-f]{20} ", line)]
    assert len(table) == 2 and all(len(line) <= 120 for line in table), table
    assert "kkk..." in table[1]


# Pruning the intent log.


def _decided(log: IntentLog, state: str, decided_at: float, n_objects: int = 1):
    owner = owners.Owner(0, 1, 1, "boot")
    intent = Intent(
        os.urandom(10).hex(), "stage", "pending", "imaging", "recording",
        {"recording_id": "x"}, owner, decided_at - 1,
        [ObjectEntry("raw", "default", f"p/{i}", ".bin") for i in range(n_objects)],
    )
    log.apply([IntentLog.insert_intent(intent)])
    if state != "pending":
        log.apply([IntentLog.set_state(intent.id, state)])
        log.conn.execute("UPDATE intents SET decided_at = ? WHERE id = ?",
                         (decided_at, intent.id))
    return intent.id


def test_prune_forgets_old_decisions_only(tmp_path):
    log = IntentLog(tmp_path / LOG_NAME)
    try:
        now = time.time()
        old = [_decided(log, s, now - 40 * 86400, 3)
               for s in ("committed", "aborted", "committed")]
        recent = _decided(log, "aborted", now - 3600)
        waiting = _decided(log, "pending", now - 90 * 86400)

        before = now - 30 * 86400
        assert log.prune(before, limit=2) == 2
        assert log.prune(before, limit=2) == 1
        assert log.prune(before, limit=2) == 0
        kept = {r[0] for r in log.conn.execute("SELECT id FROM intents")}
        assert kept == {recent, waiting}
        orphans = log.conn.execute(
            "SELECT count(*) FROM objects WHERE intent_id IN (?, ?, ?)", old
        ).fetchone()[0]
        assert orphans == 0

        frames, copied = log.checkpoint()
        assert frames == copied
        assert (tmp_path / f"{LOG_NAME}-wal").stat().st_size == 0
    finally:
        log.close()


def test_daemon_prunes_at_start(deployment, served):
    log = IntentLog(deployment.state / LOG_NAME)
    now = time.time()
    for state in ("committed", "aborted"):
        _decided(log, state, now - 31 * 86400)
    _decided(log, "committed", now - 86400)
    log.close()

    daemon = served().start()
    assert deployment.status()["counts"] == {"committed": 1}
    [line] = daemon.logged("pruned decided")
    assert "intents=2" in line and "level=INFO" in line


def test_daemon_prunes_on_a_timer(deployment, served, spawn):
    # A three-second history: the daemon prunes every tenth of it.
    deployment.write_config(daemon={"history_days": 3 / 86400})
    served().start()
    code, _, err = spawn(COMMIT_CLIENT).wait()
    assert code == 0, err
    assert deployment.status()["counts"] == {"committed": 1}

    wal = deployment.state / f"{LOG_NAME}-wal"
    wait_until(lambda: deployment.status()["counts"] == {}, 20, "pruned")
    wait_until(lambda: wal.stat().st_size == 0, 20, "the WAL truncated")


@pytest.mark.parametrize("days", [0, -1, "30", True])
def test_history_days_must_be_a_positive_number(deployment, days):
    deployment.write_config(daemon={"history_days": days})
    result = deployment.cli("serve", check=False)
    assert result.returncode == 1
    assert "daemon.history_days" in result.stderr and "positive" in result.stderr

