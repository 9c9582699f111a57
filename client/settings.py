"""The client's configuration: the shared config file plus code overrides.

``stagerd_client.config`` reads the same file as the daemon on first use;
assignments override it for this process, like ``dj.config``::

    stagerd_client.config["stores.raw.url"] = "file:///data/raw"
"""

from __future__ import annotations

import os
from typing import Any

from stagerd.core import config as config_mod
from stagerd.core.config import Config

__all__ = ["ClientConfig", "config"]


class ClientConfig(Config):
    """A Config that loads itself on first use and can be reloaded."""

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None
        self.source = None
        self.searched = []

    @property  # type: ignore[override]
    def values(self) -> dict[str, Any]:
        if self._values is None:
            self.load()
        assert self._values is not None
        return self._values

    @values.setter
    def values(self, values: dict[str, Any]) -> None:
        self._values = values

    def load(self, path: str | os.PathLike | None = None) -> ClientConfig:
        """(Re)read the config file, dropping overrides made in code."""
        fresh = config_mod.load(path)
        self._values, self.source, self.searched = (
            fresh.values, fresh.source, fresh.searched
        )
        return self


config = ClientConfig()
