"""The message protocol between clients and the daemon.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON holding one object. Every request carries the protocol version ``v``,
an operation ``op`` and a request ``id`` the reply echoes::

    -> {"v": 1, "id": 7, "op": "register", "schema": "lab", ...}
    <- {"v": 1, "id": 7, "ok": true, "intent": "...", "path": "..."}
    <- {"v": 1, "id": 7, "ok": false,
        "error": {"kind": "StagingError", "message": "..."}}

Frames are limited to :data:`MAX_FRAME` bytes. A frame over the limit
cannot be skipped safely, so the daemon answers it and closes the
connection; any other malformed message gets an error reply and the
connection stays usable. Messages are strict JSON: ``NaN``, ``Infinity``,
lone UTF-16 surrogates (``"\\ud800"``) and integers of more digits than
Python converts are refused like any other malformed message.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any

from stagerd.core.errors import DaemonUnavailable, ProtocolError, error_from_reply

__all__ = [
    "VERSION",
    "MAX_FRAME",
    "OPS",
    "FrameTooLarge",
    "encode",
    "decode",
    "check_request",
    "field",
    "request_id",
    "header_length",
    "send",
    "recv",
    "connect",
    "call",
    "check_reply",
]

VERSION = 1
MAX_FRAME = 256 * 1024
HEADER = struct.Struct(">I")
OPS = ("register", "commit", "abort", "attach", "status", "recover", "delete")
# Deeply nested JSON costs the parser recursion; no real message nests.
_MAX_DEPTH = 8
# A request id is echoed in the reply, so it must stay small.
MAX_ID = 2**63
MAX_ID_CHARS = 128


class FrameTooLarge(ProtocolError):
    """A frame header announced more than MAX_FRAME bytes."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(
            f"message of {len(body)} bytes exceeds the limit of {MAX_FRAME}"
        )
    return HEADER.pack(len(body)) + body


def header_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameTooLarge(
            f"frame of {length} bytes announced; the limit is {MAX_FRAME}"
        )
    return length


def _depth(value: Any, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        message = json.loads(text, parse_constant=_refuse_constant)
        if "\\u" in text:
            # An escaped lone surrogate decodes to a str that no UTF-8 file
            # name, log line or database column can hold.
            json.dumps(message, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as e:
        # ValueError covers bad UTF-8, bad JSON, NaN and over-long integers.
        raise ProtocolError(f"message is not UTF-8 JSON: {e}") from e
    if not isinstance(message, dict):
        raise ProtocolError(
            f"message must be a JSON object, got {type(message).__name__}"
        )
    if _depth(message) > _MAX_DEPTH:
        raise ProtocolError(f"message nests deeper than {_MAX_DEPTH} levels")
    return message


def check_request(message: dict[str, Any]) -> str:
    """Check the envelope of a request and return its operation."""
    version = message.get("v")
    if type(version) is not int or version != VERSION:  # true == 1 in Python
        raise ProtocolError(
            f"protocol version 'v' must be {VERSION}, got {version!r}"
        )
    op = message.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return op


def field(
    message: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    where: str | None = None,
) -> Any:
    """A required field of a request (or of ``where`` inside it), of a type."""
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(
            k.__name__ for k in kind
        )
        raise ProtocolError(
            f"{where or message.get('op')}: field {name!r} must be {names}, "
            f"got {_short(value)}"
        )
    return value


def _short(value: Any, limit: int = 200) -> str:
    """A repr fit for an error message, however large the value."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({type(value).__name__} of {len(text)} characters)"


def request_id(message: dict[str, Any]) -> int | str | None:
    """The request's ``id``, which the reply echoes; None if it has none."""
    value = message.get("id")
    if value is None:
        return None
    if (isinstance(value, int) and not isinstance(value, bool)
            and -MAX_ID <= value <= MAX_ID) or (
        isinstance(value, str) and len(value) <= MAX_ID_CHARS
    ):
        return value
    raise ProtocolError(
        f"field 'id' must be an integer within +-2**63 or a string of at most "
        f"{MAX_ID_CHARS} characters, got {_short(value, 60)}"
    )


# Blocking helpers for the client side.


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def recv(sock: socket.socket) -> dict[str, Any]:
    length = header_length(_recv_exactly(sock, HEADER.size))
    return decode(_recv_exactly(sock, length))


def connect(path: str | os.PathLike, timeout: float | None = None) -> socket.socket:
    """A connection to the daemon's socket; DaemonUnavailable if none answers.

    With a ``timeout`` the connect does not block, and a Unix socket whose
    listen backlog is full refuses it at once (EAGAIN) although the daemon
    is alive and accepting: that is retried until the timeout.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + (timeout or 0)
    while True:
        try:
            sock.connect(os.fspath(path))
            return sock
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            error: OSError = TimeoutError(f"the backlog stayed full for {timeout} s")
        except OSError as e:
            error = e
        sock.close()
        raise DaemonUnavailable(
            f"no stagerd daemon answers at {path} ({error.strerror or error}); "
            "start one with `stagerd serve` (or `systemctl start stagerd`)"
        ) from error


def call(path: str | os.PathLike, op: str, **fields: Any) -> dict[str, Any]:
    """One request on a fresh connection; the reply, or the error it names."""
    sock = connect(path, timeout=60)
    try:
        send(sock, {"v": VERSION, "id": 1, "op": op, **fields})
        reply = recv(sock)
    finally:
        sock.close()
    return check_reply(reply)


def check_reply(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") is True:
        return reply
    error = reply.get("error") or {}
    raise error_from_reply(
        str(error.get("kind", "DaemonError")), str(error.get("message", reply))
    )
