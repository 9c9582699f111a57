"""The reference page's patterns, reading back, and every misuse error."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

import stagerd_client as dj
from conftest import ALL_BACKENDS
from lab import declare, schema_name

pytestmark = ALL_BACKENDS


@pytest.fixture
def lab(client_config, daemon):
    return declare()


def test_quick_start_zarr(lab, deployment):
    with lab.ImagingSession.staged_insert1 as staged:
        staged.rec["subject_id"] = 1
        staged.rec["session_id"] = 1
        store = staged.store("frames", ".zarr")
        z = zarr.open(store, mode="w", shape=(40, 32, 32), chunks=(10, 32, 32),
                      dtype="int32")
        for i in range(40):
            z[i] = np.full((32, 32), i, dtype="int32")
        staged.rec["n_frames"] = 40
        staged.rec["frame_rate"] = 30.0

    row = (lab.ImagingSession & {"subject_id": 1, "session_id": 1}).fetch1()
    ref = row["frames"]
    assert row["n_frames"] == 40 and row["frame_rate"] == 30.0
    assert isinstance(ref, dj.ObjectRef)
    assert ref.is_dir and ref.ext == ".zarr" and ref.store == "default"
    assert ref.path.startswith(
        f"_schema/{schema_name('imaging')}/imaging_session/subject_id=1/session_id=1/"
        "frames_"
    )
    assert ref.item_count == len(ref.manifest) == len(deployment.files())
    assert ref.size == sum(ref.manifest.values())
    assert ref.verify()
    back = zarr.open(ref.fsmap, mode="r")
    assert back.shape == (40, 32, 32) and int(back[39, 0, 0]) == 39
    assert deployment.status()["pending"] == []


def test_hdf5_through_open(lab):
    signal = np.sin(np.linspace(0, 10, 5000))
    with lab.Recording.staged_insert1 as staged:
        staged.rec["recording_id"] = "rig1-0001"
        with staged.open("raw", ".h5") as f:
            with h5py.File(f, "w") as h5:
                h5.create_dataset("signal", data=signal, chunks=True)
                h5.attrs["fs"] = 30000

    ref = lab.Recording.fetch1()["raw"]
    assert not ref.is_dir and ref.item_count == 1 and ref.manifest == {"": ref.size}
    with ref.open() as f, h5py.File(f, "r") as h5:
        np.testing.assert_array_equal(h5["signal"][:], signal)
        assert h5.attrs["fs"] == 30000
    assert ref.read()[:8] == b"\x89HDF\r\n\x1a\n"


def test_streaming_camera_error_leaves_nothing(lab, deployment):
    def grab(i):
        if i == 7:
            raise OSError("camera disconnected")
        return np.full((16, 16), i, dtype="uint16")

    with pytest.raises(OSError, match="camera disconnected"):
        with lab.ImagingSession.staged_insert1 as staged:
            staged.rec["subject_id"] = 2
            staged.rec["session_id"] = 1
            z = zarr.open(staged.store("frames", ".zarr"), mode="w",
                          shape=(20, 16, 16), chunks=(1, 16, 16), dtype="uint16")
            for i in range(20):
                z[i] = grab(i)
            staged.rec["n_frames"] = 20

    assert len(lab.ImagingSession) == 0
    assert deployment.files() == []
    if deployment.store_kind == "file":  # S3 has no folders to leave behind
        table_dir = deployment.objects / "_schema" / lab.schema.name / "imaging_session"
        assert not table_dir.exists()
    assert staged.state == "aborted"


def test_keyboard_interrupt_in_block_aborts(lab, deployment):
    with pytest.raises(KeyboardInterrupt):
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = "ctrl-c"
            with staged.open("raw", ".bin") as f:
                f.write(b"x" * 1000)
            raise KeyboardInterrupt
    assert len(lab.Recording) == 0 and deployment.files() == []


def test_two_fields_one_intent_and_reuse_refused(lab, deployment):
    schema = dj.Schema(schema_name("imaging"))

    @schema
    class Pair(dj.Manual):
        definition = """
        pair_id : int16
        ---
        left : <object@>
        right : <object@>
        """

    with Pair.staged_insert1 as staged:
        staged.rec["pair_id"] = 1
        with staged.open("left", ".bin") as f:
            f.write(b"L")
        with staged.open("right", ".bin") as f:
            f.write(b"RR")
        assert staged.store("left", ".bin") is not None  # same path again
    row = Pair.fetch1()
    assert (row["left"].read(), row["right"].read()) == (b"L", b"RR")
    token = lambda ref: ref.path.rsplit("_", 1)[1]  # noqa: E731
    assert token(row["left"]) == token(row["right"]) == staged.intent + ".bin"
    with pytest.raises(dj.StagingError, match="committed"):
        with staged:
            pass


def test_duplicate_key_removes_objects(lab, deployment):
    lab.Recording.insert1({"recording_id": "dup", "notes": "plain insert"})
    with pytest.raises(dj.DuplicateError, match="dup"):
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = "dup"
            with staged.open("raw", ".bin") as f:
                f.write(b"payload")
    assert deployment.files() == []
    assert lab.Recording.fetch1()["notes"] == "plain insert"
    assert deployment.status()["pending"] == []
    assert isinstance(dj.DuplicateError("x"), dj.DataJointError)


def test_not_an_object_field(lab):
    with pytest.raises(dj.DataJointError, match="'n_frames' is not an object field"):
        with lab.ImagingSession.staged_insert1 as staged:
            staged.rec.update(subject_id=1, session_id=1)
            staged.store("n_frames")


def test_primary_key_incomplete_names_missing(lab):
    with pytest.raises(dj.StagingError, match="lacks session_id"):
        with lab.ImagingSession.staged_insert1 as staged:
            staged.rec["subject_id"] = 1
            staged.store("frames", ".zarr")


def test_store_not_configured_names_store_and_config(lab, deployment):
    with pytest.raises(dj.ConfigError) as info:
        with lab.Raw.staged_insert1 as staged:
            staged.rec["raw_id"] = 1
            staged.open("data", ".bin")
    assert "'raw'" in str(info.value) and str(deployment.config) in str(info.value)


def test_nothing_written_is_refused(lab, deployment):
    with pytest.raises(dj.StagingError, match="nothing was written to staged field"):
        with lab.ImagingSession.staged_insert1 as staged:
            staged.rec.update(subject_id=1, session_id=1, n_frames=0, frame_rate=1)
            staged.store("frames", ".zarr")
    assert len(lab.ImagingSession) == 0
    assert deployment.status()["pending"] == []


def test_object_value_in_plain_insert_is_refused(lab):
    with pytest.raises(dj.StagingError, match="staged_insert1"):
        lab.Recording.insert1({"recording_id": "a", "raw": {"path": "x"}})


def test_daemon_not_reachable_says_how_to_start(client_config, deployment):
    lab = declare()
    with pytest.raises(dj.DaemonUnavailable, match="stagerd serve"):
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = "x"
            staged.open("raw", ".bin")
    assert len(lab.Recording) == 0


def test_config_override_in_code(lab, deployment, client_config, tmp_path):
    client_config["stores.raw.url"] = f"file://{tmp_path / 'raw'}"
    # The daemon's config has no store 'raw': it refuses, and says why.
    with pytest.raises(dj.ConfigError, match="daemon: store 'raw'"):
        with lab.Raw.staged_insert1 as staged:
            staged.rec["raw_id"] = 1
            staged.open("data", ".bin")


def test_delete_removes_rows_and_objects(lab, deployment):
    for i in range(3):
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = f"r{i}"
            with staged.open("raw", ".bin") as f:
                f.write(bytes(100 * (i + 1)))
    assert len(deployment.files()) == 3
    doomed = lab.Recording & [{"recording_id": "r0"}, {"recording_id": "r2"}]
    assert doomed.delete() == 2
    assert [k["recording_id"] for k in lab.Recording.keys()] == ["r1"]
    assert len(deployment.files()) == 1
    assert lab.Recording.fetch1()["raw"].verify()


def test_verify_reports_tampering(lab, deployment):
    with lab.ImagingSession.staged_insert1 as staged:
        staged.rec.update(subject_id=3, session_id=1, n_frames=4, frame_rate=1.0)
        z = zarr.open(staged.store("frames", ".zarr"), mode="w", shape=(4, 4),
                      chunks=(1, 4), dtype="int8")
        z[:] = 1
    ref = lab.ImagingSession.fetch1()["frames"]
    deployment.store.fs.rm(deployment.store.full(f"{ref.path}/zarr.json"))
    with pytest.raises(dj.IntegrityError, match="missing"):
        ref.verify()


@pytest.mark.parametrize("value", ["../..", "/", "%2F", "..", "a\x00b\n\x1b", "x/../y"])
def test_hostile_key_values_stay_inside_the_store(lab, deployment, value):
    with lab.Recording.staged_insert1 as staged:
        staged.rec["recording_id"] = value
        with staged.open("raw", ".bin") as f:
            f.write(b"inside")
    ref = (lab.Recording & {"recording_id": value}).fetch1()["raw"]
    assert ref.read() == b"inside"
    [written] = deployment.files()
    table = f"_schema/{lab.schema.name}/recording"
    assert written == ref.path and written.startswith(table + "/")
    assert not {".", ".."} & set(written.split("/"))
    if deployment.store_kind == "file":
        table_dir = (deployment.objects / table).resolve()
        assert (deployment.objects / written).resolve().is_relative_to(table_dir)


def test_slash_and_its_escape_get_different_paths(lab, deployment):
    for value in ("/", "%2F"):
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = value
            with staged.open("raw", ".bin") as f:
                f.write(value.encode())
    refs = [r["raw"] for r in lab.Recording.to_dicts()]
    assert len({r.path.rsplit("/", 1)[0] for r in refs}) == 2
    assert sorted(r.read() for r in refs) == [b"%2F", b"/"]
