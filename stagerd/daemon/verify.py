"""Checking a deployment: rows, stored objects and decision records agree.

:func:`verify` reads the database, the object stores and this host's
intent log, writes nothing, and reports every disagreement as a
:class:`Problem`:

* every object a row holds exists and matches its manifest: each file is
  there with its size, and no other file lies inside the object
  (``missing_object``, ``missing_file``, ``size_mismatch``,
  ``unexpected_file``; ``unknown_store`` and ``bad_metadata`` when the row's
  value itself cannot be checked, ``shared_object`` when two rows hold one
  object);
* no stored object under ``_schema/{schema}/`` lies outside a row's object
  (``stray_object``; ``stray_file`` for a file the path layout cannot have
  made), unless an intent of this host's log still covers it: those are
  listed as in progress, not as problems;
* no row holds an object whose intent the ledger decided ``aborted``
  (``aborted_row``) or does not mention at all (``undecided_row``).

An object value is recognised by its shape, as there is no column marker:
a JSON object with the keys :data:`OBJECT_KEYS` whose ``path`` the layout
can have made. A value with every key but a path the layout cannot have
made is reported (``bad_metadata``) rather than skipped.

A live deployment changes while it is read. The reads run in an order that
keeps a write in flight from looking like damage: the intent log first,
then the rows, then their decision records, then the store listings, then
the intent log again. A file is only ever written after its intent is in
the log, and deleted only after that intent (or a delete intent naming the
file) is decided, so any object whose row appears or disappears during the
check belongs to an intent that is pending in one of the two log reads or
was decided between them; such objects count as in progress.

Notes:

* Only this host's intent log is known. Another host writing into the same
  store and database shows its objects in flight as ``stray_object``
  (``TODO(multi-host)``: check them again after a grace period, as
  ``stagerd gc`` will).
* Without an intent log (a new or replaced disk) nothing can be accounted
  as in progress; the report says the log is absent.
* ``TODO(verify-memory)``: the metadata of every row's objects and the
  listing of each schema folder are held in memory at once, and MySQL
  result sets are buffered by pymysql; a schema with tens of millions of
  files needs a streaming merge of sorted listings instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from stagerd.core import layout, ledger
from stagerd.core.config import Config
from stagerd.core.db import Database
from stagerd.core.db import connect as connect_db
from stagerd.core.errors import ConfigError, StagingError
from stagerd.core.stores import Store, compare_manifest, store_errors
from stagerd.daemon.intents import LOG_NAME, PENDING

__all__ = ["OBJECT_KEYS", "Problem", "Report", "verify", "object_of"]

log = logging.getLogger(__name__)

OBJECT_KEYS = frozenset(
    {"path", "store", "size", "ext", "is_dir", "item_count", "timestamp", "manifest"}
)

Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One disagreement; ``expected`` and ``found`` are short phrases."""

    kind: str
    schema: str
    table: str | None
    key: dict[str, Any] | None
    store: str | None
    path: str | None
    expected: str
    found: str
    intent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def lines(self) -> list[str]:
        """The problem for people: what, where, expected, found."""
        where = f"{self.schema}.{self.table}" if self.table else self.schema
        if self.key is not None:
            where += " " + ", ".join(f"{k}={v!r}" for k, v in self.key.items())
        out = [f"{self.kind}: {where}"]
        if self.path is not None:
            out.append(f"    path     {self.store}:{self.path}")
        if self.intent is not None:
            out.append(f"    intent   {self.intent}")
        out.append(f"    expected {self.expected}")
        out.append(f"    found    {self.found}")
        return out


@dataclasses.dataclass
class Report:
    schemas: list[str]
    intent_log: Path
    intent_log_present: bool
    problems: list[Problem] = dataclasses.field(default_factory=list)
    in_progress: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pending_intents: int = 0
    rows: int = 0
    objects: int = 0
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "schemas": self.schemas,
            "checked": {"rows": self.rows, "objects": self.objects,
                        "files": self.files},
            "intent_log": {"path": str(self.intent_log),
                           "present": self.intent_log_present,
                           "pending": self.pending_intents},
            "in_progress": self.in_progress,
            "problems": [p.to_dict() for p in self.problems],
        }


def object_of(rel: str) -> str | None:
    """The object path a stored file belongs to; None if no object's.

    Key folders are ``attr=value``; the first segment after the table
    without ``=`` is the object itself (a file, or a folder of files).
    """
    parts = rel.split("/")
    for i in range(3, len(parts)):
        if "=" not in parts[i]:
            candidate = "/".join(parts[: i + 1])
            return candidate if _is_object_path(candidate) else None
    return None


