"""Store conformance: every test runs on a local folder and on S3.

S3 is a real moto server process reached over HTTP (``s3server``), one per
session, with a fresh bucket per test. Files are planted and checked through
a second filesystem instance (``behind``), so the Store's own listings cache
never sees those writes, as with zarr's async copy or another process.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
import zarr

from s3server import make_bucket, s3_options, start_moto, stop_moto
from stagerd.core.config import StoreConfig
from stagerd.core.errors import StoreError
from stagerd.core.stores import Store

MiB = 2**20
# s3fs's put_file sends one PutObject below twice its part size (50 MiB by
# default), a multipart upload from there on (S3FileSystem._put_file).
MULTIPART_FROM = 2 * 50 * MiB
# DeleteObjects takes at most 1000 keys; more need a second request.
MANY_FILES = 1100


@pytest.fixture(scope="session")
def store_moto():
    proc, endpoint = start_moto()
    yield endpoint
    stop_moto(proc)


def s3_store(endpoint: str, **config_kwargs: Any) -> Store:
    bucket = f"stagerd-{uuid.uuid4().hex[:16]}"
    make_bucket(endpoint, bucket)
    options = s3_options(endpoint, **config_kwargs)
    return Store(StoreConfig("lab-s3", f"s3://{bucket}/objects", options))


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "file":
        return Store(StoreConfig("lab-file", f"file://{tmp_path}/objects", {}))
    return s3_store(request.getfixturevalue("store_moto"))


@pytest.fixture
def behind(store) -> fsspec.AbstractFileSystem:
    """Another filesystem on the same store, with its own (empty) caches."""
    return type(store.fs)(skip_instance_cache=True, **store.fs.storage_options)


def plant(store: Store, fs: fsspec.AbstractFileSystem, files: dict[str, bytes]):
    """Write ``files`` (store-relative paths) in one call."""
    fs.pipe({store.full(rel): data for rel, data in files.items()})


def spool_gone(f: Any) -> bool:
    local = getattr(f, "local_path", None)
    return local is None or not os.path.exists(local)


# describe


def test_describe_file(store, behind):
    plant(store, behind, {"a/obj.bin": b"hello", "a/obj.bin2": b"other"})
    meta = store.describe("a/obj.bin", ".bin")
    stamp = datetime.datetime.fromisoformat(meta.pop("timestamp"))
    assert meta == {
        "path": "a/obj.bin", "store": store.name, "size": 5, "ext": ".bin",
        "is_dir": False, "item_count": 1, "manifest": {"": 5},
    }
    assert abs(datetime.datetime.now(datetime.timezone.utc) - stamp).seconds < 60


def test_describe_folder(store, behind):
    plant(store, behind, {
        "a/obj/x": b"abc",
        "a/obj/sub/y": b"defg",
        "a/obj/sub/deeper/empty": b"",
        # Share the prefix "a/obj" without being inside the object.
        "a/obj2/z": b"not mine",
        "a/obj.txt": b"nor this",
    })
    meta = store.describe("a/obj", ".zarr")
    assert meta["manifest"] == {"x": 3, "sub/y": 4, "sub/deeper/empty": 0}
    assert (meta["size"], meta["item_count"], meta["is_dir"]) == (7, 3, True)
    assert meta["ext"] == ".zarr" and meta["path"] == "a/obj"


def test_describe_nothing(store, behind):
    plant(store, behind, {"a/objx": b"a neighbour, not the object"})
    assert store.describe("a/obj", "") is None
    assert store.describe("never/written", "") is None
    assert not store.exists("a/obj")


def test_describe_and_exists_see_writes_behind_the_cache(store, behind):
    plant(store, behind, {"obj/a": b"1", "obj/b": b"22"})
    assert store.describe("obj", "")["manifest"] == {"a": 1, "b": 2}
    assert store.describe("obj/b", "")["size"] == 2
    assert store.exists("obj/a")

    plant(store, behind, {"obj/b": b"22222", "obj/c": b"333"})
    behind.rm(store.full("obj/a"))
    assert store.describe("obj", "")["manifest"] == {"b": 5, "c": 3}
    assert store.describe("obj/b", "")["size"] == 5
    assert not store.exists("obj/a")

    behind.rm(store.full("obj"), recursive=True)
    assert store.describe("obj", "") is None
    assert store.describe("obj/b", "") is None
    assert not store.exists("obj")


# writing through mapper() and open()


def test_zarr_through_mapper(store):
    data = np.arange(20 * 16, dtype="int32").reshape(20, 16)
    z = zarr.open(store.mapper("obj.zarr"), mode="w", shape=(20, 16),
                  chunks=(5, 16), dtype="int32")
    z[:] = data

    meta = store.describe("obj.zarr", ".zarr")
    assert meta["is_dir"]
    assert set(meta["manifest"]) == {"zarr.json", "c/0/0", "c/1/0", "c/2/0",
                                     "c/3/0"}
    back = zarr.open(store.mapper("obj.zarr"), mode="r")
    assert back.shape == (20, 16)
    np.testing.assert_array_equal(back[:], data)


def test_hdf5_through_open(store):
    signal = np.sin(np.linspace(0, 10, 5000))
    with store.open("rec/obj.h5", "wb") as f:
        with h5py.File(f, "w") as h5:
            h5.create_dataset("signal", data=signal, chunks=True)
            h5.attrs["fs"] = 30000
    assert spool_gone(f)

    meta = store.describe("rec/obj.h5", ".h5")
    assert not meta["is_dir"] and meta["size"] > signal.nbytes
    with store.open("rec/obj.h5", "rb") as f, h5py.File(f, "r") as h5:
        np.testing.assert_array_equal(h5["signal"][:], signal)
        assert h5.attrs["fs"] == 30000


def test_large_file_through_open(store):
    size = MULTIPART_FROM + MiB
    written = hashlib.sha256()
    with store.open("big.bin", "wb") as f:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            written.update(chunk)
            f.write(chunk)
    assert spool_gone(f)

    assert store.describe("big.bin", ".bin")["size"] == size
    read = hashlib.sha256()
    with store.open("big.bin", "rb") as f:
        while chunk := f.read(8 * MiB):
            read.update(chunk)
    assert read.hexdigest() == written.hexdigest()
    if not store.is_local:
        # A multipart upload's ETag ends in "-<number of parts>".
        assert store.fs.info(store.full("big.bin"))["ETag"].endswith('-3"')
    store.delete("big.bin")  # moto holds objects in memory for the session


def test_text_mode_through_open(store):
    with store.open("notes.txt", "w", encoding="utf-8") as f:
        f.write("héllo\n")
    with store.open("notes.txt", "ab") as f:
        f.write(b"more\n")
    with store.open("notes.txt", "r", encoding="utf-8") as f:
        assert f.read() == "héllo\nmore\n"


# delete


def test_sync_makes_files_and_folders_durable(store, behind):
    plant(store, behind, {"o/f": b"1", "o/d/a": b"2", "o/d/sub/b": b"3"})
    store.sync("o/f")
    store.sync("o/d")
    store.sync("o/never-written")  # the commit reports it, not sync
    if store.is_local:
        os.unlink(store.full("o/d/a"))
        os.symlink("/nonexistent", store.full("o/d/a"))
        with pytest.raises(StoreError, match="cannot sync o/d"):
            store.sync("o/d")


def test_delete_file(store, behind, caplog):
    plant(store, behind, {"a/obj": b"bye", "a/obj2": b"stay", "a/obj.x": b"stay"})
    with caplog.at_level(logging.DEBUG, logger="stagerd.core.stores"):
        store.delete("a/obj")
    assert not store.exists("a/obj") and store.describe("a/obj", "") is None
    assert behind.exists(store.full("a/obj2")) and behind.exists(
        store.full("a/obj.x"))
    deleted = [r for r in caplog.records if r.getMessage().startswith("deleted")]
    assert [r.levelno for r in deleted] == [logging.DEBUG]
    assert "path=a/obj" in deleted[0].getMessage()


def test_delete_folder(store, behind):
    plant(store, behind, {
        "a/obj/x": b"1", "a/obj/sub/y": b"2", "a/obj2/z": b"stay",
        "a/objz": b"stay",
    })
    store.delete("a/obj")
    assert not store.exists("a/obj") and store.describe("a/obj", "") is None
    assert behind.find(store.full("a")) == [store.full("a/obj2/z"),
                                            store.full("a/objz")]


def test_delete_more_files_than_one_request_takes(store, behind):
    plant(store, behind, {f"obj/c/{i:05d}": b"x" for i in range(MANY_FILES)})
    assert store.describe("obj", "")["item_count"] == MANY_FILES
    store.delete("obj")
    assert not store.exists("obj") and behind.find(store.full("obj")) == []


def test_delete_finishes_a_deletion_that_stopped_halfway(store, behind):
    names = [f"obj/c/{i:05d}" for i in range(MANY_FILES)]
    plant(store, behind, dict.fromkeys(names, b"x"))
    assert store.describe("obj", "")["item_count"] == MANY_FILES
    # What a first DeleteObjects request of 1000 keys leaves when the next
    # one never runs (a killed daemon, a lost connection).
    behind.rm([store.full(n) for n in names[:1000]])
    assert store.describe("obj", "")["item_count"] == MANY_FILES - 1000
    store.delete("obj")
    assert not store.exists("obj") and behind.find(store.full("obj")) == []


def test_delete_is_idempotent(store, behind):
    store.delete("never/written")
    plant(store, behind, {"obj/x": b"1"})
    store.delete("obj")
    store.delete("obj")
    assert not behind.exists(store.full("obj/x"))


def test_delete_leaves_no_empty_key_folder(store, behind):
    plant(store, behind, {"_schema/s/t/k=1/obj/x": b"1", "_schema/s/t/k=2/o": b"2"})
    store.delete("_schema/s/t/k=1/obj")
    assert not behind.exists(store.full("_schema/s/t/k=1"))
    assert behind.exists(store.full("_schema/s/t/k=2/o"))


# paths


@pytest.mark.parametrize(
    "rel",
    ["../x", "/abs", "a/../../b", "a/../b", "./a", "a//b", "", ".", "a/*", "a?b",
     "[ab]"],
)
def test_paths_must_stay_inside_the_store(store, rel):
    calls = [
        lambda: store.full(rel),
        lambda: store.describe(rel, ""),
        lambda: store.exists(rel),
        lambda: store.delete(rel),
        lambda: store.mapper(rel),
        lambda: store.open(rel, "rb"),
        lambda: store.open(rel, "wb"),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="not a clean path"):
            call()


# S3 only: the spool's own behaviour and an unreachable endpoint


@pytest.fixture
def s3(store_moto) -> Store:
    return s3_store(store_moto)


def test_spool_uploads_only_on_close(s3):
    with s3.open("obj.bin", "wb") as f:
        f.write(b"abc")
        f.flush()
        assert os.path.getsize(f.local_path) == 3
        assert not s3.exists("obj.bin")
    assert spool_gone(f) and s3.describe("obj.bin", "")["size"] == 3


def test_spool_discards_on_exception(s3):
    with pytest.raises(RuntimeError, match="writer failed"):
        with s3.open("obj.bin", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("writer failed")
    assert spool_gone(f) and not s3.exists("obj.bin")


def test_spool_exclusive_mode(s3):
    with s3.open("obj.bin", "xb") as f:
        f.write(b"first")
    with pytest.raises(FileExistsError):
        s3.open("obj.bin", "xb")
    with s3.open("obj.bin", "rb") as f:
        assert f.read() == b"first"


# Leaves one spool of each kind open at exit and drops one while running.
LEAVER = textwrap.dedent("""
    import json, sys
    from stagerd.core.config import StoreConfig
    from stagerd.core.stores import Store

    store = Store(StoreConfig("lab-s3", sys.argv[1], json.loads(sys.argv[2])))
    binary = store.open("open-at-exit.bin", "wb")
    binary.write(b"lost")
    text = store.open("open-at-exit.txt", "w")
    text.write("lost")
    dropped = store.open("dropped.bin", "wb")
    dropped.write(b"kept")
    del dropped
    print(binary.local_path, text.buffer.local_path)
