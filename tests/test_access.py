"""Who may do what with an intent, checked with a second, unprivileged uid.

The tests run as root; :class:`AsUser` forks a child that drops to uid
65534 (nobody) before it connects, so the daemon sees that uid through
SO_PEERCRED. The daemon must let that user stage its own objects, refuse
it everything on root's intents, hide their secrets from it in status, let
root act on the user's intents, and delete nothing it did not allocate for
an intent decided that way, whatever the messages say.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import lab
from conftest import register_fields as fields
from conftest import wait_until
from stagerd.core import ledger, protocol
from stagerd.core.errors import ProtocolError

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to another uid needs root"
)
pytestmark = needs_root


class AsUser:
    """A forked child, dropped to ``uid``, that relays requests to the daemon.

    It connects once, so every call comes from one process of that uid,
    and answers each with the daemon's raw reply. Forked rather than
    exec'd: uid 65534 cannot enter /root, where the venv's python lives.
    The socket's folder is entered and the socket's group joined while
    still root, as a user of the socket's group would have them.
    """

    def __init__(self, socket_path: Path, uid: int = NOBODY) -> None:
        commands_r, commands_w = os.pipe()
        answers_r, answers_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            os.close(commands_w)
            os.close(answers_r)
            try:
                _relay(socket_path, uid, commands_r, answers_w)
            finally:
                os._exit(0)
        os.close(commands_r)
        os.close(answers_w)
        self._out = os.fdopen(commands_w, "wb")
        self._in = os.fdopen(answers_r, "rb")
        hello = self._answer()
        assert hello.get("uid") == uid, hello

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """The daemon's reply to one request from this user."""
        self._out.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        self._out.flush()
        return self._answer()

    def open_many(self, n: int) -> dict[str, Any]:
        """Open ``n`` more connections and ask status on each; what came back."""
        return self.call("open", n=n)

    def _answer(self) -> dict[str, Any]:
        line = self._in.readline()
        if not line:
            raise AssertionError(f"the child as uid {NOBODY} exited")
        return json.loads(line)

    def stop(self) -> None:
        """Close the connection and let the child exit."""
        if self._out.closed:
            return
        self._out.close()
        self._in.close()
        os.waitpid(self.pid, 0)


def _relay(socket_path: Path, uid: int, commands_fd: int, answers_fd: int) -> None:
    answers = os.fdopen(answers_fd, "wb")

    def answer(value: dict[str, Any]) -> None:
        answers.write(json.dumps(value).encode() + b"\n")
        answers.flush()

    try:
        os.chdir(socket_path.parent)
        os.setgroups([os.stat(socket_path.name).st_gid])
        os.setgid(uid)
        os.setuid(uid)
        sock = protocol.connect(socket_path.name, timeout=30)
    except Exception as e:
        answer(_failure(e))
        return
    answer({"ok": True, "uid": os.getuid()})

    extra: list[socket.socket] = []
    n = 0
    for line in os.fdopen(commands_fd, "rb"):
        request = json.loads(line)
        if request["op"] == "open":
            answer(_open_many(socket_path.name, request["n"], extra))
            continue
        n += 1
        try:
            protocol.send(sock, {"v": protocol.VERSION, "id": n, **request})
            answer(protocol.recv(sock))
        except (OSError, ProtocolError) as e:
            answer(_failure(e))