@functools.lru_cache(maxsize=4096)
def _is_object_path(candidate: str) -> bool:
    """Whether the layout can have made ``candidate``.

    Cached: an object of many files (Zarr chunks) is parsed once, not once
    per file.
    """
    try:
        layout.parse_object_path(candidate)
    except StagingError:
        return False
    return True


@dataclasses.dataclass
class _RowObject:
    schema: str
    table: str
    key: dict[str, Any]
    meta: dict[str, Any]
    intent: str


@dataclasses.dataclass
class _Covered:
    """An intent of the log that covers a path: pending or just decided."""

    intent: str
    kind: str
    state: str
    schema: str
    table: str
    last_error: str | None


class _LogView:
    """What this host's intent log says is in flight, read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.present = path.is_file()
        self.by_path: dict[str, _Covered] = {}
        self.by_intent: dict[str, _Covered] = {}
        self.pending: set[str] = set()

    def read(self, since: float) -> None:
        """Add the intents pending now or decided at ``since`` or later."""
        if not self.present:
            return
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True,
                                   timeout=30)
            try:
                rows = conn.execute(
                    "SELECT i.id, i.kind, i.state, i.schema_name, i.table_name,"
                    " i.last_error, o.path FROM intents i"
                    " LEFT JOIN objects o ON o.intent_id = i.id"
                    " WHERE i.state = ? OR i.decided_at >= ?",
                    (PENDING, since),
                ).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise ConfigError(f"cannot read the intent log {self.path}: {e}") from e
        pending = set()
        for intent, kind, state, schema, table, error, path in rows:
            covered = _Covered(intent, kind, state, schema, table, error)
            self.by_intent.setdefault(intent, covered)
            if path is not None:
                self.by_path.setdefault(path, covered)
            if state == PENDING:
                pending.add(intent)
        self.pending = pending

    def covering(self, path: str, intent: str | None) -> _Covered | None:
        found = self.by_path.get(path)
        if found is None and intent is not None:
            found = self.by_intent.get(intent)
        return found


class _Check:
    def __init__(self, config: Config, progress: Progress | None) -> None:
        self.config = config
        self.progress = progress or (lambda done, total: None)
        self.db: Database = connect_db(
            config.database_url, config.database_password_file
        )
        self.conn: Any = None
        self._stores: dict[str, Store | None] = {}
        # (store url, schema) -> {object path: {path inside object: size}}
        self._objects: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        # (store url, schema) -> {file path: size} of files no object owns
        self._loose: dict[tuple[str, str], dict[str, int]] = {}

    # Stores.

    def store(self, name: str) -> Store | None:
        """The configured store ``name`` (aliases followed); None if unknown."""
        if name not in self._stores:
            try:
                self._stores[name] = Store(self.config.store(name))
            except ConfigError:
                self._stores[name] = None
        return self._stores[name]

    def all_stores(self) -> list[Store]:
        """Every configured store once, however many names lead to it."""
        seen: dict[str, Store] = {}
        for name in sorted(self.config.get("stores", {})):
            store = self.store(name)
            if store is not None:
                seen.setdefault(store.url, store)
        return list(seen.values())

    def store_schemas(self, store: Store) -> set[str]:
        """The schema folders under ``_schema/`` in a store."""
        top = store.full("_schema")
        try:
            store.fs.invalidate_cache(top)
            names = store.fs.ls(top, detail=False)
        except FileNotFoundError:
            return set()
        except store_errors() as e:
            raise store.failure("list", "_schema", e) from e
        found = {str(n).rstrip("/").rsplit("/", 1)[-1] for n in names}
        return {n for n in found if layout.IDENT.fullmatch(n)}

    def objects(self, store: Store, schema: str) -> dict[str, dict[str, int]]:
        """The objects under ``_schema/{schema}/``, listed once per store."""
        key = (store.url, schema)
        if key in self._objects:
            return self._objects[key]
        listing = store.find(f"_schema/{schema}")

        grouped: dict[str, dict[str, int]] = defaultdict(dict)
        loose: dict[str, int] = {}
        for name, info in listing.items():
            rel = name[len(store.root) + 1:]
            size = int(info.get("size") or 0)
            owner = object_of(rel)
            if owner is None:
                loose[rel] = size
            else:
                grouped[owner][rel[len(owner) + 1:]] = size
        log.debug("listed store=%s schema=%s files=%d objects=%d",
                  store.name, schema, len(listing), len(grouped))
        self._objects[key] = dict(grouped)
        self._loose[key] = loose
        return self._objects[key]

    def loose(self, store: Store, schema: str) -> dict[str, int]:
        """Files under ``_schema/{schema}/`` that no object path names."""
        self.objects(store, schema)
        return self._loose[(store.url, schema)]

    # The database.

    def schemas(self) -> list[str]:
        """Schemas with a ledger table, and schema folders in any store."""
        found = {s for s in self.db.schemas(self.conn)
                 if self.db.table_exists(self.conn, s, ledger.TABLE)}
        for store in self.all_stores():
            found |= self.store_schemas(store)
        return sorted(found)

    def row_objects(self, schema: str, table: str, report: Report) -> list[_RowObject]:
        """Every object value in the table's rows."""
        db = self.db
        key_columns = db.primary_key(self.conn, schema, table)
        cur = db.execute(self.conn, f"SELECT * FROM {db.table(schema, table)}")
        names = [d[0] for d in cur.description]
        found = []
        while batch := cur.fetchmany(1000):
            for row in batch:
                values = dict(zip(names, row))
                key = {k: values[k] for k in key_columns}
                objects = [
                    meta for meta in map(_object_value, row) if meta is not None
                ]
                if objects:
                    report.rows += 1
                for meta in objects:
                    try:
                        intent = layout.parse_object_path(meta["path"])[-1]
                    except (StagingError, AttributeError, TypeError):
                        report.problems.append(Problem(
                            "bad_metadata", schema, table, key, str(meta["store"]),
                            str(meta["path"]), "an object path made by the layout",
                            repr(meta["path"]),
                        ))
                        continue
                    found.append(_RowObject(schema, table, key, meta, intent))
        return found

    def outcomes(self, schema: str, intents: set[str]) -> dict[str, str]:
        """The ledger's outcome of each intent that has one."""
        return ledger.read_many(self.db, self.conn, schema, intents)