""")


def test_spools_open_at_exit_are_discarded_without_hanging(s3, store_moto):
    options = json.dumps(s3_options(store_moto))
    done = subprocess.run(
        [sys.executable, "-c", LEAVER, s3.url, options],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not any(os.path.exists(p) for p in done.stdout.split())
    # Dropped while the interpreter ran: closed, so uploaded, like a local
    # file is flushed.
    assert s3.describe("dropped.bin", "")["size"] == 4
    assert not s3.exists("open-at-exit.bin") and not s3.exists("open-at-exit.txt")


def test_unreachable_endpoint_raises_store_error_then_recovers():
    proc, endpoint = start_moto()
    port = int(endpoint.rsplit(":", 1)[1])
    # One attempt and a short connect timeout: the daemon retries on its own
    # schedule, so the store should fail fast rather than back off inside.
    store = s3_store(endpoint, connect_timeout=1, read_timeout=2,
                     retries={"max_attempts": 1})
    files = {"obj/x": b"1", "obj/sub/y": b"22"}
    plant(store, store.fs, files)
    spool = store.open("late.bin", "wb")
    spool.write(b"never arrives")
    stop_moto(proc)
    try:
        for call, rel in (
            (lambda: store.describe("obj", ""), "obj"),
            (lambda: store.delete("obj"), "obj"),
            (lambda: store.exists("obj"), "obj"),
            (spool.close, "late.bin"),
        ):
            start = time.monotonic()
            with pytest.raises(StoreError, match=f"'lab-s3'.*: cannot \\w+ {rel}:"):
                call()
            assert time.monotonic() - start < 30  # fails, does not hang
        assert spool_gone(spool)

        # The same port again: the same endpoint is back, but moto kept
        # nothing, so put back what the store held when it went away.
        proc, endpoint = start_moto(port)
        make_bucket(endpoint, store.root.split("/")[0])
        plant(store, store.fs, files)
        store.delete("obj")
        assert not store.exists("obj")
    finally:
        stop_moto(proc)
