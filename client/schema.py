"""Schemas: a named group of tables in one database.

``@schema`` declares a table class (creating the table if it is missing)
and returns a ready table object, so ``Session.insert1(...)``,
``Session & key`` and ``Session.staged_insert1`` work on the name the class
was given. Connections are opened lazily, one per thread and process, so a
forked child or a worker thread never shares a connection.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, TypeVar

from stagerd.core import layout, ledger
from stagerd.core.db import Database
from stagerd.core.db import connect as connect_db
from stagerd.core.errors import DefinitionError
from stagerd_client.declare import parse_definition
from stagerd_client.settings import ClientConfig, config as default_config

__all__ = ["Schema"]

T = TypeVar("T")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Schema:
    """A schema (a MySQL database, or a name prefix in SQLite)."""

    def __init__(self, name: str, config: ClientConfig | None = None) -> None:
        self.name = layout.check_ident("schema name", name)
        self.config = config or default_config
        self._db: Database | None = None
        self._local = threading.local()
        self._ready = False

    def __repr__(self) -> str:
        return f"Schema({self.name!r})"

    @property
    def db(self) -> Database:
        url = self.config.database_url
        if self._db is None or self._url != url:
            self._db = connect_db(url, self.config.database_password_file)
            self._url = url
            self._ready = False
        return self._db

    def connection(self) -> Any:
        """This thread's connection, opened on first use."""
        db = self.db
        local = self._local
        if getattr(local, "key", None) != (os.getpid(), self._url):
            local.conn = db.connect()
            local.key = (os.getpid(), self._url)
        else:
            db.revive(local.conn)
        if not self._ready:
            db.create_schema(local.conn, self.name)
            ledger.ensure(db, local.conn, self.name)
            self._ready = True
        return local.conn

    def __call__(self, cls: type[T]) -> T:
        """Declare ``cls`` and return its table object."""
        from stagerd_client.table import Lookup, Table

        if not (isinstance(cls, type) and issubclass(cls, Table)):
            raise DefinitionError(
                f"@schema decorates a subclass of Manual or Lookup, got {cls!r}"
            )
        definition = getattr(cls, "definition", None)
        if not isinstance(definition, str):
            raise DefinitionError(f"{cls.__name__} needs a 'definition' string")
        try:
            heading = parse_definition(definition)
        except DefinitionError as e:
            raise DefinitionError(f"{cls.__name__}: {e}") from e

        prefix = "#" if issubclass(cls, Lookup) else ""
        cls.schema = self
        cls.heading = heading
        cls.table_name = prefix + _snake(cls.__name__)
        table = cls()
        table.declare()
        contents = getattr(cls, "contents", None)
        if contents:
            table.insert(contents, skip_duplicates=True)
        return table  # type: ignore[return-value]
