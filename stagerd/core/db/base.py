"""The interface every database backend implements."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from stagerd.core import faults


class Database:
    """One database server or file, as named by a URL.

    Subclasses set ``dialect`` and ``param`` and implement the methods that
    raise NotImplementedError here.
    """

    dialect: str = ""
    param: str = "?"

    def connect(self) -> Any:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        """What names this database without secrets, to compare two configs."""
        raise NotImplementedError

    def quote(self, name: str) -> str:
        raise NotImplementedError

    def table(self, schema: str, table: str) -> str:
        """The quoted, schema-qualified name of a table."""
        raise NotImplementedError

    def create_schema(self, conn: Any, schema: str) -> None:
        raise NotImplementedError

    def table_exists(self, conn: Any, schema: str, table: str) -> bool:
        raise NotImplementedError

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text at ``key`` of the JSON in ``column`` (quoted)."""
        raise NotImplementedError

    def is_duplicate(self, error: BaseException) -> bool:
        raise NotImplementedError

    def execute(self, conn: Any, sql: str, params: Any = ()) -> Any:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        """BEGIN ... COMMIT, rolled back when the block raises."""
        self.begin(conn)
        try:
            yield conn
        except BaseException:
            self.rollback(conn)
            raise
        self.commit(conn)

    def commit(self, conn: Any) -> None:
        """COMMIT; OutcomeUnknown if the connection broke during it."""
        faults.point("db.commit")
        conn.commit()

    def begin(self, conn: Any) -> None:
        raise NotImplementedError

    def revive(self, conn: Any) -> None:
        """Reconnect a connection the server dropped; local files never drop."""

    def rollback(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.rollback()

    # Catalogue reads, for checks that must write nothing (stagerd verify).

    def connect_readonly(self) -> Any:
        """A connection through which the database cannot be changed."""
        raise NotImplementedError

    def schemas(self, conn: Any) -> list[str]:
        """Every schema holding at least one table, sorted."""
        raise NotImplementedError

    def tables(self, conn: Any, schema: str) -> list[str]:
        """The names of a schema's tables, sorted."""
        raise NotImplementedError

    def primary_key(self, conn: Any, schema: str, table: str) -> list[str]:
        """A table's primary-key columns, in key order."""
        raise NotImplementedError
