"""The intent log: a durable record of every path handed out.

Plain SQLite in WAL mode with ``synchronous=FULL``, so an admin can read it
with ``sqlite3`` or ``sqlite-utils`` and a registration that was answered
survives a power cut. Two tables::

    intents  id, kind (stage|delete), state (pending|committed|aborted),
             schema_name, table_name, key_json, owner (uid, pid,
             start_time, boot_id), created_at, decided_at, last_error
    objects  intent_id, field, store, path, ext

All writes go through one thread. :class:`LogWriter` queues the writes
that arrive while a commit is in flight and applies them together in the
next transaction, so concurrent registrations share one fsync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import sqlite_utils

from stagerd.daemon.owners import Owner

__all__ = ["Intent", "ObjectEntry", "IntentLog", "LogWriter", "LOG_NAME", "PENDING"]

log = logging.getLogger(__name__)

# The log's file name in the state dir.
LOG_NAME = "intents.db"
PENDING = "pending"
COMMITTED = "committed"
ABORTED = "aborted"


@dataclass(frozen=True)
class ObjectEntry:
    field: str
    store: str
    path: str
    ext: str


@dataclass
class Intent:
    id: str
    kind: str
    state: str
    schema: str
    table: str
    key: dict[str, Any]
    owner: Owner
    created_at: float
    objects: list[ObjectEntry] = field(default_factory=list)
    decided_at: float | None = None
    last_error: str | None = None

    def summary(self) -> dict[str, Any]:
        """What ``stagerd status`` shows of an intent."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "schema": self.schema,
            "table": self.table,
            "key": self.key,
            "uid": self.owner.uid,
            "pid": self.owner.pid,
            "age_s": round(time.time() - self.created_at, 3),
            "objects": [o.__dict__ for o in self.objects],
            "last_error": self.last_error,
        }


Op = Callable[[sqlite3.Connection], Any]


