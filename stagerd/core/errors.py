"""Every error stagerd raises, on both sides of the socket.

Each class also inherits the builtin exception it resembles, so callers can
catch either the precise stagerd error or the ordinary Python family::

    StagerdError
    ├── ConfigError            (ValueError)    bad config, unknown store
    ├── DefinitionError        (ValueError)    bad table definition line
    ├── DataError              (ValueError)    a value does not fit its attribute
    ├── StagingError           (ValueError)    misuse of a staged insert
    ├── DuplicateError         (KeyError)      primary key already present
    ├── MissingRowError        (LookupError)   fetch1 found no row
    ├── ProtocolError          (ValueError)    malformed socket message
    ├── DaemonUnavailable      (ConnectionError) no daemon at the socket
    ├── DatabaseUnavailable    (ConnectionError) database server unreachable
    ├── DaemonError            (RuntimeError)  the daemon refused a request
    │   ├── NotOwnerError      (PermissionError) intent belongs to another uid
    │   └── TooManyConnections                 a connection limit was reached
    ├── DecisionConflict       (RuntimeError)  the intent was decided otherwise
    ├── OutcomeUnknown         (RuntimeError)  commit may or may not have landed
    ├── StoreError             (OSError)       object store failed
    └── IntegrityError         (ValueError)    object does not match manifest

Messages name the parameter, what was expected and what arrived.
"""

from __future__ import annotations

__all__ = [
    "StagerdError",
    "ConfigError",
    "DefinitionError",
    "DataError",
    "StagingError",
    "DuplicateError",
    "MissingRowError",
    "ProtocolError",
    "DaemonUnavailable",
    "DatabaseUnavailable",
    "DaemonError",
    "NotOwnerError",
    "TooManyConnections",
    "DecisionConflict",
    "OutcomeUnknown",
    "StoreError",
    "IntegrityError",
    "error_from_reply",
]


class StagerdError(Exception):
    """Base class of every error stagerd raises."""


class ConfigError(StagerdError, ValueError):
    """The configuration is malformed or lacks something that was asked for."""


class DefinitionError(StagerdError, ValueError):
    """A table definition could not be parsed."""


class DataError(StagerdError, ValueError):
    """A value does not fit the attribute it was given for."""


class StagingError(StagerdError, ValueError):
    """A staged insert was used in a way that cannot succeed."""


class DuplicateError(StagerdError, KeyError):
    """A row with the same primary key already exists."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a sentence reads better unquoted.
        return str(self.args[0]) if self.args else ""


class MissingRowError(StagerdError, LookupError):
    """A fetch that needs exactly one row found another number."""


class ProtocolError(StagerdError, ValueError):
    """A socket message is malformed, oversized or of an unknown version."""


class DaemonUnavailable(StagerdError, ConnectionError):
    """No stagerd daemon answers at the configured socket."""


class DatabaseUnavailable(StagerdError, ConnectionError):
    """The database server cannot be reached."""


class DaemonError(StagerdError, RuntimeError):
    """The daemon answered a request with an error.

    ``kind`` is the daemon's name for the error class, so the client can
    re-raise the matching subclass.
    """

    def __init__(self, message: str, kind: str = "DaemonError") -> None:
        super().__init__(message)
        self.kind = kind


class NotOwnerError(DaemonError, PermissionError):
    """The caller is neither the intent's owner nor root."""


class TooManyConnections(DaemonError):
    """The daemon refused a connection: its uid, or the daemon, is at a limit."""


class DecisionConflict(StagerdError, RuntimeError):
    """The decision record already holds another outcome for this intent."""


class OutcomeUnknown(StagerdError, RuntimeError):
    """The database did not confirm a commit; the daemon will decide it."""


class StoreError(StagerdError, OSError):
    """The object store failed or is not reachable."""


class IntegrityError(StagerdError, ValueError):
    """A stored object does not match the manifest in its row."""


# Errors a daemon reply may name; anything else arrives as DaemonError.
_REPLY_KINDS: dict[str, type[StagerdError]] = {
    cls.__name__: cls
    for cls in (
        ConfigError,
        StagingError,
        ProtocolError,
        NotOwnerError,
        TooManyConnections,
        DecisionConflict,
        StoreError,
    )
}


def error_from_reply(kind: str, message: str) -> StagerdError:
    """Rebuild the exception a daemon reply describes."""
    cls = _REPLY_KINDS.get(kind)
    if cls is None:
        return DaemonError(message, kind)
    if issubclass(cls, DaemonError):
        return cls(message, kind)
    return cls(message)
