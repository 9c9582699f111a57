"""``staged_insert1``: write large objects straight to the store, then
insert their row, all or nothing.

The protocol, step by step:

1. ``staged.store(field, ext)`` / ``staged.open(field, ext)`` check the
   field, the key and the store, then ask the daemon to register the
   object. The daemon allocates the path and logs it durably before it
   answers, so no byte reaches the store before the daemon knows of it.
2. The caller writes bytes directly to the store.
3. On a clean exit each object is listed once for its metadata, then the
   row and the decision record ``committed`` are inserted in one database
   transaction, and the daemon is told.
4. On an exception (KeyboardInterrupt included) or a failed insert, the
   daemon is asked to abort: it fences the intent, deletes the objects and
   only then answers; the original error propagates.
5. If the database cannot confirm the COMMIT, nothing is deleted: the
   daemon decides from the decision record once this process exits, and
   :class:`OutcomeUnknown` says so.

If this process dies anywhere in between, the daemon notices through the
closed socket and finishes the intent from the decision record.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import fsspec

from stagerd.core import faults, ledger
from stagerd.core.config import Config
from stagerd.core.errors import (
    DaemonUnavailable,
    DecisionConflict,
    OutcomeUnknown,
    StagingError,
)
from stagerd.core.stores import Store
from stagerd_client.link import RECONNECT_S, Link, link
from stagerd_client.objectref import open_store

__all__ = ["StagedInsert", "daemon_link", "request_fields"]

log = logging.getLogger(__name__)


def daemon_link(config: Config) -> Link:
    reconnect_s = float(config.get("client.reconnect_s", RECONNECT_S))
    return link(config.socket_path, reconnect_s)


def request_fields(table: Any) -> dict[str, Any]:
    """What every intent request says about the table it is for."""
    return {
        "schema": table.schema.name,
        "table": table.table_name,
        "database": table.schema.db.identity,
    }


def _key_value(value: Any) -> Any:
    """A key value as JSON: integers stay numbers, the rest become text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime.date):  # datetimes too
        return value.isoformat()
    return str(value)


