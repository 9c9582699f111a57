"""The daemon under hostile input, against a real daemon process.

Wrong-typed and poisonous fields in every operation (by table and by
hypothesis), a fuzz run of broken frames (bench/fuzz.py), writers that
stall halfway through a frame, clients that never read their replies and
thousands of idle connections. Every frame gets an error reply or a closed
connection; the daemon's memory stays bounded; the intent log passes
``PRAGMA integrity_check`` and keeps the honest intents; and an honest
client's staged inserts are served in the middle of it all and after.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lab
from conftest import register_fields, wait_until
from stagerd.core import protocol
from stagerd.daemon.server import LOG_NAME
from test_access import AsUser, needs_root

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz  # noqa: E402  (bench/fuzz.py)

FRAME_TIMEOUT_S = 1.0
PER_UID = 32
# What the abuse below may add to the daemon's resident memory.
RSS_BOUND_MIB = 150


@pytest.fixture
def deployment(deployment):
    deployment.write_config(daemon={"frame_timeout_s": FRAME_TIMEOUT_S,
                                    "max_connections_per_uid": PER_UID})
    return deployment


class Honest:
    """A well-behaved client in this process: staged inserts, checked."""

    def __init__(self, deployment) -> None:
        self.deployment = deployment
        self.tables = lab.declare()
        self.intents: list[str] = []

    def insert(self) -> None:
        n = len(self.intents)
        with self.tables.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = f"honest-{n}"
            with staged.open("raw", ".bin") as f:
                f.write(b"honest bytes %d" % n)
        self.intents.append(staged.intent)
        row = (self.tables.Recording & {"recording_id": f"honest-{n}"}).fetch1()
        assert row["raw"].verify()

    def check(self, daemon) -> None:
        """The daemon lives, its log is sound and holds every honest intent."""
        assert daemon.proc.poll() is None
        uri = f"file:{self.deployment.state / LOG_NAME}?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            states = dict(conn.execute(
                "SELECT id, state FROM intents WHERE kind = 'stage'"
            ).fetchall())
        finally:
            conn.close()
        assert all(states.get(i) == "committed" for i in self.intents), states
        assert len(self.deployment.rows("imaging", "recording")) == len(self.intents)
        self.insert()


@pytest.fixture
def honest(deployment, daemon, client_config):
    return Honest(deployment)


def rss_mib(daemon) -> float:
    return fuzz.rss_kib(daemon.proc.pid) / 1024


# What each field must be; a value of another type must be refused.
TYPES: dict[str, type | tuple[type, ...]] = {
    "v": int, "op": str, "schema": str, "table": str, "key": dict, "field": str,
    "ext": str, "store": str, "store_url": str, "database": str, "intent": str,
    "intents": list, "objects": list,
}


def wrong_type(name: str, value: Any) -> bool:
    kind = TYPES.get(name)
    if kind is None:
        return False
    if isinstance(value, fuzz.Raw):
        return True  # huge numbers, NaN and deep nesting are all refused
    return isinstance(value, bool) and kind is not bool or not isinstance(value, kind)


def must_fail(requests: dict[str, dict[str, Any]], message: dict[str, Any]) -> bool:
    """Whether a field the operation reads is missing or of the wrong type."""
    op = message.get("op")
    if not isinstance(op, str) or op not in requests:
        return True
    used = set(requests[op]) - {"id"}
    if any(n not in message for n in used):
        return True
    if op == "register":
        used.add("intent")  # optional: staging into an intent held already
        if message.get("intent") is None:
            used.discard("intent")
    return any(wrong_type(n, message[n]) for n in used)


class Prober:
    """One connection that sends a message and checks the reply it gets."""

    def __init__(self, deployment) -> None:
        self.deployment = deployment
        self.sock: socket.socket | None = None
        self.sent = 0

    def send(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The reply, or None if the daemon answered and then hung up."""
        body = fuzz.to_json(message).encode()
        if self.sock is None:
            self.sock = protocol.connect(self.deployment.socket, timeout=30)
        try:
            self.sock.sendall(fuzz.frame(body))
        except BrokenPipeError:
            pass
        self.sent += 1
        reply = protocol.recv(self.sock)
        assert reply["v"] == protocol.VERSION and isinstance(reply["ok"], bool)
        if not reply["ok"]:
            error = reply["error"]
            assert isinstance(error["kind"], str) and error["kind"] != "InternalError"
            assert 0 < len(error["message"]) < 2100, error
        if len(body) > protocol.MAX_FRAME:
            assert reply["error"]["kind"] == "FrameTooLarge"
            assert self.sock.recv(1) == b""
            self.close()
            return None
        if reply["ok"] and reply.get("intent"):
            # A field the operation ignores was spoiled: a real intent.
            protocol.send(self.sock, {"v": 1, "op": "abort", "intent": reply["intent"]})
            assert protocol.recv(self.sock)["ok"]
        return reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def test_every_field_of_every_op_refuses_wrong_types(deployment, daemon, honest):
    prober = Prober(deployment)
    requests = fuzz.requests(register_fields(deployment, "fuzz"))
    for i, (op, request) in enumerate(requests.items()):
        if i == len(requests) // 2:
            honest.insert()
        for name in [*request, "extra"]:
            reply = prober.send({k: v for k, v in request.items() if k != name})
            if name in TYPES:
                assert reply is not None and reply["ok"] is False, (op, name)
            for value in fuzz.HOSTILE:
                reply = prober.send({**request, name: value})
                if reply is not None and wrong_type(name, value):
                    assert reply["ok"] is False, (op, name, value)
    prober.close()
    honest.check(daemon)


