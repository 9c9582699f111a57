"""Database backends behind one small interface.

A :class:`Database` knows its dialect: how to quote names, which parameter
marker to use, how a schema's tables are named, how to open a connection
and how to recognise a duplicate-key error. Both the client's table layer
and the daemon's ledger work through it.
"""

from __future__ import annotations

from stagerd.core.db.base import Database
from stagerd.core.errors import ConfigError

__all__ = ["Database", "connect"]


def connect(url: str, password_file: str | None = None) -> Database:
    """The database a ``[database] url`` names."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from stagerd.core.db.sqlite import SQLiteDatabase

        return SQLiteDatabase(url)
    if scheme in ("mysql", "mariadb"):
        from stagerd.core.db.mysql import MySQLDatabase

        return MySQLDatabase(url, password_file)
    # The URL may hold a password: name the scheme only.
    raise ConfigError(
        f"database url must start with sqlite:// or mysql://, got {scheme}://..."
    )