def _object_value(value: Any) -> dict[str, Any] | None:
    """The object metadata a column value holds, or None if it holds none."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str) or '"path"' not in value:
        return None
    try:
        meta = json.loads(value)
    except ValueError:
        return None
    if isinstance(meta, dict) and OBJECT_KEYS <= meta.keys():
        return meta
    return None


def _files(n: int, size: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}, {size} bytes"


def _manifest_problems(obj: _RowObject, found: dict[str, int]) -> list[Problem]:
    """The row's manifest against the files found inside the object."""
    meta, path = obj.meta, obj.meta["path"]
    manifest = meta["manifest"]

    def problem(kind: str, rel: str, expected: str, got: str) -> Problem:
        where = f"{path}/{rel}" if rel else path
        return Problem(kind, obj.schema, obj.table, obj.key, meta["store"], where,
                       expected, got, obj.intent)

    if not isinstance(manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in manifest.items()
    ):
        return [problem("bad_metadata", "", "a manifest of {path: size}",
                        repr(manifest)[:200])]
    if not found:
        return [problem("missing_object", "", _files(len(manifest),
                        sum(manifest.values())), "nothing")]
    expected = {rel: f"{size} bytes" for rel, size in manifest.items()}
    return [
        problem(
            kind, rel, expected.get(rel, "no file (not in the manifest)"),
            f"{found[rel]} bytes" if rel in found else "nothing",
        )
        for kind, rel in compare_manifest(manifest, found)
    ]


def verify(
    config: Config, schema: str | None = None, progress: Progress | None = None
) -> Report:
    """Check one schema, or every schema, of the deployment ``config`` names.

    ``progress(done, total)`` is called after each table and each store
    listing. Raises StagerdError if the database, a store or the intent
    log cannot be read at all; everything else comes back as problems.
    """
    if schema is not None:
        layout.check_ident("schema", schema)
    # The daemon stamps decisions with this host's clock, as we do here.
    started = time.time()
    check = _Check(config, progress)
    intent_log = _LogView(config.state_dir / LOG_NAME)
    intent_log.read(started)

    check.conn = check.db.connect_readonly()
    try:
        return _run(check, intent_log, schema, started)
    finally:
        check.conn.close()


def _run(check: _Check, intent_log: _LogView, schema: str | None,
         started: float) -> Report:
    # Which schemas and tables there are decides the progress total.
    schemas = [schema] if schema is not None else check.schemas()
    tables = {s: [t for t in check.db.tables(check.conn, s) if t != ledger.TABLE]
              for s in schemas}
    stores = check.all_stores()
    report = Report(schemas, intent_log.path, intent_log.present)
    total = sum(len(t) for t in tables.values()) + len(stores) * len(schemas)
    done = 0
    check.progress(done, total)
    if schema is not None and not tables[schema] and not any(
        schema in check.store_schemas(s) for s in stores
    ):
        report.problems.append(Problem(
            "unknown_schema", schema, None, None, None, None,
            "a schema with tables or stored objects", "neither",
        ))

    # Rows first, then their decision records: a row seen here was
    # committed with its record, so the record is there when read next.
    row_objects: list[_RowObject] = []
    for s in schemas:
        for table in tables[s]:
            row_objects += check.row_objects(s, table, report)
            done += 1
            check.progress(done, total)
    by_schema: dict[str, set[str]] = defaultdict(set)
    for obj in row_objects:
        by_schema[obj.schema].add(obj.intent)
    outcomes = {s: check.outcomes(s, ids) for s, ids in by_schema.items()}

    # Then the stores, listing each schema folder once.
    for s in schemas:
        for store in stores:
            check.objects(store, s)
            done += 1
            check.progress(done, total)
    intent_log.read(started)
    report.pending_intents = len(intent_log.pending)

    _check_rows(check, intent_log, row_objects, outcomes, report)
    _check_strays(check, intent_log, schemas, stores, report)
    return report


