"""The daemon's socket under bad input: it answers with an error and serves on."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading

import pytest

from conftest import register_fields as fields
from stagerd.core import protocol
from stagerd.core.errors import NotOwnerError, ProtocolError, StagingError


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.fixture
def conn(deployment, daemon):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(deployment.socket))
    yield s
    s.close()


def ask(conn, body: bytes) -> dict:
    conn.sendall(frame(body))
    return protocol.recv(conn)


def still_serves(deployment) -> None:
    assert deployment.status()["daemon"]["pid"] > 0


BAD = [
    (b"not json", "not UTF-8 JSON"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"op": "status"}', "protocol version"),
    (b'{"v": 2, "op": "status"}', "protocol version"),
    (b'{"v": 1, "op": "format_disk"}', "unknown op"),
    (b'{"v": 1, "op": "register"}', "field 'schema'"),
    (b'{"v": 1, "op": "commit", "intent": 5}', "intent id must be a string"),
    (b'{"v": 1, "op": "commit", "intent": "nope"}', "no pending intent"),
    (b'{"v": 1, "op": "attach", "intents": "x"}', "field 'intents'"),
    (b'{"v": 1, "op": "delete", "schema": "s", "table": "t", "objects": []}',
     "field 'database'"),
    (json.dumps({"v": 1, "op": "status", "x": [[[[[[[[[[[1]]]]]]]]]]]}).encode(),
     "nests deeper"),
]


@pytest.mark.parametrize("body, message", BAD, ids=[m for _, m in BAD])
def test_malformed_message_gets_error_reply(conn, deployment, body, message):
    reply = ask(conn, body)
    assert reply["ok"] is False and message in reply["error"]["message"]
    # The same connection goes on working.
    assert ask(conn, b'{"v": 1, "id": 9, "op": "status"}')["ok"] is True
    still_serves(deployment)


def test_oversized_frame_is_refused_and_connection_closed(conn, deployment):
    conn.sendall(struct.pack(">I", protocol.MAX_FRAME + 1))
    reply = protocol.recv(conn)
    assert reply["ok"] is False and "limit" in reply["error"]["message"]
    assert conn.recv(10) == b""
    still_serves(deployment)


def test_truncated_message_then_hangup(deployment, daemon):
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(deployment.socket))
    s.sendall(struct.pack(">I", 100) + b'{"v": 1, "op"')
    s.close()
    still_serves(deployment)


@pytest.mark.parametrize("over, message", [
    ({"field": "../../etc"}, "field must be an identifier"),
    ({"ext": "/../../x"}, "ext must be empty"),
    ({"schema": "../x"}, "schema must be an identifier"),
    ({"table": "a/b"}, "table must be an identifier"),
    ({"key": {"../a": 1}}, "primary-key attribute"),
    ({"key": {"a": [1, 2]}}, "primary-key value"),
    ({"store": "nowhere"}, "store 'nowhere' is not configured"),
    ({"store_url": "file:///elsewhere"}, "point both at one config"),
    ({"database": "sqlite:////other.db"}, "point both at one config"),
])
def test_register_refuses_what_it_cannot_allocate(deployment, daemon, over, message):
    with pytest.raises(Exception) as info:
        protocol.call(deployment.socket, "register", **fields(deployment, **over))
    assert message in str(info.value)
    assert deployment.status()["pending"] == []


def test_delete_refuses_paths_no_committed_insert_made(deployment, daemon):
    victim = deployment.objects / "precious.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("keep me")
    for path in ["../precious.txt", "precious.txt",
                 "_schema/imaging/recording/recording_id=a/raw_0123456789abcdef0123"]:
        with pytest.raises((ProtocolError, StagingError, OSError)):
            protocol.call(
                deployment.socket, "delete", schema="imaging", table="recording",
                database=deployment.db.identity,
                objects=[{"store": "default", "path": path}],
            )
    assert victim.read_text() == "keep me"


def test_only_the_owner_process_may_attach(deployment, daemon):
    reply = protocol.call(deployment.socket, "register", **fields(deployment))
    intent = reply["intent"]
    # protocol.call opened a new connection from this same process: allowed.
    assert protocol.call(deployment.socket, "attach", intents=[intent])["states"] == {
        intent: "pending"
    }
    # Another process (a child of this one) is not the owner.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            protocol.call(deployment.socket, "attach", intents=[intent])
            os.write(w, b"attached")
        except NotOwnerError as e:
            os.write(w, str(e).encode()[:200])
        os._exit(0)
    os.waitpid(pid, 0)
    answer = os.read(r, 300).decode()
    assert "belongs to pid" in answer
    protocol.call(deployment.socket, "abort", intent=intent)


def test_concurrent_registrations_share_commits(deployment, daemon):
    n = 40
    barrier = threading.Barrier(n)
    errors = []

    def register(i):
        try:
            s = protocol.connect(deployment.socket, timeout=30)
            barrier.wait()
            protocol.send(s, {"v": 1, "id": i, "op": "register",
                              **fields(deployment, key={"recording_id": f"r{i}"})})
            assert protocol.check_reply(protocol.recv(s))["path"]
            s.close()
        except Exception as e:  # reported below
            errors.append(e)

    before = deployment.status()["daemon"]
    threads = [threading.Thread(target=register, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = deployment.status()["daemon"]
    writes = after["log_writes"] - before["log_writes"]
    commits = after["log_commits"] - before["log_commits"]
    assert writes == n and commits < n, (writes, commits)
    assert len(deployment.status()["pending"]) == n


def test_abort_keeps_the_key_folder_of_a_newer_attempt(deployment, daemon):
    """Pruning after an abort leaves a folder another pending intent may use."""
    with protocol.connect(deployment.socket) as s:

        def call(op: str, **f) -> dict:
            protocol.send(s, {"v": protocol.VERSION, "id": 1, "op": op, **f})
            return protocol.check_reply(protocol.recv(s))

        first = call("register", **fields(deployment))
        written = deployment.objects / first["path"]
        written.parent.mkdir(parents=True)
        written.write_bytes(b"first attempt")
        second = call("register", **fields(deployment))  # same key, new intent
        folder = (deployment.objects / second["path"]).parent
        assert folder == written.parent

        assert call("abort", intent=first["intent"])["state"] == "aborted"
        assert not written.exists() and folder.is_dir()
        assert call("abort", intent=second["intent"])["state"] == "aborted"
        assert not folder.exists()  # nothing pending there any more