def test_big_keys_neither_pass_nor_break_status(deployment, daemon, honest):
    sock = protocol.connect(deployment.socket, timeout=30)
    fields = register_fields(deployment, "fuzz")
    protocol.send(sock, {"v": 1, "op": "register",
                         **{**fields, "key": {"recording_id": "x" * 9000}}})
    reply = protocol.recv(sock)
    assert reply["ok"] is False and "primary key takes" in reply["error"]["message"]

    # Just under the limit, forty of them are more than one status reply holds.
    for i in range(40):
        key = {"recording_id": f"{i:02d}" + "x" * 8000}
        protocol.send(sock, {"v": 1, "op": "register", **{**fields, "key": key}})
        assert protocol.recv(sock)["ok"]
    status = deployment.status()
    assert status["pending_truncated"] is True
    assert 0 < len(status["pending"]) < 40 <= status["counts"]["pending"]
    honest.insert()
    sock.close()


# Any JSON value, and what plain JSON cannot say.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(),
    st.text(max_size=40),
    st.text(st.characters(categories=["Cs", "Cc", "Zl", "Co"]), max_size=8),
    st.sampled_from(fuzz.HOSTILE),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def messages(draw, requests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    message = dict(draw(st.sampled_from(list(requests.values()))))
    names = st.sampled_from([*message, "extra", "intent", "objects", "key"])
    for name in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            message.pop(name, None)
        else:
            message[name] = draw(VALUES)
    return message


def test_hypothesis_messages_get_a_reply_and_the_daemon_serves_on(
    deployment, daemon, honest
):
    prober = Prober(deployment)
    requests = fuzz.requests(register_fields(deployment, "fuzz"))

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(messages(requests))
    def one(message: dict[str, Any]) -> None:
        reply = prober.send(message)
        if reply is not None and must_fail(requests, message):
            assert reply["ok"] is False, message
        if prober.sent == 200:
            honest.insert()

    one()
    prober.close()
    honest.check(daemon)


def test_fuzz_run_with_an_honest_client_in_the_middle(deployment, daemon, honest):
    before = rss_mib(daemon)
    result: list[fuzz.Tally] = []
    fields = register_fields(deployment, "fuzz")
    run = threading.Thread(target=lambda: result.append(fuzz.fuzz(
        deployment.socket, fields, seconds=4, connections=3,
    )))
    run.start()
    time.sleep(1)
    honest.insert()
    run.join()
    [tally] = result
    assert not tally.failures, tally.failures[:5]
    assert tally.sent > 1000 and tally.errors > tally.sent / 2
    assert tally.hang_ups > 0 and tally.ours > 0
    assert rss_mib(daemon) - before < RSS_BOUND_MIB
    honest.check(daemon)


def eof_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the daemon closes ``sock`` within ``seconds`` (replies skipped)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_stalled_writers_are_cut_off_idle_clients_are_not(deployment, daemon, honest):
    idle = protocol.connect(deployment.socket, timeout=10)
    protocol.send(idle, {"v": 1, "op": "status"})
    assert protocol.recv(idle)["ok"]

    # Half a header, a header without its body, half a body; and a writer
    # that trickles a byte at a time, faster than any per-read timeout.
    body = json.dumps({"v": 1, "op": "status", "pad": "x" * 40}).encode()
    whole = fuzz.frame(body)
    stalled = []
    for cut in [1, 2, 4, 4 + len(body) // 2, len(whole) - 1] * 6:
        s = protocol.connect(deployment.socket, timeout=10)
        s.sendall(whole[:cut])
        stalled.append(s)
    trickler = protocol.connect(deployment.socket, timeout=10)
    started = time.monotonic()
    closed_early = False
    for byte in whole[:12]:
        try:
            trickler.sendall(bytes([byte]))
        except BrokenPipeError:
            closed_early = True  # closed between two bytes
            break
        closed_early = eof_within(trickler, 0.2)
        if closed_early:
            break
    trickler_s = time.monotonic() - started

    # A client that asks and asks but never reads what comes back.
    deaf = protocol.connect(deployment.socket, timeout=10)
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.sendall(fuzz.frame(json.dumps({"v": 1, "op": "status"}).encode()) * 4000)

    honest.insert()
    assert closed_early and trickler_s < FRAME_TIMEOUT_S + 1.5, trickler_s
    for s in stalled:
        assert eof_within(s, FRAME_TIMEOUT_S + 3)
        s.close()
    # Its replies stay unread here: the daemon must hang up regardless.
    poll = select.poll()
    poll.register(deaf, select.POLLRDHUP)
    assert poll.poll((FRAME_TIMEOUT_S + 3) * 1000), "the daemon kept the deaf client"
    deaf.close()
    wait_until(lambda: len(daemon.logged("a frame stalled")) >= len(stalled) + 1
               and daemon.logged("replies went unread"), 20, "the cut-offs logged")

    # Silence between frames is no stall: the idle client is still served.
    protocol.send(idle, {"v": 1, "op": "status"})
    assert protocol.recv(idle)["ok"]
    idle.close()
    honest.check(daemon)


@needs_root
def test_thousands_of_idle_connections(deployment, daemon, honest):
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 500, hard), hard))
    before = rss_mib(daemon)

    idle = [protocol.connect(deployment.socket, timeout=30) for _ in range(n)]
    try:
        honest.insert()
        for s in idle[::250]:
            protocol.send(s, {"v": 1, "op": "status"})
            reply = protocol.recv(s)
        assert reply["daemon"]["connections"] >= n

        # Another uid is capped, with one log line for a flood of refusals;
        # root, and so the honest client, is not.
        user = AsUser(deployment.socket)
        try:
            opened = user.open_many(PER_UID * 3)
            assert opened["served"] == PER_UID - 1  # its first connection counts
            assert set(opened["refusals"]) <= {"TooManyConnections",
                                               "ConnectionResetError"}
            assert "TooManyConnections" in opened["refusals"]
            wait_until(lambda: len(daemon.logged("refused connection"))
                       == len(opened["refusals"]), 20, "every refusal logged")
            refusals = daemon.logged("refused connection")
            assert len([r for r in refusals if "level=WARNING" in r]) == 1
            honest.insert()
            grown = rss_mib(daemon) - before
        finally:
            user.stop()
    finally:
        for s in idle:
            s.close()
    assert grown < RSS_BOUND_MIB, grown
    honest.check(daemon)
    wait_until(lambda: deployment.status()["daemon"]["connections"] <= 2, 10,
               "idle connections closed")