def _check_rows(check: _Check, intent_log: _LogView, row_objects: list[_RowObject],
                outcomes: dict[str, dict[str, str]], report: Report) -> None:
    held: dict[tuple[str, str], _RowObject] = {}
    for obj in row_objects:
        meta = obj.meta
        report.objects += 1
        outcome = outcomes[obj.schema].get(obj.intent)
        if outcome != ledger.COMMITTED:
            report.problems.append(Problem(
                "undecided_row" if outcome is None else "aborted_row",
                obj.schema, obj.table, obj.key, meta["store"], meta["path"],
                f"ledger outcome {ledger.COMMITTED!r}",
                "no ledger record" if outcome is None else f"{outcome!r}",
                obj.intent,
            ))

        store = check.store(str(meta["store"]))
        if store is None:
            configured = ", ".join(sorted(check.config.get("stores", {}))) or "none"
            report.problems.append(Problem(
                "unknown_store", obj.schema, obj.table, obj.key, str(meta["store"]),
                meta["path"], f"a configured store ({configured})",
                f"store {meta['store']!r}", obj.intent,
            ))
            continue
        other = held.setdefault((store.url, meta["path"]), obj)
        if other is not obj:
            # Deleting either row would delete the other's object.
            report.problems.append(Problem(
                "shared_object", obj.schema, obj.table, obj.key, store.name,
                meta["path"], "an object held by one row",
                f"also held by {other.schema}.{other.table} {other.key}", obj.intent,
            ))
            continue
        path_schema = meta["path"].split("/")[1]
        found = check.objects(store, path_schema).pop(meta["path"], {})
        report.files += len(found)
        problems = _manifest_problems(obj, found)
        covered = intent_log.covering(meta["path"], None)
        if problems and covered is not None and covered.kind == "delete":
            # Its row is being deleted: the objects go next.
            _in_progress(report, covered, store, meta["path"], found)
            continue
        report.problems += problems


def _check_strays(check: _Check, intent_log: _LogView, schemas: list[str],
                  stores: list[Store], report: Report) -> None:
    strays: list[tuple[str, Store, str, str, dict[str, int]]] = []
    for s in schemas:
        for store in stores:
            for path, files in sorted(check.objects(store, s).items()):
                report.files += len(files)
                intent = layout.parse_object_path(path)[-1]
                covered = intent_log.covering(path, intent)
                if covered is not None:
                    _in_progress(report, covered, store, path, files)
                else:
                    strays.append((s, store, path, intent, files))
            for rel, size in sorted(check.loose(store, s).items()):
                report.files += 1
                report.problems.append(Problem(
                    "stray_file", s, None, None, store.name, rel,
                    "only objects under _schema/{schema}/{table}/{key}/",
                    f"a file of {size} bytes that no object path names",
                ))

    # The ledger tells what became of a stray's intent, to help find why
    # it was left behind.
    wanted: dict[str, set[str]] = defaultdict(set)
    for s, _, _, intent, _ in strays:
        wanted[s].add(intent)
    outcomes = {s: check.outcomes(s, ids) for s, ids in wanted.items()}
    for s, store, path, intent, files in strays:
        outcome = outcomes[s].get(intent)
        history = "no ledger record" if outcome is None else f"ledger {outcome!r}"
        report.problems.append(Problem(
            "stray_object", s, layout.parse_object_path(path)[1], None, store.name,
            path, "no object outside a row's objects",
            f"{_files(len(files), sum(files.values()))}, no row; {history}", intent,
        ))


def _in_progress(report: Report, covered: _Covered, store: Store, path: str,
                 files: dict[str, int]) -> None:
    report.in_progress.append({
        "schema": covered.schema, "table": covered.table, "intent": covered.intent,
        "kind": covered.kind, "state": covered.state, "store": store.name,
        "path": path, "files": len(files), "bytes": sum(files.values()),
        "last_error": covered.last_error,
    })

