"""Handles for reading stored objects back."""

from __future__ import annotations

import datetime
from typing import Any

import fsspec

from stagerd.core.config import Config
from stagerd.core.errors import IntegrityError, StagingError
from stagerd.core.stores import Store, compare_manifest, describe_listing

__all__ = ["ObjectRef", "open_store"]

_stores: dict[tuple[str, str], Store] = {}


def open_store(config: Config, name: str) -> Store:
    """The client's Store for ``name``, made once per URL."""
    cfg = config.store(name)
    key = (cfg.name, cfg.url)
    if key not in _stores:
        _stores[key] = Store(cfg)
    return _stores[key]


class ObjectRef:
    """An object field of a fetched row.

    Attributes mirror the metadata in the row: ``path`` (inside the store),
    ``store``, ``size``, ``ext``, ``is_dir``, ``item_count``, ``timestamp``
    and ``manifest`` (each file's path relative to the object, and its size;
    a single-file object has the one entry ``""``).
    """

    def __init__(self, meta: dict[str, Any], config: Config) -> None:
        self.meta = meta
        self.path: str = meta["path"]
        self.store: str = meta["store"]
        self.size: int = meta["size"]
        self.ext: str = meta.get("ext", "")
        self.is_dir: bool = meta["is_dir"]
        self.item_count: int = meta["item_count"]
        self.timestamp = datetime.datetime.fromisoformat(meta["timestamp"])
        self.manifest: dict[str, int] = meta.get("manifest", {})
        self._config = config

    def __repr__(self) -> str:
        kind = f"folder of {self.item_count} files" if self.is_dir else "file"
        return f"<ObjectRef {self.store}:{self.path} ({kind}, {self.size} bytes)>"

    @property
    def _store(self) -> Store:
        return open_store(self._config, self.store)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._store.fs

    @property
    def full_path(self) -> str:
        return self._store.full(self.path)

    @property
    def fsmap(self) -> fsspec.FSMap:
        """A mapping over the object, for ``zarr.open(ref.fsmap, mode="r")``."""
        return self._store.mapper(self.path)

    def open(self, subpath: str = "", mode: str = "rb") -> Any:
        """Open the object (a file) or one file inside it (a folder)."""
        if "w" in mode or "a" in mode or "+" in mode:
            raise StagingError(f"objects are read-only once committed; mode {mode!r}")
        if self.is_dir and not subpath:
            raise StagingError(
                f"{self.path} is a folder of {self.item_count} files; name one, "
                "e.g. ref.open('zarr.json'), or use ref.fsmap"
            )
        rel = f"{self.path}/{subpath}" if subpath else self.path
        return self._store.open(rel, mode)

    def read(self, subpath: str = "") -> bytes:
        with self.open(subpath) as f:
            return f.read()

    def verify(self) -> bool:
        """Check the stored files against the manifest; True or IntegrityError.

        One listing of the object; every difference (missing, unexpected or
        resized file) is named in the error.
        """
        listing = self._store.find(self.path)
        found = describe_listing(listing, self.full_path)[3] if listing else {}
        problems = []
        for kind, rel in compare_manifest(self.manifest, found):
            name = repr(rel or self.path)
            if kind == "missing_file":
                problems.append(f"missing {name} ({self.manifest[rel]} bytes)")
            elif kind == "size_mismatch":
                problems.append(
                    f"{name} has {found[rel]} bytes, expected {self.manifest[rel]}"
                )
            else:
                problems.append(f"unexpected file {rel!r}")
        if problems:
            raise IntegrityError(
                f"object {self.store}:{self.path} does not match its manifest: "
                + "; ".join(problems)
            )
        return True
