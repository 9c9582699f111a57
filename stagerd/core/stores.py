"""Object stores: fsspec filesystems rooted at a configured URL.

Everything here speaks in paths relative to the store root, the paths the
layout module makes. A store describes an object (one listing gives its
size, file count and manifest) and deletes one (idempotently, then prunes
the empty folders a local store would otherwise keep forever).
"""

from __future__ import annotations

import datetime
import logging
import posixpath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from stagerd.core.config import StoreConfig
from stagerd.core.errors import ConfigError, StoreError

__all__ = ["Store", "describe_listing"]

log = logging.getLogger(__name__)


def describe_listing(
    listing: dict[str, dict[str, Any]], full: str
) -> tuple[int, int, bool, dict[str, int]]:
    """Size, item count, is_dir and manifest from one ``find`` listing.

    The manifest maps each file's path relative to the object to its size;
    a single-file object has one entry, the empty path.
    """
    full = full.rstrip("/")
    if list(listing) == [full] and listing[full].get("type") != "directory":
        size = int(listing[full]["size"])
        return size, 1, False, {"": size}
    manifest = {
        name[len(full) + 1 :]: int(info.get("size") or 0)
        for name, info in sorted(listing.items())
        if info.get("type") != "directory"
    }
    return sum(manifest.values()), len(manifest), True, manifest


class Store:
    """One named store from the configuration."""

    def __init__(self, config: StoreConfig) -> None:
        self.name = config.name
        self.url = config.url
        try:
            protocol = fsspec.core.split_protocol(config.url)[0] or "file"
            options = dict(config.options)
            if protocol in ("file", "local"):
                # zarr writes nested chunk folders; a local store makes them.
                options.setdefault("auto_mkdir", True)
            self.fs, root = fsspec.core.url_to_fs(config.url, **options)
        except (ValueError, ImportError, TypeError) as e:
            raise ConfigError(
                f"store {config.name!r} with url {config.url!r}: {e}"
            ) from e
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.name!r}, {self.url!r})"

    def full(self, rel: str) -> str:
        """The filesystem path of ``rel``, refusing anything that escapes."""
        norm = posixpath.normpath(rel)
        if rel.startswith("/") or norm != rel or norm.startswith(".."):
            raise StoreError(f"path {rel!r} is not a clean path inside store "
                             f"{self.name!r}")
        return f"{self.root}/{rel}"

    def mapper(self, rel: str) -> fsspec.FSMap:
        return self.fs.get_mapper(self.full(rel))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any) -> Any:
        return self.fs.open(self.full(rel), mode, **kwargs)

    def describe(self, rel: str, ext: str) -> dict[str, Any] | None:
        """The row metadata of the object at ``rel``; None if nothing is there."""
        full = self.full(rel)
        try:
            listing = self.fs.find(full, detail=True, withdirs=False)
        except FileNotFoundError:
            listing = {}
        except OSError as e:
            raise StoreError(f"store {self.name!r}: cannot list {rel}: {e}") from e
        if not listing:
            return None
        size, count, is_dir, manifest = describe_listing(listing, full)
        return {
            "path": rel,
            "store": self.name,
            "size": size,
            "ext": ext,
            "is_dir": is_dir,
            "item_count": count,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "manifest": manifest,
        }

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.full(rel)))

    def delete(self, rel: str) -> None:
        """Delete the object at ``rel``; nothing there is success too."""
        full = self.full(rel)
        try:
            if self.fs.exists(full):
                self.fs.rm(full, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(
                f"store {self.name!r}: cannot delete {rel}: {e}"
            ) from e
        # Caches would report the object as present on the next listing.
        self.fs.invalidate_cache(full)
        if self.fs.exists(full):
            raise StoreError(f"store {self.name!r}: {rel} still exists after rm")
        if self.is_local:
            self._prune(rel)

    def _prune(self, rel: str) -> None:
        """Remove the object's now-empty parent folders up to ``_schema``.

        TODO(prune-race): a client that has just made the same key folder
        for a new attempt (auto_mkdir) and not yet created its file can
        lose the folder here and see FileNotFoundError on open.
        """
        parent = posixpath.dirname(rel)
        while parent and parent != "_schema":
            try:
                self.fs.rmdir(self.full(parent))
            except OSError:
                return  # not empty, or already gone: stop climbing
            log.debug("pruned empty folder store=%s path=%s", self.name, parent)
            parent = posixpath.dirname(parent)
