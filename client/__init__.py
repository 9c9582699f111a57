"""stagerd_client: DataJoint-style tables with crash-safe staged inserts.

    import stagerd_client as dj

    schema = dj.Schema("imaging")

    @schema
    class ImagingSession(dj.Manual):
        definition = \"\"\"
        subject_id : int32
        session_id : int32
        ---
        n_frames   : int32
        frames     : <object@>
        \"\"\"

    with ImagingSession.staged_insert1 as staged:
        staged.rec.update(subject_id=1, session_id=1)
        z = zarr.open(staged.store("frames", ".zarr"), mode="w", shape=(10, 64))
        z[:] = 1
        staged.rec["n_frames"] = 10
"""

from stagerd.core.errors import (
    ConfigError,
    DaemonError,
    DaemonUnavailable,
    DatabaseUnavailable,
    DataError,
    DecisionConflict,
    DefinitionError,
    DuplicateError,
    IntegrityError,
    MissingRowError,
    NotOwnerError,
    OutcomeUnknown,
    StagerdError,
    StagingError,
    StoreError,
)
from stagerd_client.objectref import ObjectRef
from stagerd_client.schema import Schema
from stagerd_client.settings import config
from stagerd_client.staged import StagedInsert
from stagerd_client.table import Lookup, Manual, Table

# Scripts written for DataJoint catch DataJointError; it is the same class.
DataJointError = StagerdError

__all__ = [
    "Schema",
    "Manual",
    "Lookup",
    "Table",
    "StagedInsert",
    "ObjectRef",
    "config",
    "StagerdError",
    "DataJointError",
    "ConfigError",
    "DaemonError",
    "DaemonUnavailable",
    "DatabaseUnavailable",
    "DataError",
    "DecisionConflict",
    "DefinitionError",
    "DuplicateError",
    "IntegrityError",
    "MissingRowError",
    "NotOwnerError",
    "OutcomeUnknown",
    "StagingError",
    "StoreError",
]
