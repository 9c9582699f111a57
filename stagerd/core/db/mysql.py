"""MySQL and MariaDB through pymysql, the production database.

A schema is a MySQL database; tables use InnoDB, so a row and its decision
record commit in one transaction. Connections run in autocommit mode and
open transactions explicitly, so a read outside a transaction always sees
the latest commits instead of an old snapshot.

The password comes from the URL, else ``$STAGERD_DB_PASSWORD``, else the
file named by ``[database] password_file``, which must be readable by its
owner only. It never appears in :attr:`identity`, errors or logs.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path
from typing import Any

import pymysql

from stagerd.core.db.base import Database
from stagerd.core.errors import ConfigError, DatabaseUnavailable, OutcomeUnknown

__all__ = ["MySQLDatabase", "PASSWORD_ENV"]

PASSWORD_ENV = "STAGERD_DB_PASSWORD"
_DUPLICATE_KEY = 1062
# Client-side codes for a connection that broke mid-request.
_CONNECTION_LOST = {2006, 2013, 2055}


def _read_password_file(path: str) -> str:
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"database.password_file {p} is readable by others (mode "
                f"{stat.filemode(mode)}); chmod 600 it"
            )
        return p.read_text().rstrip("\n")
    except OSError as e:
        raise ConfigError(f"database.password_file {p}: {e.strerror}") from e


class MySQLDatabase(Database):
    dialect = "mysql"
    param = "%s"

    def __init__(self, url: str, password_file: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise ConfigError(
                f"database url must be mysql://user[:password]@host[:port], got "
                f"{parts.scheme}://{parts.hostname or ''}"
            )
        self.host = parts.hostname
        self.port = parts.port or 3306
        self.user = urllib.parse.unquote(parts.username or "root")
        if parts.password is not None:
            self._password = urllib.parse.unquote(parts.password)
        elif os.environ.get(PASSWORD_ENV) is not None:
            self._password = os.environ[PASSWORD_ENV]
        elif password_file:
            self._password = _read_password_file(password_file)
        else:
            self._password = ""

    @property
    def identity(self) -> str:
        # The server, not the account: daemon and clients may log in as
        # different users of the one server.
        return f"mysql://{self.host}:{self.port}"

    def connect(self) -> Any:
        try:
            return pymysql.connect(
                host=self.host, port=self.port, user=self.user,
                password=self._password, charset="utf8mb4", autocommit=True,
                connect_timeout=5, read_timeout=60, write_timeout=60,
            )
        except pymysql.err.OperationalError as e:
            raise DatabaseUnavailable(
                f"cannot connect to {self.identity} as {self.user!r}: {e.args[-1]}"
            ) from e

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def table(self, schema: str, table: str) -> str:
        return f"{self.quote(schema)}.{self.quote(table)}"

    def create_schema(self, conn: Any, schema: str) -> None:
        self.execute(
            conn,
            f"CREATE DATABASE IF NOT EXISTS {self.quote(schema)} "
            "CHARACTER SET utf8mb4",
        )

    def table_exists(self, conn: Any, schema: str, table: str) -> bool:
        cur = self.execute(
            conn,
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        )
        return cur.fetchone() is not None

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text at ``key`` of the JSON in ``column`` (quoted)."""
        return f"JSON_UNQUOTE(JSON_EXTRACT({column}, '$.{key}'))"

    def is_duplicate(self, error: BaseException) -> bool:
        return (
            isinstance(error, pymysql.err.IntegrityError)
            and bool(error.args)
            and error.args[0] == _DUPLICATE_KEY
        )

    def revive(self, conn: Any) -> None:
        try:
            conn.ping(reconnect=False)
            return
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
            pass  # dropped by a server restart or a timeout: reconnect
        try:
            conn.connect()
        except pymysql.err.OperationalError as e:
            raise DatabaseUnavailable(
                f"lost {self.identity} and cannot reconnect: {e.args[-1]}"
            ) from e

    def begin(self, conn: Any) -> None:
        self.revive(conn)
        conn.begin()

    def commit(self, conn: Any) -> None:
        try:
            super().commit(conn)
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as e:
            code = e.args[0] if e.args else None
            if isinstance(e, pymysql.err.InterfaceError) or code in _CONNECTION_LOST:
                raise OutcomeUnknown(
                    f"the connection to {self.identity} broke during COMMIT: {e}"
                ) from e
            raise

    # Databases the server keeps for itself, never a stagerd schema.
    _SYSTEM = ("mysql", "information_schema", "performance_schema", "sys")

    def connect_readonly(self) -> Any:
        conn = self.connect()
        # The server then refuses every write on this session, whatever the
        # account's grants.
        self.execute(conn, "SET SESSION TRANSACTION READ ONLY")
        return conn

    def schemas(self, conn: Any) -> list[str]:
        cur = self.execute(
            conn,
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            f"WHERE table_schema NOT IN ({', '.join(['%s'] * len(self._SYSTEM))}) "
            "ORDER BY table_schema",
            self._SYSTEM,
        )
        return [str(r[0]) for r in cur.fetchall()]

    def tables(self, conn: Any, schema: str) -> list[str]:
        cur = self.execute(
            conn,
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = %s AND table_type = 'BASE TABLE' "
            "ORDER BY table_name",
            (schema,),
        )
        return [str(r[0]) for r in cur.fetchall()]

    def primary_key(self, conn: Any, schema: str, table: str) -> list[str]:
        cur = self.execute(
            conn,
            "SELECT column_name FROM information_schema.key_column_usage "
            "WHERE table_schema = %s AND table_name = %s "
            "AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
            (schema, table),
        )
        return [str(r[0]) for r in cur.fetchall()]
