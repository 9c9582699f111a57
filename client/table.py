"""Tables: declare, insert, restrict, fetch and delete rows.

A table object stands for its rows, optionally restricted: ``Session & {"
subject_id": 1}`` is the rows with that subject, ``Session & [a, b]`` the
rows matching ``a`` or ``b``. Keys of a restriction that are not attributes
of the table are ignored, as in DataJoint.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Iterable

from stagerd.core import ledger
from stagerd.core.errors import DataError, DuplicateError, MissingRowError, StagingError
from stagerd_client.declare import NO_DEFAULT, Heading
from stagerd_client.objectref import ObjectRef

__all__ = ["Table", "Manual", "Lookup"]

# Objects per delete intent; the daemon accepts up to 1000.
_DELETE_BATCH = 500


class Table:
    """Base of declared tables. Subclass Manual or Lookup, then ``@schema``."""

    definition: str
    schema: Any
    heading: Heading
    table_name: str

    def __init__(self) -> None:
        self._restrictions: list[list[dict[str, Any]]] = []

    # Identity and declaration.

    @property
    def full_table_name(self) -> str:
        return self.schema.db.table(self.schema.name, self.table_name)

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.heading.primary_key

    def declare(self) -> None:
        db = self.schema.db
        conn = self.schema.connection()
        columns = [a.column_sql(db.dialect, db.quote) for a in self.heading.attributes]
        pk = ", ".join(db.quote(n) for n in self.primary_key)
        with db.transaction(conn):
            db.execute(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self.full_table_name} "
                f"({', '.join(columns)}, PRIMARY KEY ({pk}))",
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.schema.name}.{self.table_name}>"

    # Restriction.

    def __call__(self) -> Table:
        return self._restricted(None)

    def __and__(self, condition: Any) -> Table:
        if isinstance(condition, Mapping):
            return self._restricted([dict(condition)])
        if isinstance(condition, (list, tuple)):
            for c in condition:
                if not isinstance(c, Mapping):
                    raise DataError(
                        f"restrict {self.table_name} by dicts, got {type(c).__name__}"
                    )
            return self._restricted([dict(c) for c in condition])
        raise DataError(
            f"restrict {self.table_name} by a dict or a list of dicts, "
            f"got {type(condition).__name__}"
        )

    def _restricted(self, alternatives: list[dict[str, Any]] | None) -> Table:
        other = copy.copy(self)
        other._restrictions = list(self._restrictions)
        if alternatives is not None:
            other._restrictions.append(alternatives)
        return other

    def _where(self) -> tuple[str, list[Any]]:
        db = self.schema.db
        clauses, params = [], []
        for alternatives in self._restrictions:
            ors = []
            for cond in alternatives:
                ands = []
                for name, value in cond.items():
                    if name not in self.heading:
                        continue
                    attr = self.heading[name]
                    if attr.type.is_object:
                        raise DataError(f"cannot restrict by object field {name!r}")
                    if value is None:
                        ands.append(f"{db.quote(name)} IS NULL")
                    else:
                        ands.append(f"{db.quote(name)} = {db.param}")
                        params.append(attr.encode(value, db.dialect))
                ors.append("(" + (" AND ".join(ands) or "1=1") + ")")
            clauses.append("(" + (" OR ".join(ors) or "1=0") + ")")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    # Reading.

    def __len__(self) -> int:
        where, params = self._where()
        conn = self.schema.connection()
        cur = self.schema.db.execute(
            conn, f"SELECT COUNT(*) FROM {self.full_table_name}{where}", params
        )
        return int(cur.fetchone()[0])

    def _select(self, names: Iterable[str]) -> list[dict[str, Any]]:
        db = self.schema.db
        names = list(names)
        where, params = self._where()
        order = ", ".join(db.quote(n) for n in self.primary_key)
        cur = db.execute(
            self.schema.connection(),
            f"SELECT {', '.join(db.quote(n) for n in names)} "
            f"FROM {self.full_table_name}{where} ORDER BY {order}",
            params,
        )
        return [
            {n: self.heading[n].decode(v, db.dialect) for n, v in zip(names, row)}
            for row in cur.fetchall()
        ]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Every row, ordered by primary key; object fields as ObjectRef."""
        rows = self._select(self.heading.names)
        for row in rows:
            for name in self.heading.object_fields:
                if row[name] is not None:
                    row[name] = ObjectRef(row[name], self.schema.config)
        return rows

    def fetch1(self) -> dict[str, Any]:
        rows = self.to_dicts()
        if len(rows) != 1:
            raise MissingRowError(
                f"fetch1 needs exactly one row of {self.table_name}, found {len(rows)}"
            )
        return rows[0]

    def keys(self) -> list[dict[str, Any]]:
        return self._select(self.primary_key)

    # Writing.

    def insert1(self, row: Mapping[str, Any], skip_duplicates: bool = False) -> None:
        self.insert([row], skip_duplicates=skip_duplicates)

    def insert(
        self, rows: Iterable[Mapping[str, Any]], skip_duplicates: bool = False
    ) -> None:
        """Insert rows in one transaction: all of them or, on error, none."""
        db = self.schema.db
        conn = self.schema.connection()
        with db.transaction(conn):
            for row in rows:
                try:
                    self._insert_row(conn, row)
                except DuplicateError:
                    if not skip_duplicates:
                        raise

    def _insert_row(
        self, conn: Any, row: Mapping[str, Any], objects: Mapping[str, Any] = {}
    ) -> None:
        """INSERT one row; ``objects`` holds metadata of staged object fields."""
        db = self.schema.db
        if not isinstance(row, Mapping):
            raise DataError(
                f"rows of {self.table_name} are dicts, got {type(row).__name__}"
            )
        unknown = sorted(set(row) - set(self.heading.names))
        if unknown:
            raise DataError(
                f"{self.table_name} has no attribute {', '.join(map(repr, unknown))}; "
                f"its attributes are {', '.join(self.heading.names)}"
            )
        names, values = [], []
        for attr in self.heading.attributes:
            if attr.type.is_object and attr.name in objects:
                value = objects[attr.name]
            elif attr.name in row:
                value = row[attr.name]
                if attr.type.is_object and value is not None:
                    raise StagingError(
                        f"object field {attr.name!r} of {self.table_name} is written "
                        "with staged_insert1, not given as a value"
                    )
            elif attr.default is NO_DEFAULT and not attr.nullable:
                kind = "primary-key attribute" if attr.in_key else "attribute"
                raise DataError(
                    f"{self.table_name}: {kind} {attr.name!r} has no value and "
                    "no default"
                )
            else:
                continue
            names.append(db.quote(attr.name))
            values.append(attr.encode(value, db.dialect))
        try:
            db.execute(
                conn,
                f"INSERT INTO {self.full_table_name} ({', '.join(names)}) "
                f"VALUES ({', '.join([db.param] * len(names))})",
                values,
            )
        except Exception as e:
            if db.is_duplicate(e):
                key = {k: row.get(k) for k in self.primary_key}
                raise DuplicateError(
                    f"duplicate entry: {self.table_name} already has a row with "
                    f"primary key {key}"
                ) from e
            raise

    def delete(self) -> int:
        """Delete the restricted rows and, crash-safely, their objects.

        The daemon logs the objects first; the rows go in one transaction
        with a decision record, and the daemon deletes the objects only once
        that record is committed. A crash before the commit keeps rows and
        objects; a crash after it still loses the objects. Returns the
        number of rows deleted.
        """
        from stagerd_client.staged import daemon_link, request_fields

        db = self.schema.db
        conn = self.schema.connection()
        deleted = 0
        keys = self.keys()
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = self & keys[start : start + _DELETE_BATCH]
            link, intent = None, None
            try:
                with db.transaction(conn):
                    rows = batch._select(
                        (*self.primary_key, *self.heading.object_fields)
                    )
                    objects = [
                        {"store": row[f]["store"], "path": row[f]["path"]}
                        for row in rows
                        for f in self.heading.object_fields
                        if row[f] is not None
                    ]
                    if objects:
                        link = daemon_link(self.schema.config)
                        intent = link.request(
                            "delete", **request_fields(self), objects=objects
                        )["intent"]
                        link.intents.add(intent)
                    by_key = self & [{k: r[k] for k in self.primary_key} for r in rows]
                    where, params = by_key._where()
                    cur = db.execute(
                        conn, f"DELETE FROM {self.full_table_name}{where}", params
                    )
                    deleted += cur.rowcount
                    if intent is not None:
                        ledger.record(
                            db, conn, self.schema.name, intent, ledger.COMMITTED,
                            self.table_name,
                        )
            except BaseException:
                # Rolled back: the daemon fences the intent and keeps the objects.
                if link is not None and intent is not None:
                    link.finish("abort", intent)
                raise
            if link is not None and intent is not None:
                link.finish("commit", intent)
        return deleted

    @property
    def staged_insert1(self) -> Any:
        """``with Table.staged_insert1 as staged:`` (see StagedInsert)."""
        from stagerd_client.staged import StagedInsert

        return StagedInsert(self)


class Manual(Table):
    """A table whose rows are entered by people or acquisition scripts."""


class Lookup(Table):
    """A table of fixed reference rows, listed in ``contents``."""

    contents: list[Mapping[str, Any]] = []