class IntentLog:
    """The SQLite file; use from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._create()

    def _create(self) -> None:
        db = sqlite_utils.Database(self.conn)
        db["intents"].create(
            {
                "id": str,
                "kind": str,
                "state": str,
                "schema_name": str,
                "table_name": str,
                "key_json": str,
                "uid": int,
                "pid": int,
                "start_time": int,
                "boot_id": str,
                "created_at": float,
                "decided_at": float,
                "last_error": str,
            },
            pk="id",
            not_null={"kind", "state", "schema_name", "table_name", "key_json"},
            if_not_exists=True,
        )
        db["objects"].create(
            {"intent_id": str, "field": str, "store": str, "path": str, "ext": str},
            pk=("intent_id", "store", "path"),
            foreign_keys=[("intent_id", "intents", "id")],
            if_not_exists=True,
        )
        db["intents"].create_index(["state"], if_not_exists=True)

    def close(self) -> None:
        self.conn.close()

    def apply(self, ops: list[Op]) -> list[Any]:
        """Run ``ops`` in one transaction; each result or exception, in order.

        Each op runs inside its own savepoint, so one failing op is undone
        alone and the others still commit.
        """
        results: list[Any] = []
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                self.conn.execute("SAVEPOINT op")
                try:
                    results.append(op(self.conn))
                    self.conn.execute("RELEASE op")
                except Exception as e:  # handed back to the op's caller
                    self.conn.execute("ROLLBACK TO op")
                    self.conn.execute("RELEASE op")
                    results.append(e)
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return results

    # Operations, to be passed to apply() or LogWriter.submit().

    @staticmethod
    def insert_intent(intent: Intent) -> Op:
        def op(conn: sqlite3.Connection) -> None:
            o = intent.owner
            conn.execute(
                "INSERT INTO intents (id, kind, state, schema_name, table_name,"
                " key_json, uid, pid, start_time, boot_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (intent.id, intent.kind, intent.state, intent.schema,
                 intent.table, json.dumps(intent.key), o.uid, o.pid,
                 o.start_time, o.boot_id, intent.created_at),
            )
            for entry in intent.objects:
                IntentLog.insert_object(intent.id, entry)(conn)

        return op

    @staticmethod
    def insert_object(intent_id: str, entry: ObjectEntry) -> Op:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO objects (intent_id, field, store, path, ext)"
                " VALUES (?, ?, ?, ?, ?)",
                (intent_id, entry.field, entry.store, entry.path, entry.ext),
            )

        return op

    @staticmethod
    def set_state(intent_id: str, state: str) -> Op:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE intents SET state = ?, decided_at = ?, last_error = NULL"
                " WHERE id = ?",
                (state, time.time(), intent_id),
            )

        return op

    @staticmethod
    def set_error(intent_id: str, error: str) -> Op:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE intents SET last_error = ? WHERE id = ?", (error, intent_id)
            )

        return op

    # Reads.

    def load(self, state: str = PENDING) -> list[Intent]:
        """Every intent in ``state``, with its objects."""
        rows = self.conn.execute(
            "SELECT id, kind, state, schema_name, table_name, key_json, uid, pid,"
            " start_time, boot_id, created_at, decided_at, last_error"
            " FROM intents WHERE state = ? ORDER BY created_at",
            (state,),
        ).fetchall()
        intents = {}
        for r in rows:
            owner = Owner(r[6], r[7], r[8], r[9])
            intents[r[0]] = Intent(
                r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), owner, r[10],
                decided_at=r[11], last_error=r[12],
            )
        objects = self.conn.execute(
            "SELECT o.intent_id, o.field, o.store, o.path, o.ext FROM objects o"
            " JOIN intents i ON i.id = o.intent_id WHERE i.state = ?"
            " ORDER BY o.rowid",
            (state,),
        ).fetchall()
        for intent_id, *entry in objects:
            intents[intent_id].objects.append(ObjectEntry(*entry))
        return list(intents.values())

    def owner_and_state(self, intent_id: str) -> tuple[Owner | None, str | None]:
        """An intent's owner and state; (None, None) if the log has no such id."""
        row = self.conn.execute(
            "SELECT state, uid, pid, start_time, boot_id FROM intents WHERE id = ?",
            (intent_id,),
        ).fetchone()
        return (None, None) if row is None else (Owner(*row[1:]), row[0])

    def allocated(self, intent_id: str, store: str, path: str) -> bool | None:
        """Whether the log gave ``path`` to the staging intent ``intent_id``.

        None if the log does not know the intent (pruned, or another host's).
        """
        known = self.conn.execute(
            "SELECT kind FROM intents WHERE id = ?", (intent_id,)
        ).fetchone()
        if known is None:
            return None
        return known[0] == "stage" and self.conn.execute(
            "SELECT 1 FROM objects WHERE intent_id = ? AND store = ? AND path = ?",
            (intent_id, store, path),
        ).fetchone() is not None

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT state, count(*) FROM intents GROUP BY state"
        ).fetchall()
        return {state: n for state, n in rows}

    # Keeping the log small.

    @staticmethod
    def forget_decided(before: float, limit: int = 5000) -> Op:
        """Forget up to ``limit`` decided intents decided before ``before``.

        Pending intents are never touched. The op returns how many were
        removed; run it again while that equals ``limit``, so that one long
        transaction does not hold up registrations. Then :meth:`checkpoint`.
        """

        def op(conn: sqlite3.Connection) -> int:
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS doomed (id TEXT PRIMARY KEY)"
            )
            conn.execute("DELETE FROM doomed")
            conn.execute(
                "INSERT INTO doomed SELECT id FROM intents"
                " WHERE state IN (?, ?) AND decided_at < ? LIMIT ?",
                (COMMITTED, ABORTED, before, limit),
            )
            conn.execute(
                "DELETE FROM objects WHERE intent_id IN (SELECT id FROM doomed)"
            )
            return conn.execute(
                "DELETE FROM intents WHERE id IN (SELECT id FROM doomed)"
            ).rowcount
        return op

    def prune(self, before: float, limit: int = 5000) -> int:
        """:meth:`forget_decided` in a transaction of its own; how many went."""
        [removed] = self.apply([self.forget_decided(before, limit)])
        if isinstance(removed, Exception):
            raise removed
        return removed

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL into the database file and truncate the WAL.

        Returns (frames in the WAL, frames copied); a reader holding an old
        snapshot (``sqlite3`` left open by an admin) can keep frames back.
        """
        busy, frames, copied = self.conn.execute(
            "PRAGMA wal_checkpoint(TRUNCATE)"
        ).fetchone()
        return frames, copied


class LogWriter:
    """Serialises access to an :class:`IntentLog` and batches its commits."""

    def __init__(self, intent_log: IntentLog) -> None:
        self.log = intent_log
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="intent-log"
        )
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._draining = False
        self.commits = 0  # transactions, for the benchmark's fsync count
        self.writes = 0

    async def submit(self, op: Op) -> Any:
        """Apply ``op`` durably; returns once its transaction committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def read(self, fn: Callable[[IntentLog], Any]) -> Any:
        """Run a read on the log's thread, between write batches."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, self.log)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await loop.run_in_executor(
                        self._thread, self.log.apply, [op for op, _ in batch]
                    )
                except Exception as e:
                    log.error("intent log write failed: %s", e)
                    results = [e] * len(batch)
                self.commits += 1
                self.writes += len(batch)
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = False

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.log.close()
