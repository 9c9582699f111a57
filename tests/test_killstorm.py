"""The kill storm: writers and the daemon SIGKILLed at random, then a check.

Four writer processes loop over small staged inserts: files through
``staged.open``, Zarr arrays through ``staged.store``, and inserts that
raise inside the block on purpose. Each appends a line to its own ack file
(fsync'd) before and after every ``with`` block. Meanwhile a driver
SIGKILLs a random writer every 0.4-1.6 s and respawns it, and SIGKILLs the
daemon every 3-6 s and starts a new one; writers ride over the restart
with their reconnect (``client.reconnect_s``) or fail that insert and go on.

Then the writers are told to stop, the daemon runs until ``status`` shows
no pending intent, and the invariants (``tests/invariants.py``) must hold:
every acknowledged insert has its row, no insert aborted on purpose has
one, and ``stagerd verify`` finds nothing wrong.

Halfway through, ``stagerd verify`` also runs on the live deployment: what
is in flight must show as in progress, never as a problem.

Budget: a minute of storm, within 90 s of wall time for the file. The storm
runs on two pairs that between them cover both databases and both stores:
sqlite-file for 25 s and mariadb-s3 for 35 s, as S3 writers start slowly.
With setup, settling and the checks, about 75 s for the file on a 2-core
machine. The schedule of kills comes
from a fixed seed; what each kill interrupts depends on timing, so nothing
asserts on counts except that some inserts were acknowledged. Run with
``-s`` to see the figures.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import HERE, DaemonProcess, wait_until
from invariants import check
from lab import schema_name

WRITERS = 4
SEED = 20240611
# Seconds of storm per pair. A writer on S3 needs about 2 s to start and
# its first insert another 2-4 s (boto sessions, the first connections) on
# a busy 2-core machine, so that pair gets longer.
STORM_S = {("sqlite", "file"): 25.0, ("mariadb", "s3"): 35.0}
PAIRS = list(STORM_S)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", PAIRS, indirect=True,
                            ids=[f"{d}-{s}" for d, s in PAIRS]),
]

# argv: tests dir, writer number, generation, ack file, stop file
WRITER = """
import json, os, random, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import zarr
from lab import declare

writer, generation = int(sys.argv[2]), int(sys.argv[3])
ack_path, stop_path = sys.argv[4], sys.argv[5]
rng = random.Random(f"{writer}-{generation}")
ack = open(ack_path, "a")


def note(**fields):
    ack.write(json.dumps({"gen": generation, **fields}) + "\\n")
    ack.flush()
    os.fsync(ack.fileno())


class OnPurpose(Exception):
    pass


lab = declare()
note(event="ready", t=time.time())
seq = 0
while not os.path.exists(stop_path):
    seq += 1
    how = rng.choice(["file", "file", "zarr", "abort"])
    if how == "zarr":
        table, key = "imaging_session", {"subject_id": writer,
                                          "session_id": generation * 100000 + seq}
    else:
        table, key = "recording", {"recording_id": f"w{writer}g{generation}s{seq}"}
    note(event="begin", how=how, table=table, key=key, t=time.time())
    staged = None
    try:
        if how == "zarr":
            with lab.ImagingSession.staged_insert1 as staged:
                staged.rec.update(key, n_frames=4, frame_rate=10.0)
                z = zarr.open(staged.store("frames", ".zarr"), mode="w",
                              shape=(4, 16), chunks=(1, 16), dtype="int32")
                z[:] = np.full((4, 16), seq, dtype="int32")
        else:
            with lab.Recording.staged_insert1 as staged:
                staged.rec.update(key)
                with staged.open("raw", ".bin") as f:
                    f.write(os.urandom(rng.randint(1, 64 * 1024)))
                if how == "abort":
                    raise OnPurpose
    except OnPurpose:
        note(event="aborted", table=table, key=key, intent=staged.intent)
        continue
    except Exception as e:
        note(event="failed", table=table, key=key, error=type(e).__name__,
             message=str(e)[:300], intent=staged and staged.intent)
        continue
    note(event="ok", schema=lab.schema.name, table=table, key=key,
         intent=staged.intent, t=time.time())
