"""SQLite, the embedded default database.

Every schema lives in the one database file; a table is named
``"{schema}.{table}"`` (quoted, so ``select * from "lab.session"`` reads it
in the sqlite3 shell). Attached files would give each schema its own file,
but SQLite in WAL mode does not commit a transaction atomically across
attached files, and the row and its decision record must commit together.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from stagerd.core.db.base import Database
from stagerd.core.errors import ConfigError

__all__ = ["SQLiteDatabase"]

# Writers wait this long for each other rather than failing with "locked".
BUSY_TIMEOUT_S = 30.0


class SQLiteDatabase(Database):
    dialect = "sqlite"
    param = "?"

    def __init__(self, url: str) -> None:
        prefix = "sqlite:///"
        if not url.startswith(prefix) or url == prefix:
            raise ConfigError(
                "database url for SQLite must be sqlite:///relative/path.db or "
                f"sqlite:////absolute/path.db, got {url!r}"
            )
        self.path = Path(url[len(prefix):]).expanduser().resolve()

    @property
    def identity(self) -> str:
        return f"sqlite:///{self.path}"

    def connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open SQLite database {self.path}: {e}") from e
        conn.execute("PRAGMA journal_mode=WAL")
        # An acknowledged insert must survive a power cut.
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def table(self, schema: str, table: str) -> str:
        return self.quote(f"{schema}.{table}")

    def create_schema(self, conn: Any, schema: str) -> None:
        """Schemas are name prefixes in one file: nothing to create."""

    def table_exists(self, conn: Any, schema: str, table: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
            (f"{schema}.{table}",),
        ).fetchone()
        return row is not None

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text at ``key`` of the JSON in ``column`` (quoted)."""
        return f"json_extract({column}, '$.{key}')"

    def is_duplicate(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError) and (
            "UNIQUE" in str(error) or "PRIMARY KEY" in str(error)
        )

    def begin(self, conn: Any) -> None:
        # IMMEDIATE takes the write lock now, so a busy database makes the
        # transaction wait here instead of failing at COMMIT.
        conn.execute("BEGIN IMMEDIATE")

    def rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def connect_readonly(self) -> sqlite3.Connection:
        # mode=ro neither creates a missing file nor changes the journal
        # mode; it may leave empty -wal and -shm files, as any reader does.
        if not self.path.is_file():
            raise ConfigError(f"SQLite database {self.path} does not exist")
        try:
            return sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                isolation_level=None, check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open SQLite database {self.path}: {e}") from e

    def schemas(self, conn: Any) -> list[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND instr(name, '.')"
        ).fetchall()
        return sorted({name.split(".", 1)[0] for (name,) in rows})

    def tables(self, conn: Any, schema: str) -> list[str]:
        prefix = f"{schema}."
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' "
            "AND substr(name, 1, ?) = ?",
            (len(prefix), prefix),
        ).fetchall()
        return sorted(name[len(prefix):] for (name,) in rows)

    def primary_key(self, conn: Any, schema: str, table: str) -> list[str]:
        # table_info's sixth column is the 1-based position in the key, 0 if none.
        rows = conn.execute(f"PRAGMA table_info({self.table(schema, table)})")
        return [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
