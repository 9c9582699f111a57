"""Deciding intents and finishing them.

An intent is finished from its decision record and nothing else:

========  ===========  ================================================
kind      outcome      what is done
========  ===========  ================================================
stage     committed    nothing to delete; the row holds the objects
stage     aborted      delete the staged objects
delete    committed    the rows are gone: delete their objects
delete    aborted      the rows stayed: keep their objects
========  ===========  ================================================

With ``fence=True`` (the owner is gone, or asked to abort) an undecided
intent is first decided ``aborted`` in the ledger, so a late commit from a
half-dead client fails on the duplicate key. Without it (a client reports
its commit) an undecided intent is left pending.

A failure (database down, store unreachable) leaves the intent pending
with a later retry time; nothing is deleted whose outcome is unknown, and
deletion is idempotent, so a half-finished deletion completes next time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from stagerd.core import faults, ledger
from stagerd.core.db import Database
from stagerd.core.errors import StagerdError
from stagerd.core.stores import Store
from stagerd.daemon.intents import (
    ABORTED,
    COMMITTED,
    Intent,
    IntentLog,
    LogWriter,
    ObjectEntry,
)

__all__ = ["Resolver"]

log = logging.getLogger(__name__)

_BACKOFF_S = (0.5, 1, 2, 5, 10, 30, 60)


class Resolver:
    def __init__(
        self,
        db: Database,
        stores: Callable[[str], Store],
        writer: LogWriter,
        pending: dict[str, Intent],
    ) -> None:
        self.db = db
        self.stores = stores
        self.writer = writer
        self.pending = pending
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        # Intents whose finishing failed, with the fence flag to retry with:
        # an abort its live owner asked for is retried without waiting for
        # the owner to die.
        self.retrying: dict[str, bool] = {}

    def busy(self, intent_id: str) -> bool:
        lock = self._locks.get(intent_id)
        return lock is not None and lock.locked()

    def due(self, intent_id: str) -> bool:
        return time.monotonic() >= self._retry_at.get(intent_id, 0.0)

    async def finish(self, intent: Intent, fence: bool) -> str | None:
        """Decide (if ``fence``) and finish one intent; its final state.

        Returns None if the intent is still undecided (no fence asked and no
        record yet). Raises the underlying error, after scheduling a retry,
        if the database or the store failed.
        """
        lock = self._locks.setdefault(intent.id, asyncio.Lock())
        async with lock:
            if intent.state != "pending":
                return intent.state
            try:
                outcome = await self._outcome(intent, fence)
                if outcome is None:
                    # Undecided and no fence asked: the owner decides.
                    self.retrying.pop(intent.id, None)
                    return None
                await self._apply(intent, outcome)
            except Exception as e:
                self.retrying[intent.id] = fence
                await self._failed(intent, e)
                raise
            self._failures.pop(intent.id, None)
            self._retry_at.pop(intent.id, None)
            self.retrying.pop(intent.id, None)
            self._locks.pop(intent.id, None)
            return intent.state

    async def _outcome(self, intent: Intent, fence: bool) -> str | None:
        if fence:
            return await asyncio.to_thread(
                ledger.decide, self.db, intent.schema, intent.id, intent.table
            )

        def read() -> str | None:
            conn = self.db.connect()
            try:
                return ledger.read(self.db, conn, intent.schema, intent.id)
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def _apply(self, intent: Intent, outcome: str) -> None:
        doomed = (intent.kind == "stage" and outcome == ledger.ABORTED) or (
            intent.kind == "delete" and outcome == ledger.COMMITTED
        )
        faults.point("daemon.resolve.decided")
        deleted: list[ObjectEntry] = []
        if doomed:
            deleted = await asyncio.to_thread(self._delete_objects, intent)
            faults.point("daemon.resolve.deleted")
            self._prune(intent, deleted)
        state = COMMITTED if outcome == ledger.COMMITTED else ABORTED
        await self.writer.submit(IntentLog.set_state(intent.id, state))
        intent.state = state
        self.pending.pop(intent.id, None)
        log.info(
            "finished intent=%s kind=%s outcome=%s deleted=%d",
            intent.id, intent.kind, outcome, len(deleted),
        )

    def _delete_objects(self, intent: Intent) -> list[ObjectEntry]:
        """Delete the intent's objects (in a worker thread); those deleted."""
        kept = self._still_referenced(intent) if intent.kind == "delete" else set()
        deleted = []
        for n, entry in enumerate(intent.objects):
            if n:
                faults.point("daemon.delete.between")
            if entry.path in kept:
                log.warning(
                    "kept object a row still references intent=%s store=%s "
                    "path=%s", intent.id, entry.store, entry.path,
                )
                continue
            self.stores(entry.store).delete(entry.path, prune=False)
            deleted.append(entry)
            log.info(
                "deleted intent=%s store=%s path=%s", intent.id, entry.store,
                entry.path,
            )
        return deleted

    def _prune(self, intent: Intent, deleted: list[ObjectEntry]) -> None:
        """Remove the empty key folders the deletion left, keeping busy ones.

        This runs on the event loop, where registrations are handled too, so
        a new attempt at the same key is either pending before this looks
        (and its folder is kept, as its writer may have made it already) or
        registered after the folder is gone (and its writer makes it anew).
        A folder is a handful of rmdir calls on a local disk.
        """
        local = [e for e in deleted if self.stores(e.store).is_local]
        if not local:
            return  # only local stores have folders
        busy = {
            folder
            for other in self.pending.values() if other.id != intent.id
            for entry in other.objects
            for folder in _ancestors(entry.store, entry.path)
        }
        for entry in local:
            self.stores(entry.store).prune(
                entry.path, keep=lambda f, s=entry.store: (s, f) in busy
            )

    def _still_referenced(self, intent: Intent) -> set[str]:
        """Paths of a delete intent that a row of its table still holds.

        A legitimate delete removes the rows in the transaction that records
        ``committed``, so this is empty; only a forged decision record (one
        written without deleting the rows) could make the daemon delete
        objects under rows that stay.
        """
        db, q = self.db, self.db.quote
        conn = db.connect()
        try:
            if not db.table_exists(conn, intent.schema, intent.table):
                return set()
            found = set()
            for entry in intent.objects:
                column = db.json_text(q(entry.field), "path")
                cur = db.execute(
                    conn,
                    f"SELECT 1 FROM {db.table(intent.schema, intent.table)} "
                    f"WHERE {column} = {db.param} LIMIT 1",
                    (entry.path,),
                )
                if cur.fetchone() is not None:
                    found.add(entry.path)
            return found
        finally:
            conn.close()

    async def _failed(self, intent: Intent, error: Exception) -> None:
        n = self._failures.get(intent.id, 0)
        self._failures[intent.id] = n + 1
        delay = _BACKOFF_S[min(n, len(_BACKOFF_S) - 1)]
        self._retry_at[intent.id] = time.monotonic() + delay
        intent.last_error = f"{type(error).__name__}: {error}"
        level = logging.WARNING if isinstance(error, StagerdError) else logging.ERROR
        log.log(
            level, "resolve failed intent=%s retry_in_s=%s error=%s",
            intent.id, delay, intent.last_error,
        )
        try:
            await self.writer.submit(IntentLog.set_error(intent.id, intent.last_error))
        except Exception as e:  # the log itself failing is logged by the writer
            log.debug("could not record error intent=%s: %s", intent.id, e)


def _ancestors(store: str, path: str) -> list[tuple[str, str]]:
    """(store, folder) for every folder above ``path`` in its store."""
    parts = path.split("/")[:-1]
    return [(store, "/".join(parts[:n])) for n in range(1, len(parts) + 1)]