"""


@dataclass
class Writer:
    number: int
    root: Path
    env: dict[str, str]
    generation: int = 0
    proc: subprocess.Popen | None = None
    crashes: list[str] = field(default_factory=list)

    @property
    def ack(self) -> Path:
        return self.root / f"ack-{self.number}.jsonl"

    def spawn(self) -> None:
        self.generation += 1
        err = open(self.root / f"writer-{self.number}-{self.generation}.err", "w")
        with err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(HERE), str(self.number),
                 str(self.generation), str(self.ack), str(self.root / "stop")],
                stdout=subprocess.DEVNULL, stderr=err, env=self.env,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def reap(self) -> None:
        """Note an exit nobody asked for, with the tail of its stderr."""
        assert self.proc is not None
        err = self.root / f"writer-{self.number}-{self.generation}.err"
        self.crashes.append(f"writer {self.number} generation {self.generation} "
                            f"exited {self.proc.returncode}: "
                            f"{err.read_text()[-1500:]}")

    def events(self) -> list[dict[str, Any]]:
        if not self.ack.exists():
            return []
        # A kill can cut the last line short; it was never acknowledged.
        lines = self.ack.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]


@dataclass
class Tally:
    acknowledged: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    on_purpose: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failed: collections.Counter = field(default_factory=collections.Counter)
    killed: int = 0
    # Intents whose writer saw the with block end, one way or the other.
    finished_by_writer: set[str] = field(default_factory=set)


def tally(writers: list[Writer]) -> Tally:
    t = Tally()
    for w in writers:
        open_begin: dict[int, dict[str, Any]] = {}
        for e in w.events():
            if e["event"] == "ready":
                continue
            if e["event"] == "begin":
                open_begin[e["gen"]] = e
                continue
            open_begin.pop(e["gen"], None)
            if e.get("intent"):
                t.finished_by_writer.add(e["intent"])
            if e["event"] == "ok":
                t.acknowledged.append((e["schema"], e["table"], e["key"]))
            elif e["event"] == "aborted":
                t.on_purpose.append((e["table"], e["key"]))
            else:
                t.failed[e["error"]] += 1
        # Each generation but a writer's last ends in a SIGKILL; the insert
        # it had begun and not finished is the one the kill cut short.
        t.killed += len(open_begin)
    return t


def storm(deployment, writers: list[Writer], daemons: list[DaemonProcess],
          rng: random.Random, seconds: float) -> tuple[dict[str, int], Any]:
    """Kill writers and the daemon at random for ``seconds``.

    Returns the kills made and the ``stagerd verify`` started halfway.
    """
    kills = {"writers": 0, "daemon": 0}
    end = time.monotonic() + seconds
    next_daemon_kill = time.monotonic() + rng.uniform(3, 6)
    live = None
    while time.monotonic() < end:
        if live is None and time.monotonic() > end - seconds / 2:
            live = start_verify(deployment)
        time.sleep(rng.uniform(0.4, 1.6))
        for w in writers:
            if w.proc.poll() is not None:
                w.reap()
                w.spawn()
        victim = rng.choice(writers)
        victim.kill()
        victim.spawn()
        kills["writers"] += 1
        if time.monotonic() >= next_daemon_kill:
            daemons[-1].kill()
            time.sleep(rng.uniform(0, 1))
            daemons.append(DaemonProcess(deployment).start())
            kills["daemon"] += 1
            next_daemon_kill = time.monotonic() + rng.uniform(3, 6)
    return kills, live or start_verify(deployment)


def start_verify(deployment) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stagerd", "verify", schema_name("imaging"),
         "--json", "--config", str(deployment.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=deployment.env,
    )


def live_report(live: subprocess.Popen) -> tuple[list[str], int]:
    """The live verify's problems, and how many objects it saw in progress."""
    out, err = live.communicate(timeout=120)
    if live.returncode not in (0, 1):
        return [f"live stagerd verify failed ({live.returncode}): {err.strip()}"], 0
    report = json.loads(out)
    return [f"live verify: {p['kind']} {p['store']}:{p['path']}: expected "
            f"{p['expected']}, found {p['found']}" for p in report["problems"]
            ], len(report["in_progress"])