def _failure(e: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": {"kind": type(e).__name__, "message": str(e)}}


def _open_many(name: str, n: int, kept: list[socket.socket]) -> dict[str, Any]:
    """Open connections and ask status on each; keep the ones served."""
    served, refusals = 0, []
    for _ in range(n):
        s = protocol.connect(name, timeout=30)
        try:
            protocol.send(s, {"v": protocol.VERSION, "id": 1, "op": "status"})
        except BrokenPipeError:
            pass  # refused and closed already; the refusal is still to read
        try:
            reply = protocol.recv(s)
        except ConnectionError as e:
            reply = _failure(e)
        if reply["ok"]:
            served += 1
            kept.append(s)
        else:
            refusals.append(reply["error"]["kind"])
            s.close()
    return {"ok": True, "served": served, "refusals": refusals}


@pytest.fixture
def user(deployment, daemon):
    child = AsUser(deployment.socket)
    yield child
    child.stop()


@pytest.fixture
def root(deployment, daemon):
    """A connection of this (root) process, held open like a client's."""
    s = protocol.connect(deployment.socket, timeout=30)
    yield s
    s.close()


def ask(sock: socket.socket, op: str, **fields: Any) -> dict[str, Any]:
    protocol.send(sock, {"v": protocol.VERSION, "id": 1, "op": op, **fields})
    return protocol.recv(sock)


def write(deployment, path: str, data: str) -> Path:
    """Write an object file, as the owner of the intent would."""
    full = deployment.objects / path
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(data)
    return full


def record(deployment, intent: str, outcome: str = ledger.COMMITTED) -> None:
    """Commit a decision record, as a client does with its row."""
    db, schema = deployment.db, lab.schema_name("imaging")
    conn = db.connect()
    try:
        ledger.ensure(db, conn, schema)
        with db.transaction(conn):
            ledger.record(db, conn, schema, intent, outcome, "recording")
    finally:
        conn.close()


def refused(reply: dict[str, Any], kind: str, text: str = "") -> None:
    assert reply["ok"] is False, reply
    assert reply["error"]["kind"] == kind, reply
    assert text in reply["error"]["message"], reply


def test_user_cannot_act_on_or_see_roots_intent(deployment, root, user):
    mine = ask(root, "register", **fields(deployment, "secret-root-key"))
    assert mine["ok"], mine
    kept = write(deployment, mine["path"], "root's bytes")
    theirs = user.call("register", **fields(deployment, "user-key"))
    assert theirs["ok"], theirs

    for op, extra in [
        ("commit", {"intent": mine["intent"]}),
        ("abort", {"intent": mine["intent"]}),
        ("register", {**fields(deployment, "secret-root-key"),
                      "intent": mine["intent"]}),
    ]:
        refused(user.call(op, **extra), "NotOwnerError",
                f"uid {NOBODY} may not act on it")
    refused(user.call("attach", intents=[mine["intent"]]), "NotOwnerError",
            "belongs to pid")

    # Status shows root's intent to the user without anything to act on.
    seen = user.call("status")
    by_uid = {p["uid"]: p for p in seen["pending"]}
    assert by_uid[0]["hidden"] is True and by_uid[0]["n_objects"] == 1
    assert (by_uid[0]["id"], by_uid[0]["key"], by_uid[0]["objects"]) == (None, None, [])
    text = json.dumps(seen)
    for secret in (mine["intent"], mine["path"], "secret-root-key"):
        assert secret not in text
    assert by_uid[NOBODY]["id"] == theirs["intent"]
    assert by_uid[NOBODY]["objects"][0]["path"] == theirs["path"]

    # Root sees everything, and its intent is untouched.
    pending = {p["id"]: p for p in ask(root, "status")["pending"]}
    assert set(pending) == {mine["intent"], theirs["intent"]}
    assert not any(p["hidden"] for p in pending.values())
    assert kept.read_text() == "root's bytes"


def test_root_commits_and_aborts_a_users_intents(deployment, root, user):
    doomed = user.call("register", **fields(deployment, "u1"))
    doomed_file = write(deployment, doomed["path"], "abandoned")
    saved = user.call("register", **fields(deployment, "u2"))
    saved_file = write(deployment, saved["path"], "committed")

    reply = protocol.call(deployment.socket, "abort", intent=doomed["intent"])
    assert reply["state"] == "aborted" and not doomed_file.exists()
    assert deployment.decision("imaging", doomed["intent"]) == "aborted"
    record(deployment, saved["intent"])
    reply = protocol.call(deployment.socket, "commit", intent=saved["intent"])
    assert reply["state"] == "committed" and saved_file.read_text() == "committed"

    # The user learns how its own intents ended; root's stay closed to it.
    ids = [doomed["intent"], saved["intent"]]
    assert user.call("attach", intents=ids)["states"] == dict(
        zip(ids, ["aborted", "committed"])
    )
    gone = ask(root, "register", **fields(deployment, "root-gone"))
    assert ask(root, "abort", intent=gone["intent"])["state"] == "aborted"
    refused(user.call("attach", intents=[gone["intent"]]), "NotOwnerError")


def test_recover_by_a_user_covers_only_its_own(deployment, root, user):
    assert ask(root, "register", **fields(deployment, "r"))["ok"]
    assert user.call("register", **fields(deployment, "u"))["ok"]
    theirs = user.call("recover")
    assert theirs["ok"] and (theirs["decided"], theirs["pending"]) == ([], 1)
    assert ask(root, "recover")["pending"] == 2


@pytest.fixture
def victims(deployment, root):
    """Files the daemon must never delete, and a committed and a pending object."""
    outside = deployment.root / "outside.txt"
    outside.write_text("outside the store")
    loose = write(deployment, "precious.txt", "in the store, never allocated")
    committed = ask(root, "register", **fields(deployment, "committed"))
    write(deployment, committed["path"], "a committed object")
    record(deployment, committed["intent"])
    assert ask(root, "commit", intent=committed["intent"])["state"] == "committed"
    pending = ask(root, "register", **fields(deployment, "pending"))
    write(deployment, pending["path"], "root is still writing")
    files = [outside, loose, deployment.objects / committed["path"],
             deployment.objects / pending["path"]]
    before = {f: f.read_text() for f in files}
    yield {"committed": committed["path"], "pending": pending["path"],
           "outside": outside}
    assert {f: f.read_text() for f in files if f.exists()} == before
    assert deployment.status()["daemon"]["pid"] > 0


def test_forged_deletes_are_refused(deployment, root, user, victims):
    c, p, outside = victims["committed"], victims["pending"], victims["outside"]
    schema = lab.schema_name("imaging")
    sibling = c.replace("committed", "other")
    forged = [
        ("../outside.txt", "default", "StoreError"),
        (str(outside), "default", "StoreError"),
        ("precious.txt", "default", "StagingError"),
        (f"_schema/{schema}/recording/../../../outside.txt", "default", "StoreError"),
        (f"_schema/{schema}/recording/*", "default", "StoreError"),
        (p, "default", "StagingError"),  # staged, not committed
        (sibling, "default", "StagingError"),  # no such intent committed
        (c, "nowhere", "ConfigError"),
    ]
    for who in (user.call, lambda op, **f: ask(root, op, **f)):
        for path, store, kind in forged:
            reply = who("delete", schema=schema, table="recording",
                        database=deployment.db.identity,
                        objects=[{"store": store, "path": path}])
            refused(reply, kind)
        base = {"schema": schema, "database": deployment.db.identity}
        refused(who("delete", **base, table="subject",
                    objects=[{"store": "default", "path": c}]),
                "StagingError", "does not belong")
        refused(who("delete", **base, table="recording",
                    objects=[{"store": "default", "path": c}] * 2),
                "ProtocolError", "listed twice")
        refused(who("delete", **base, table="recording", objects=[]),
                "ProtocolError")


def test_a_users_delete_of_roots_object_needs_the_database(deployment, user, victims):
    """The daemon logs it, but deletes only once the ledger says committed."""
    request = {"schema": lab.schema_name("imaging"), "table": "recording",
               "database": deployment.db.identity,
               "objects": [{"store": "default", "path": victims["committed"]}]}
    first = user.call("delete", **request)
    assert first["ok"], first
    assert user.call("abort", intent=first["intent"])["state"] == "aborted"
    second = user.call("delete", **request)["intent"]
    user.stop()  # the owner dies with its delete intent undecided
    wait_until(lambda: second not in [p["id"] for p in deployment.status()["pending"]],
               5, "the dead user's delete intent decided")
    assert deployment.decision("imaging", second) == "aborted"


def test_forged_fields_and_traversal_in_keys(deployment, root, user, victims):
    theirs = user.call("register", **fields(deployment, "u"))
    # Fields the daemon never reads cannot widen what an abort deletes.
    reply = user.call(
        "abort", intent=theirs["intent"], path="../outside.txt", store="default",
        objects=[{"store": "default", "path": victims["committed"]}],
    )
    assert reply["ok"] and reply["state"] == "aborted", reply
    reply = user.call("commit", intent=victims["committed"].rsplit("_", 1)[1][:20])
    refused(reply, "StagingError", "no pending intent")

    sneaky = user.call("register", **fields(deployment, "../../../../outside.txt"))
    assert sneaky["ok"], sneaky
    parts = sneaky["path"].split("/")
    assert parts[0] == "_schema" and ".." not in parts and "" not in parts
    write(deployment, sneaky["path"], "the user's own bytes")
    assert user.call("abort", intent=sneaky["intent"])["state"] == "aborted"
    assert not (deployment.objects / sneaky["path"]).exists()

    for over, text in [
        ({"key": {"../x": 1}}, "primary-key attribute"),
        ({"field": "../../x"}, "field must be an identifier"),
        ({"ext": "/../../x"}, "ext must be empty"),
        ({"schema": "../x"}, "schema must be an identifier"),
        ({"table": "../x"}, "table must be an identifier"),
    ]:
        refused(user.call("register", **{**fields(deployment, "u"), **over}),
                "StagingError", text)


def test_a_forged_delete_decision_leaves_objects_under_kept_rows(
    deployment, daemon, root, client_config
):
    """A ledger record written without deleting the rows deletes nothing."""
    recording = lab.declare().Recording
    with recording.staged_insert1 as staged:
        staged.rec["recording_id"] = "kept"
        with staged.open("raw", ".bin") as f:
            f.write(b"keep me")
    ref = (recording & {"recording_id": "kept"}).fetch1()["raw"]

    reply = ask(root, "delete", schema=lab.schema_name("imaging"),
                table="recording", database=deployment.db.identity,
                objects=[{"store": "default", "path": ref.path}])
    assert reply["ok"], reply
    record(deployment, reply["intent"])  # the row stays: a forged decision
    assert ask(root, "commit", intent=reply["intent"])["state"] == "committed"

    assert ref.verify() and len(recording) == 1
    assert daemon.logged(f"kept object a row still references "
                         f"intent={reply['intent']}")
    # An honest delete, rows and decision together, still removes them.
    assert (recording & {"recording_id": "kept"}).delete() == 1
    wait_until(lambda: deployment.files() == [], 20, "objects of deleted rows gone")
