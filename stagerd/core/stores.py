"""Object stores: fsspec filesystems rooted at a configured URL.

Everything here speaks in paths relative to the store root, the paths the
layout module makes. A store describes an object (one listing gives its
size, file count and manifest) and deletes one (idempotently, then prunes
the empty folders a local store would otherwise keep forever).

Object stores such as S3 (s3fs) differ from a local folder in three ways
this module hides:

* Listings are cached per filesystem instance, and other instances (zarr
  makes its own async copy of the filesystem, other processes write too)
  change the store behind that cache. Every call that asks whether or what
  is there drops the cached listings of its path first.
* Their files cannot seek while writing, and h5py must. ``open`` for
  writing returns a local spool file that is uploaded on close.
* Their client libraries raise their own connection errors (botocore,
  aiohttp), which are not ``OSError``. Each comes out as ``StoreError``,
  which the daemon treats as "retry later".
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import posixpath
import sys
import tempfile
from typing import Any, Callable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from stagerd.core import faults
from stagerd.core.config import StoreConfig
from stagerd.core.errors import ConfigError, StoreError

__all__ = [
    "Store", "SpoolFile", "compare_manifest", "describe_listing", "store_errors",
]

log = logging.getLogger(__name__)

# Client-library errors that are not OSError, by module. They are only
# looked up once their module is loaded, so a local store loads none.
_CLIENT_ERRORS = {
    "botocore.exceptions": ("BotoCoreError", "ClientError"),
    "aiohttp": ("ClientError",),
}


def store_errors() -> tuple[type[BaseException], ...]:
    """What a store operation can raise when the store (not the caller) failed.

    s3fs passes botocore's connection errors (``EndpointConnectionError``,
    ``ConnectTimeoutError``...) through untranslated; they derive from
    ``BotoCoreError``, not ``OSError``.
    """
    errors: list[type[BaseException]] = [OSError]
    for module_name, names in _CLIENT_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            errors.extend(getattr(module, name) for name in names
                          if hasattr(module, name))
    return tuple(errors)


def _fsync(path: str, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def compare_manifest(
    manifest: dict[str, int], found: dict[str, int]
) -> list[tuple[str, str]]:
    """How the files found differ from a manifest, as (kind, relative path).

    Kinds: ``missing_file`` and ``size_mismatch`` for entries of the
    manifest, ``unexpected_file`` for a file it does not list; each sorted.
    """
    differences = []
    for rel, size in sorted(manifest.items()):
        if rel not in found:
            differences.append(("missing_file", rel))
        elif found[rel] != size:
            differences.append(("size_mismatch", rel))
    extra = sorted(set(found) - set(manifest))
    differences += [("unexpected_file", rel) for rel in extra]
    return differences


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
        # "." is clean but names the store root: delete(".") would empty it.
        # fsspec's rm and find treat *, ? and [ as wildcards: never pass one.
        if (rel.startswith("/") or norm != rel or norm.startswith("..")
                or norm == "." or any(c in rel for c in "*?[")):
            raise StoreError(f"path {rel!r} is not a clean path inside store "
                             f"{self.name!r}")
        return f"{self.root}/{rel}"

    def _forget(self, full: str) -> None:
        """Drop cached listings of ``full`` and its parents.

        s3fs answers ``exists``/``info`` from its listings cache (the path's
        own entry or its parent's) when it has one, and zarr, other Store
        instances and other processes write behind it.
        """
        self.fs.invalidate_cache(full)

    def failure(self, what: str, rel: str, e: BaseException) -> StoreError:
        """The StoreError for a failed ``what`` at ``rel``, naming the store."""
        return StoreError(f"store {self.name!r} ({self.url}): cannot {what} "
                          f"{rel}: {type(e).__name__}: {e}")

    def mapper(self, rel: str) -> fsspec.FSMap:
        return self.fs.get_mapper(self.full(rel))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any) -> Any:
        """A file at ``rel``; on a non-local store, writing goes to a spool.

        Files of object stores cannot seek while writing, and h5py seeks.
        So a mode that writes (``w``, ``x``, ``a``, ``+``) on a non-local
        store returns a ``SpoolFile``: a local temporary file, uploaded to
        ``rel`` when it is closed. That costs a local copy the size of the
        object in the temp dir (``$TMPDIR``) until close, and the upload
        time at close; nothing reaches the store before. Read modes, and
        every mode on a local store, open the file itself.
        """
        full = self.full(rel)
        if self.is_local:
            return self.fs.open(full, mode, **kwargs)
        if not any(c in mode for c in "wxa+"):
            self._forget(full)
            try:
                return self.fs.open(full, mode, **kwargs)
            except FileNotFoundError:
                raise  # an answer about the path, not a failure of the store
            except store_errors() as e:
                raise self.failure("open", rel, e) from e
        text = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline")
                if k in kwargs}
        if kwargs:
            raise TypeError(f"store {self.name!r}: open({mode!r}) of a spooled "
                            f"file takes no {', '.join(sorted(kwargs))}")
        spool = SpoolFile(self, rel, mode)
        if "b" in mode:
            return spool
        return _SpoolText(spool, **text)

    def sync(self, rel: str) -> None:
        """Make the object at ``rel`` survive a power cut, before its commit.

        On a local store (a disk or a mounted NAS) written files may still
        sit in the page cache: fsync each file, then each folder from the
        object up to the store root, so new names are durable too. Other
        stores hold an object once its upload was acknowledged: nothing to do.
        """
        top = self.full(rel)
        if not self.is_local or not os.path.exists(top):
            return  # nothing written is the caller's to report
        try:
            folders = set()
            for folder, _, names in os.walk(top):
                folders.add(folder)
                for name in names:
                    _fsync(os.path.join(folder, name))
            if os.path.isfile(top):
                _fsync(top)
            parent = os.path.dirname(top)
            while parent.startswith(self.root):
                folders.add(parent)
                parent = os.path.dirname(parent)
            for folder in folders:
                _fsync(folder, os.O_DIRECTORY)
        except OSError as e:
            raise self.failure("sync", rel, e) from e

    def find(self, rel: str) -> dict[str, dict[str, Any]]:
        """Every file under ``rel`` (or ``rel`` itself), by full path, fresh.

        One listing, paginated by the store, past any cached one; nothing
        there is an empty dict, a failing store a StoreError.
        """
        full = self.full(rel)
        try:
            self._forget(full)
            listing = self.fs.find(full, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        except store_errors() as e:
            raise self.failure("list", rel, e) from e
        # s3fs's find falls back to info() when its listing is empty, and
        # info() may name the path a directory: without files, nothing is
        # there either.
        return {name: info for name, info in listing.items()
                if info.get("type") != "directory"}

    def describe(self, rel: str, ext: str) -> dict[str, Any] | None:
        """The row metadata of the object at ``rel``; None if nothing is there.

        One listing of everything under ``rel`` (paginated by the store), not
        a request per file; on S3 a single file costs one more HEAD request.
        """
        full = self.full(rel)
        listing = self.find(rel)
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
        full = self.full(rel)
        try:
            self._forget(full)
            return bool(self.fs.exists(full))
        except store_errors() as e:
            raise self.failure("check", rel, e) from e

    def delete(self, rel: str, prune: bool = True) -> None:
        """Delete the object at ``rel``, file or folder; nothing there is success.

        Raises StoreError if the store fails or the object is still there
        afterwards; calling again finishes a deletion that stopped halfway.
        With ``prune`` the empty folders above it go too (see :meth:`prune`).
        """
        full = self.full(rel)
        faults.point("store.delete")
        try:
            self._forget(full)
            # On S3, s3fs's rm(recursive=True) lists the prefix once and sends
            # DeleteObjects requests of up to 1000 keys each (S3FileSystem._rm
            # and _bulk_delete in s3fs 2026.9). It ignores the per-key errors
            # in their replies, so only the check below notices keys left.
            self.fs.rm(full, recursive=True)
        except FileNotFoundError:
            pass
        except store_errors() as e:
            raise self.failure("delete", rel, e) from e
        if self.exists(rel):
            raise StoreError(f"store {self.name!r} ({self.url}): {rel} still "
                             "exists after deleting it")
        log.debug("deleted store=%s path=%s", self.name, rel)
        if prune:
            self.prune(rel)

    def prune(self, rel: str, keep: Callable[[str], bool] = lambda _: False) -> None:
        """Remove the deleted object's empty parent folders up to ``_schema``.

        Stops at the first folder that is not empty or for which ``keep``
        (given the folder's store-relative path) is true: the daemon keeps
        the folders of objects it has handed out and not yet seen written.
        Only local stores have folders to prune.
        """
        if not self.is_local:
            return
        parent = posixpath.dirname(rel)
        while parent and parent != "_schema" and not keep(parent):
            try:
                self.fs.rmdir(self.full(parent))
            except OSError:
                return  # not empty, or already gone: stop climbing
            log.debug("pruned empty folder store=%s path=%s", self.name, parent)
            parent = posixpath.dirname(parent)


class SpoolFile(io.BufferedRandom):
    """A local temporary file that becomes the store's file at ``rel`` on close.

    Readable, writable and seekable, as h5py needs, whatever the write mode.
    ``close()`` uploads it with the filesystem's ``put_file`` (a multipart
    upload on S3 for large files) and removes the local copy, also when the
    upload fails; that failure raises StoreError naming the store and path.
    An exception that leaves a ``with`` block discards the data instead of
    uploading it: the staged insert around it aborts anyway, and a Ctrl+C
    should not wait for an upload. A spool still open at interpreter exit
    is discarded too. The local copy lives in the temp dir (``$TMPDIR``)
    and is as large as the object.
    """

    _ready = False  # until the buffer exists; __del__ runs after a failed init

    def __init__(self, store: Store, rel: str, mode: str) -> None:
        self.store = store
        self.rel = rel
        self.path = store.full(rel)
        fd, self.local_path = tempfile.mkstemp(prefix="stagerd-spool-")
        try:
            os.close(fd)
            if "x" in mode and store.exists(rel):
                raise FileExistsError(f"store {store.name!r}: {rel} exists")
            if "a" in mode or "r" in mode:
                self._fetch(mode)
            raw = io.FileIO(self.local_path, "a+" if "a" in mode else "r+")
            super().__init__(raw)
            self._ready = True
        except BaseException:
            os.unlink(self.local_path)
            raise

    def _fetch(self, mode: str) -> None:
        """Start from the stored file, for appending or updating in place."""
        try:
            self.store.fs.get_file(self.path, self.local_path)
        except FileNotFoundError:
            if "r" in mode:
                raise
        except store_errors() as e:
            raise self.store.failure("fetch", self.rel, e) from e

    def __repr__(self) -> str:
        return f"<SpoolFile {self.store.name}:{self.rel} at {self.local_path}>"

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
            self.store.fs.put_file(self.local_path, self.path)
        except store_errors() as e:
            raise self.store.failure("upload", self.rel, e) from e
        finally:
            self._unlink()

    def discard(self) -> None:
        """Close without uploading; the store keeps whatever it had."""
        if not self.closed:
            try:
                super().close()
            finally:
                self._unlink()

    def _unlink(self) -> None:
        try:
            os.unlink(self.local_path)
        except FileNotFoundError:
            pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def __del__(self) -> None:
        # IOBase's finalizer closes, and so uploads. At interpreter exit
        # fsspec's IO thread no longer runs and that upload would wait for
        # it forever: the process would hang instead of exiting.
        if not self._ready:
            return
        if not self.closed and sys.is_finalizing():
            self.discard()
            return
        super().__del__()


class _SpoolText(io.TextIOWrapper):
    """Text mode over a SpoolFile; an exception discards it just the same."""

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.buffer.discard()
        self.close()

    def __del__(self) -> None:
        # As SpoolFile.__del__: closing would upload, and hang, at exit.
        if not self.closed and sys.is_finalizing():
            self.buffer.discard()
            return
        super().__del__()
