"""``stagerd verify`` on real deployments, damaged for real, on every backend.

Each test commits a few rows through the client (a Zarr array, files from
``staged.open``, a row without an object), then damages the store, the
ledger or the rows behind stagerd's back and runs the command as a user
would. verify is always asked for the test's own schema, as the MariaDB
server may hold other tests' databases; the one run over every schema
asserts only about this test's schema there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from typing import Any

import numpy as np
import pytest
import zarr

from conftest import ALL_BACKENDS, holder, wait_until
from lab import declare, schema_name
from stagerd.core import layout, ledger

pytestmark = ALL_BACKENDS

STRAY_INTENT = "0123456789abcdef0123"


@pytest.fixture
def lab(client_config, daemon, deployment):
    """The test tables with three committed objects and one plain row."""
    lab = declare()
    with lab.ImagingSession.staged_insert1 as staged:
        staged.rec.update(subject_id=1, session_id=1, n_frames=4, frame_rate=30.0)
        z = zarr.open(staged.store("frames", ".zarr"), mode="w", shape=(4, 8),
                      chunks=(1, 8), dtype="int32")
        z[:] = np.arange(32, dtype="int32").reshape(4, 8)
    for name, data in (("a", b"partial"), ("b", b"x" * 1000)):
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = name
            with staged.open("raw", ".bin") as f:
                f.write(data)
    lab.Recording.insert1({"recording_id": "no-object"})
    wait_until(lambda: deployment.status()["pending"] == [], 20, "commits heard")
    return lab


def run(deployment, *args: str) -> tuple[int, dict[str, Any]]:
    """``stagerd verify SCHEMA --json``: the exit status and the report."""
    result = deployment.cli("verify", *(args or (schema_name("imaging"),)),
                            "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def kinds(report: dict[str, Any]) -> list[tuple[str, str | None]]:
    return sorted((p["kind"], p["path"]) for p in report["problems"])


def raw_path(lab, name: str) -> str:
    return (lab.Recording & {"recording_id": name}).fetch1()["raw"].path


def frames_path(lab) -> str:
    return lab.ImagingSession.fetch1()["frames"].path


def put(deployment, rel: str, data: bytes) -> None:
    store = deployment.store
    store.fs.pipe_file(store.full(rel), data)
    store.fs.invalidate_cache()


def remove(deployment, rel: str) -> None:
    store = deployment.store
    store.fs.rm(store.full(rel))
    store.fs.invalidate_cache()


def test_clean_deployment_exits_0(deployment, lab):
    code, report = run(deployment)
    assert code == 0 and report["ok"] and report["problems"] == []
    zarr_files = len(lab.ImagingSession.fetch1()["frames"].manifest)
    assert report["checked"] == {"rows": 3, "objects": 3, "files": 2 + zarr_files}
    assert report["intent_log"]["present"] and report["in_progress"] == []

    text = deployment.cli("verify", schema_name("imaging"))
    assert "no problems found" in text.stdout and text.stderr == ""

    # Every schema: this test's is among them and has no problem. Only the
    # SQLite file is this test's alone, so only there is all of it clean.
    everything = deployment.cli("verify", "--json", check=False)
    report = json.loads(everything.stdout)
    assert schema_name("imaging") in report["schemas"]
    assert [p for p in report["problems"]
            if p["schema"] == schema_name("imaging")] == []
    if deployment.database_url.startswith("sqlite"):
        assert everything.returncode == 0 and report["schemas"] == ["imaging"]


def test_deleted_files_are_missing(deployment, lab):
    frames = frames_path(lab)
    remove(deployment, f"{frames}/c/2/0")
    remove(deployment, raw_path(lab, "a"))

    code, report = run(deployment)
    assert code == 1 and not report["ok"]
    assert kinds(report) == [("missing_file", f"{frames}/c/2/0"),
                             ("missing_object", raw_path(lab, "a"))]
    chunk = next(p for p in report["problems"] if p["kind"] == "missing_file")
    size = lab.ImagingSession.fetch1()["frames"].manifest["c/2/0"]
    assert chunk["expected"] == f"{size} bytes" and chunk["found"] == "nothing"
    assert chunk["table"] == "imaging_session"
    assert chunk["key"] == {"subject_id": 1, "session_id": 1}

    text = deployment.cli("verify", schema_name("imaging"), check=False)
    assert text.returncode == 1 and "2 problem(s)" in text.stdout
    assert f"path     default:{frames}/c/2/0" in text.stdout
    assert f"expected {size} bytes" in text.stdout and "found    nothing" in text.stdout


def test_appended_bytes_change_the_size(deployment, lab):
    path = raw_path(lab, "a")
    put(deployment, path, b"partial" + b"+++")

    code, report = run(deployment)
    assert code == 1
    [problem] = report["problems"]
    assert (problem["kind"], problem["path"]) == ("size_mismatch", path)
    assert (problem["expected"], problem["found"]) == ("7 bytes", "10 bytes")
    assert problem["key"] == {"recording_id": "a"}
    assert problem["intent"] == layout.parse_object_path(path)[-1]


def test_stray_files_are_reported(deployment, lab):
    schema = schema_name("imaging")
    stray = f"_schema/{schema}/recording/recording_id=x/raw_{STRAY_INTENT}.bin"
    junk = f"_schema/{schema}/notes.txt"
    inside = f"{frames_path(lab)}/c/9/0"
    for rel in (stray, junk, inside):
        put(deployment, rel, b"stray")

    code, report = run(deployment)
    assert code == 1
    assert kinds(report) == [("stray_file", junk), ("stray_object", stray),
                             ("unexpected_file", inside)]
    problem = next(p for p in report["problems"] if p["kind"] == "stray_object")
    assert problem["intent"] == STRAY_INTENT and problem["table"] == "recording"
    assert problem["found"] == "1 file, 5 bytes, no row; no ledger record"


def test_row_deleted_behind_stagerd_leaves_a_stray(deployment, lab):
    path = raw_path(lab, "b")
    table = deployment.db.table(schema_name("imaging"), "recording")
    deployment.query(f"DELETE FROM {table} WHERE recording_id = 'b'")

    code, report = run(deployment)
    assert code == 1 and kinds(report) == [("stray_object", path)]
    assert report["problems"][0]["found"].endswith("ledger 'committed'")


def test_delete_through_the_client_stays_clean(deployment, lab):
    assert (lab.Recording & {"recording_id": "b"}).delete() == 1
    wait_until(lambda: deployment.status()["pending"] == [], 20, "delete finished")
    code, report = run(deployment)
    assert code == 0 and report["checked"]["rows"] == 2


def test_aborted_or_missing_decision_of_a_row(deployment, lab):
    schema = schema_name("imaging")
    aborted = layout.parse_object_path(raw_path(lab, "a"))[-1]
    undecided = layout.parse_object_path(raw_path(lab, "b"))[-1]
    table = deployment.db.table(schema, ledger.TABLE)
    p = deployment.db.param
    conn = deployment.db.connect()
    try:
        with deployment.db.transaction(conn):
            deployment.db.execute(
                conn, f"DELETE FROM {table} WHERE intent_id IN ({p}, {p})",
                (aborted, undecided),
            )
            ledger.record(deployment.db, conn, schema, aborted, ledger.ABORTED,
                          "recording")
    finally:
        conn.close()

    code, report = run(deployment)
    assert code == 1
    assert kinds(report) == [("aborted_row", raw_path(lab, "a")),
                             ("undecided_row", raw_path(lab, "b"))]
    found = {p["kind"]: (p["intent"], p["found"]) for p in report["problems"]}
    assert found == {"aborted_row": (aborted, "'aborted'"),
                     "undecided_row": (undecided, "no ledger record")}


def test_pending_intent_is_in_progress(deployment, lab, spawn):
    client = spawn(holder())
    intent = client.expect("HOLDING").split()[1]

    code, report = run(deployment)
    assert code == 0, report["problems"]
    [item] = report["in_progress"]
    assert (item["intent"], item["state"], item["kind"]) == (intent, "pending",
                                                             "stage")
    assert item["path"].endswith(f"raw_{intent}.bin") and item["bytes"] == 7
    assert report["intent_log"]["pending"] == 1
    text = deployment.cli("verify", schema_name("imaging")).stdout
    assert f"in progress: {schema_name('imaging')}.recording stage intent {intent}" \
        in text

    client.kill(signal.SIGKILL)
    wait_until(lambda: deployment.status()["pending"] == [], 20, "holder resolved")
    code, report = run(deployment)
    assert code == 0 and report["in_progress"] == []


def test_absent_intent_log_is_said(deployment, daemon, lab):
    daemon.stop()
    moved = deployment.root / "old-state"
    shutil.move(deployment.state, moved)

    code, report = run(deployment)
    assert code == 0 and report["intent_log"]["present"] is False
    text = deployment.cli("verify", schema_name("imaging")).stdout
    assert "is absent" in text and "no problems found" in text
    assert not deployment.state.exists(), "verify made the state dir"


def test_unknown_schema_is_a_problem(deployment, lab):
    code, report = run(deployment, schema_name("imagnig"))
    assert code == 1 and [p["kind"] for p in report["problems"]] == [
        "unknown_schema"]
    result = deployment.cli("verify", "no-such/schema", check=False)
    assert result.returncode == 1 and result.stderr.startswith("stagerd: schema")


def snapshot(deployment) -> dict[str, Any]:
    """Everything verify could change, by content."""
    db = deployment.db
    conn = db.connect()
    try:
        schemas = [s for s in db.schemas(conn) if s.startswith(schema_name("imaging"))]
        tables = {
            (s, t): sorted(map(tuple, db.execute(
                conn, f"SELECT * FROM {db.table(s, t)}").fetchall()), key=repr)
            for s in schemas for t in db.tables(conn, s)
        }
    finally:
        conn.close()
    fs = deployment.store.fs
    fs.invalidate_cache()
    listing = fs.find(deployment.store.root, detail=True)
    files = {
        name: (info.get("size"), info.get("mtime"), info.get("LastModified"),
               hashlib.sha256(fs.cat_file(name)).hexdigest())
        for name, info in listing.items()
    }
    digests = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (deployment.database, deployment.state / "intents.db")
        if path.exists()
    }
    return {"tables": tables, "files": files, "digests": digests}


def test_verify_writes_nothing(deployment, lab, spawn):
    client = spawn(holder())
    client.expect("HOLDING")
    put(deployment, f"_schema/{schema_name('imaging')}/notes.txt", b"junk")
    remove(deployment, raw_path(lab, "a"))
    before = snapshot(deployment)
    assert run(deployment)[0] == 1
    assert deployment.cli("verify", check=False).returncode == 1
    assert snapshot(deployment) == before


def test_readonly_connection_refuses_writes(deployment, lab):
    db = deployment.db
    conn = db.connect_readonly()
    try:
        with pytest.raises(Exception, match="(?i)read.?only"):
            db.execute(conn, f"DELETE FROM "
                       f"{db.table(schema_name('imaging'), ledger.TABLE)}")
    finally:
        conn.close()
    assert len(lab.Recording) == 3