class StagedInsert:
    """One row being staged; used as ``with Table.staged_insert1 as staged:``.

    ``rec`` collects the row's values. Set the primary key before calling
    :meth:`store` or :meth:`open`: the object path is derived from it.

    State: ``new`` until the block is entered, ``open`` inside it, then
    ``committed`` or ``aborted``; a finished staged insert refuses reuse.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.rec: dict[str, Any] = {}
        self.state = "new"
        self.intent: str | None = None
        self._config: Config = table.schema.config
        # field -> (store, path, ext) of each object registered so far
        self._objects: dict[str, tuple[Store, str, str]] = {}

    def __repr__(self) -> str:
        table, state = self.table.table_name, self.state
        return f"<StagedInsert {table} {state} intent={self.intent}>"

    def __enter__(self) -> StagedInsert:
        if self.state != "new":
            raise StagingError(f"this staged insert is {self.state}; start a new one")
        self.state = "open"
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self._commit()
        else:
            self._abort()
        return False

    # Handles for writing.

    def _register(self, field: str, ext: str) -> tuple[Store, str]:
        if self.state != "open":
            raise StagingError(
                f"staged insert is {self.state}: use store() and open() inside "
                "the with block"
            )
        heading = self.table.heading
        if field not in heading or not heading[field].type.is_object:
            raise StagingError(
                f"{field!r} is not an object field of {self.table.table_name}; "
                f"its object fields are {list(heading.object_fields) or 'none'}"
            )
        missing = [k for k in heading.primary_key if k not in self.rec]
        if missing:
            raise StagingError(
                f"set the primary key before staging {field!r}: "
                f"staged.rec lacks {', '.join(missing)}"
            )
        store = open_store(self._config, heading[field].type.store)
        if field in self._objects:
            old_store, path, old_ext = self._objects[field]
            if old_ext != ext:
                raise StagingError(
                    f"{field!r} was staged with ext {old_ext!r}, not {ext!r}"
                )
            return old_store, path

        dialect = self.table.schema.db.dialect
        key = {
            k: _key_value(heading[k].decode(heading[k].encode(self.rec[k], dialect),
                                            dialect))
            for k in heading.primary_key
        }
        link_ = daemon_link(self._config)
        faults.point("client.register.before")
        reply = link_.request(
            "register", **request_fields(self.table), intent=self.intent, key=key,
            field=field, ext=ext, store=store.name, store_url=store.url,
        )
        self.intent = reply["intent"]
        link_.intents.add(self.intent)
        self._objects[field] = (store, reply["path"], ext)
        faults.point("client.register.after")
        return store, reply["path"]

    def store(self, field: str, ext: str = "") -> fsspec.FSMap:
        """A mapping over the object, for Zarr and other mapping stores."""
        store, path = self._register(field, ext)
        return store.mapper(path)

    def open(self, field: str, ext: str = "", mode: str = "wb") -> Any:
        """A file for the object, for HDF5 and other file writers."""
        if "r" in mode and "+" not in mode:
            raise StagingError(f"staged objects are opened for writing, not {mode!r}")
        store, path = self._register(field, ext)
        return store.open(path, mode)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem of the table's object store (the first one)."""
        fields = self.table.heading.object_fields
        if not fields:
            raise StagingError(f"{self.table.table_name} has no object fields")
        return open_store(self._config, self.table.heading[fields[0]].type.store).fs

    # Finishing.

    def _commit(self) -> None:
        if not self._objects:
            self.table.insert1(self.rec)
            self.state = "committed"
            return

        objects = {}
        for field, (store, path, ext) in self._objects.items():
            store.sync(path)  # the row must never outlive its bytes
            meta = store.describe(path, ext)
            if meta is None:
                self._check_not_fenced()
                self._abort()
                raise StagingError(
                    f"nothing was written to staged field {field!r} ({path}); "
                    "write to the handle from store() or open() before the block ends"
                )
            objects[field] = meta

        faults.point("client.commit.before_transaction")
        try:
            self._insert(objects)
        except OutcomeUnknown:
            self.state = "unknown"
            raise
        except BaseException:
            self._abort()
            raise
        self.state = "committed"
        faults.point("client.commit.after_commit")
        daemon_link(self._config).finish("commit", self.intent)

    def _check_not_fenced(self) -> None:
        """Raise DecisionConflict if the daemon already decided this intent."""
        schema = self.table.schema
        outcome = ledger.read(schema.db, schema.connection(), schema.name, self.intent)
        if outcome == ledger.ABORTED:
            self.state = "aborted"
            raise DecisionConflict(
                f"intent {self.intent} was already decided aborted (the daemon "
                "fenced it) and its objects removed; the row was not inserted"
            )

    def _insert(self, objects: dict[str, Any]) -> None:
        schema = self.table.schema
        db, conn = schema.db, schema.connection()
        db.begin(conn)
        try:
            self.table._insert_row(conn, self.rec, objects)
            try:
                ledger.record(db, conn, schema.name, self.intent, ledger.COMMITTED,
                              self.table.table_name)
            except Exception as e:
                if db.is_duplicate(e):
                    raise DecisionConflict(
                        f"intent {self.intent} was already decided aborted (the "
                        "daemon fenced it); the row was not inserted"
                    ) from e
                raise
        except BaseException:
            db.rollback(conn)
            raise
        faults.point("client.commit.after_row")
        try:
            db.commit(conn)
        except OutcomeUnknown as e:
            raise OutcomeUnknown(
                f"the database did not confirm the commit of intent {self.intent} "
                f"({e}). Nothing was deleted; the daemon decides it from the "
                "decision record once this process has exited"
            ) from e
        except BaseException:
            db.rollback(conn)
            raise

    def _abort(self) -> None:
        if self.state in ("aborted", "committed"):
            return
        self.state = "aborted"
        if self.intent is None:
            return
        try:
            daemon_link(self._config).finish("abort", self.intent)
        except DaemonUnavailable:
            pass  # deferred by the link; logged there
        except Exception as e:
            log.warning("abort of intent=%s failed: %s", self.intent, e)

