"""The tables the tests use, declared anew for each deployment."""

from __future__ import annotations

import os
from types import SimpleNamespace

import stagerd_client as dj

# Set per test on MariaDB, so tests can share a server with other databases.
SUFFIX_VARIABLE = "STAGERD_TEST_SCHEMA_SUFFIX"


def schema_name(base: str) -> str:
    """The name a test's schema ``base`` has in this test's database."""
    return base + os.environ.get(SUFFIX_VARIABLE, "")


def declare(name: str = "imaging") -> SimpleNamespace:
    schema = dj.Schema(schema_name(name))

    @schema
    class ImagingSession(dj.Manual):
        definition = """
        # the reference page's quick-start table
        subject_id : int32
        session_id : int32
        ---
        n_frames   : int32
        frame_rate : float32
        frames     : <object@>
        """

    @schema
    class Recording(dj.Manual):
        definition = """
        recording_id : varchar(255)
        ---
        raw = null : <object@>
        notes = "" : varchar(255)
        """

    @schema
    class Subject(dj.Manual):
        definition = """
        subject_id : int32
        ---
        species : varchar(32)
        """

    @schema
    class Raw(dj.Manual):
        definition = """
        raw_id : int32
        ---
        data : <object@raw>       # a store the test config leaves out
        """

    return SimpleNamespace(
        schema=schema,
        Raw=Raw,
        ImagingSession=ImagingSession,
        Recording=Recording,
        Subject=Subject,
    )
