"""Object paths: injective key encoding that never leaves its folder."""

from __future__ import annotations

import datetime
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagerd.core import layout
from stagerd.core.errors import StagingError

ID = "0123456789abcdef0123"


def test_layout_matches_datajoint():
    path = layout.object_path(
        "imaging", "imaging_session", {"subject_id": 1, "session_id": 2},
        "frames", ID, ".zarr",
    )
    assert path == (
        f"_schema/imaging/imaging_session/subject_id=1/session_id=2/frames_{ID}.zarr"
    )
    assert layout.parse_object_path(path) == ("imaging", "imaging_session",
                                              "frames", ID)


@pytest.mark.parametrize("value", ["../..", "..", ".", "/", "%2F", "a/../../b",
                                   "\x00", "\n\r\t", "~", "é/ü", ""])
def test_hostile_values_become_one_safe_segment(value):
    segment = layout.encode_value(value)
    assert "/" not in segment and "\\" not in segment
    assert segment not in (".", "..") and ".." not in segment
    assert all(0x21 <= ord(c) < 0x7F for c in segment)


@given(st.text(max_size=300), st.text(max_size=300))
def test_encoding_is_injective(a, b):
    if a != b:
        assert layout.encode_value(a) != layout.encode_value(b)


@given(st.text(max_size=2000))
def test_segments_fit_a_file_name(value):
    segment = layout.encode_value(value)
    assert len(segment.encode()) <= 255 and "/" not in segment and "." not in segment


def test_typed_values():
    assert layout.encode_value(datetime.date(2026, 1, 2)) == "2026-01-02"
    u = uuid.UUID(int=5)
    assert layout.encode_value(u) == str(u)
    with pytest.raises(StagingError, match="primary-key value"):
        layout.encode_value([1])


@pytest.mark.parametrize("path", [
    "../x", "_schema/s/t/../../x_0123456789abcdef0123",
    "_schema/s/t/k=v/frames_0123", "_schema/s/t/k=a.b/f_0123456789abcdef0123",
    "_schema//t/f_0123456789abcdef0123", "/abs/_schema/s/t/f_0123456789abcdef0123",
])
def test_parse_refuses_paths_the_layout_cannot_make(path):
    with pytest.raises(StagingError):
        layout.parse_object_path(path)


@pytest.mark.parametrize("ext", ["/x", "..", ".a/b", ".zarr.", "x" * 20, ".a.b.c.d"])
def test_bad_extensions(ext):
    with pytest.raises(StagingError, match="ext"):
        layout.object_path("s", "t", {"k": 1}, "f", ID, ext)
