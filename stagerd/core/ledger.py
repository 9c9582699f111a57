"""The decision record: one row per intent in each schema's ledger table.

The ledger table ``~stagerd_ledger`` lives in the schema's own database, so
a client can insert its ``committed`` record in the same transaction as
the user's row. The daemon decides an abandoned intent by inserting
``aborted`` (a fence). The primary key on ``intent_id`` makes the decision:
whichever insert lands first wins and the other fails on the duplicate.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any, Iterable

from stagerd.core.db import Database
from stagerd.core.errors import DecisionConflict

__all__ = [
    "TABLE", "COMMITTED", "ABORTED", "ensure", "record", "read", "read_many",
    "decide",
]

log = logging.getLogger(__name__)

TABLE = "~stagerd_ledger"
COMMITTED = "committed"
ABORTED = "aborted"
# Intent ids per query in read_many: well under SQLite's 999 parameters.
_BATCH = 500


def ensure(db: Database, conn: Any, schema: str) -> None:
    """Create the schema's ledger table if it is missing."""
    q = db.quote
    db.execute(
        conn,
        f"CREATE TABLE IF NOT EXISTS {db.table(schema, TABLE)} ("
        f"{q('intent_id')} CHAR(20) NOT NULL PRIMARY KEY, "
        f"{q('outcome')} VARCHAR(16) NOT NULL, "
        f"{q('table_name')} VARCHAR(255) NOT NULL, "
        f"{q('decided_by')} VARCHAR(255) NOT NULL, "
        f"{q('decided_at')} VARCHAR(32) NOT NULL)",
    )


def record(
    db: Database, conn: Any, schema: str, intent_id: str, outcome: str, table: str
) -> None:
    """Insert a decision inside the caller's transaction.

    Raises the database's duplicate-key error if a decision exists already;
    the caller's transaction then decides what to roll back.
    """
    p = db.param
    db.execute(
        conn,
        f"INSERT INTO {db.table(schema, TABLE)} "
        f"(intent_id, outcome, table_name, decided_by, decided_at) "
        f"VALUES ({p}, {p}, {p}, {p}, {p})",
        (
            intent_id,
            outcome,
            table,
            f"{socket.gethostname()}:{os.getpid()}",
            datetime.datetime.now(datetime.timezone.utc).isoformat(),
        ),
    )


def read(db: Database, conn: Any, schema: str, intent_id: str) -> str | None:
    """The outcome recorded for an intent, or None while it is undecided."""
    if not db.table_exists(conn, schema, TABLE):
        return None
    cur = db.execute(
        conn,
        f"SELECT outcome FROM {db.table(schema, TABLE)} WHERE intent_id = {db.param}",
        (intent_id,),
    )
    row = cur.fetchone()
    return None if row is None else str(row[0])


def read_many(
    db: Database, conn: Any, schema: str, intent_ids: Iterable[str]
) -> dict[str, str]:
    """The outcome of each intent that has one, a few hundred per query."""
    ordered = sorted(set(intent_ids))
    if not ordered or not db.table_exists(conn, schema, TABLE):
        return {}
    found: dict[str, str] = {}
    for start in range(0, len(ordered), _BATCH):
        batch = ordered[start:start + _BATCH]
        cur = db.execute(
            conn,
            f"SELECT intent_id, outcome FROM {db.table(schema, TABLE)} "
            f"WHERE intent_id IN ({', '.join([db.param] * len(batch))})",
            batch,
        )
        found.update({str(i): str(o) for i, o in cur.fetchall()})
    return found


def decide(db: Database, schema: str, intent_id: str, table: str) -> str:
    """The intent's outcome, fencing it ``aborted`` if nobody decided yet.

    Used by the daemon for an intent whose owner is gone or asked to abort.
    Opens its own connection, so the fence commits on its own.
    """
    conn = db.connect()
    try:
        # MySQL commits implicitly at CREATE TABLE: do it before the fence.
        ensure(db, conn, schema)
        with db.transaction(conn):
            outcome = read(db, conn, schema, intent_id)
            if outcome is None:
                record(db, conn, schema, intent_id, ABORTED, table)
                log.info("fenced intent=%s schema=%s table=%s outcome=aborted",
                         intent_id, schema, table)
                outcome = ABORTED
        return outcome
    except Exception as e:
        if db.is_duplicate(e):
            # A commit landed between our read and our insert: it won.
            outcome = read(db, conn, schema, intent_id)
            if outcome is None:
                raise DecisionConflict(
                    f"intent {intent_id}: the ledger refused a fence but holds "
                    "no decision"
                ) from e
            return outcome
        raise
    finally:
        conn.close()