def settle(deployment, writers: list[Writer]) -> None:
    """Let every writer finish its insert and exit; the daemon resolves all."""
    (writers[0].root / "stop").touch()
    for w in writers:
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
        if w.proc.returncode != 0 and w.proc.returncode != -signal.SIGKILL:
            w.reap()

    def drained() -> bool:
        if deployment.status()["pending"] == []:
            return True
        # Intents whose resolution failed wait out a backoff: retry now.
        deployment.cli("recover")
        return False

    wait_until(drained, 60, "the daemon resolved every intent")


def rows_of_aborts(
    deployment, on_purpose: list[tuple[str, dict[str, Any]]]
) -> list[str]:
    db = deployment.db
    found = []
    for table, key in on_purpose:
        where = " AND ".join(f"{db.quote(k)} = {db.param}" for k in key)
        name = db.table(schema_name("imaging"), table)
        [(n,)] = deployment.query(f"SELECT COUNT(*) FROM {name} WHERE {where}",
                                  tuple(key.values()))
        if n:
            found.append(f"aborted on purpose, yet a row exists: {table} {key}")
    return found


def aborted_intents(deployment) -> set[str]:
    """Staged inserts the daemon decided aborted, from its log (read-only)."""
    path = deployment.state / "intents.db"
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT id FROM intents WHERE kind = 'stage' AND state = 'aborted'"
        ).fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}


def logged_errors(daemon: DaemonProcess) -> list[str]:
    """Each level=ERROR line of a daemon's log, with the traceback after it."""
    found = []
    for i, line in enumerate(daemon.log):
        if "level=ERROR" in line:
            tail = daemon.log[i + 1:i + 30]
            more = next((n for n, t in enumerate(tail) if "level=" in t), len(tail))
            found.append("\n".join([line, *tail[:more]]))
    return found


def test_kill_storm(deployment, backend, tmp_path):
    deployment.write_config(reconnect_s=5)
    rng = random.Random(SEED)
    root = tmp_path / "storm"
    root.mkdir()
    writers = [Writer(n, root, deployment.env) for n in range(WRITERS)]
    daemons = [DaemonProcess(deployment).start()]
    live = None
    try:
        for w in writers:
            w.spawn()
        kills, live = storm(deployment, writers, daemons, rng, STORM_S[backend])
        settle(deployment, writers)
        t = tally(writers)

        violations, in_progress = live_report(live)
        violations += check(deployment, t.acknowledged)
        violations += rows_of_aborts(deployment, t.on_purpose)
        counts = deployment.status()["counts"]
        cleaned = len(aborted_intents(deployment) - t.finished_by_writer)
    finally:
        for proc in [w.proc for w in writers] + [live]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        for n, d in enumerate(daemons):
            if d.proc.poll() is None:
                d.stop()
            # Kept beside the ack files, for reading a failure afterwards.
            (root / f"daemon-{n}.log").write_text("\n".join(d.log) + "\n")

    print(f"\nkill storm {'-'.join(backend)} {STORM_S[backend]:.0f} s: "
          f"{len(t.acknowledged)} acknowledged, {len(t.on_purpose)} aborted on "
          f"purpose, {t.killed} killed mid-insert, {sum(t.failed.values())} failed "
          f"{dict(t.failed)}, {cleaned} cleaned (aborted by the daemon for a "
          f"writer that never saw its block end); "
          f"{kills['writers']} writer and {kills['daemon']} daemon SIGKILLs; "
          f"the live verify saw {in_progress} objects in progress; "
          f"intent log {counts}")
    errors = [error for d in daemons for error in logged_errors(d)]
    crashes = [c for w in writers for c in w.crashes]
    assert t.acknowledged, "no insert was acknowledged in the whole storm"
    assert violations == [], "\n".join(violations)
    assert crashes == [], "\n".join(crashes)
    assert errors == [], "\n".join(errors)
