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
connection stays usable.
"""

from __future__ import annotations

import json
import os
import socket
import struct
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


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
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
    if version != VERSION:
        raise ProtocolError(
            f"protocol version 'v' must be {VERSION}, got {version!r}"
        )
    op = message.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return op


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A required field of a request, of the given type."""
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(
            k.__name__ for k in kind
        )
        raise ProtocolError(
            f"{message.get('op')}: field {name!r} must be {names}, got {value!r}"
        )
    return value


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
    """A connection to the daemon's socket; DaemonUnavailable if none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except OSError as e:
        sock.close()
        raise DaemonUnavailable(
            f"no stagerd daemon answers at {path} ({e.strerror or e}); start one "
            "with `stagerd serve` (or `systemctl start stagerd`)"
        ) from e
    return sock


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
