"""Where objects live inside a store.

``_schema/{schema}/{table}/{attr=value}/.../{field}_{token}{ext}``, the
layout DataJoint 2.x uses, so people can find their data by browsing.

Key values are percent-encoded with every byte outside ``[A-Za-z0-9_-]``
escaped, ``.`` and ``%`` included. Percent-encoding is injective, so no two
keys share a path, and the result can hold no separator, no ``..`` and no
control character: a key can never leave its directory. A segment too long
for a file name keeps a readable prefix and ends in a hash of the whole.

The token is the intent id, so a path alone names the intent that made it
and a retry of the same key never meets an earlier attempt's files.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import re
import secrets
import urllib.parse
import uuid
from typing import Any, Mapping

from stagerd.core.errors import StagingError

__all__ = [
    "IDENT",
    "new_intent_id",
    "encode_value",
    "object_path",
    "table_prefix",
    "parse_object_path",
    "check_ident",
    "check_ext",
]

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INTENT_ID = re.compile(r"[0-9a-f]{20}")
_EXT = re.compile(r"(\.[A-Za-z0-9_]{1,16}){0,3}")
_SAFE = "_-"
_ENCODED = re.compile(r"[A-Za-z0-9_%~-]*")
# File names are limited to 255 bytes on every common filesystem and S3
# keys to 1024 bytes; a long key segment is cut well below that.
_MAX_SEGMENT = 160


def new_intent_id() -> str:
    """80 random bits as 20 hex digits: unique per intent, path-safe."""
    return secrets.token_hex(10)


def check_ident(what: str, name: Any) -> str:
    if not isinstance(name, str) or not IDENT.fullmatch(name):
        raise StagingError(
            f"{what} must be an identifier matching {IDENT.pattern}, got {name!r}"
        )
    return name


def check_ext(ext: Any) -> str:
    if not isinstance(ext, str) or not _EXT.fullmatch(ext):
        raise StagingError(
            "ext must be empty or up to three parts like '.zarr' or '.ome.zarr' "
            f"(letters, digits, '_'), got {ext!r}"
        )
    return ext


def _text(value: Any) -> str:
    """A key value as text; the column type fixes which kind arrives."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, str, decimal.Decimal)):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise StagingError(
        f"a primary-key value must be a number, string, date or uuid, "
        f"got {type(value).__name__} {value!r}"
    )


def encode_value(value: Any) -> str:
    """Encode one key value as a single, safe path segment."""
    # quote() always leaves "." and "~" alone; escape them too, so no ".."
    # survives and "~" is free to mark a hashed segment.
    text = urllib.parse.quote(_text(value), safe=_SAFE)
    text = text.replace(".", "%2E").replace("~", "%7E")
    if len(text) > _MAX_SEGMENT:
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        text = f"{text[:_MAX_SEGMENT - 34]}~{digest}"
    return text


def table_prefix(schema: str, table: str) -> str:
    """The folder that holds every object of one table."""
    check_ident("schema", schema)
    check_ident("table", table.lstrip("#_"))
    return f"_schema/{schema}/{urllib.parse.quote(table, safe=_SAFE)}"


def object_path(
    schema: str,
    table: str,
    key: Mapping[str, Any],
    field: str,
    intent_id: str,
    ext: str = "",
) -> str:
    """The path, relative to the store root, of one staged object."""
    check_ident("field", field)
    check_ext(ext)
    if not _INTENT_ID.fullmatch(intent_id):
        raise StagingError(f"malformed intent id {intent_id!r}")
    parts = [table_prefix(schema, table)]
    for attr, value in key.items():
        check_ident("primary-key attribute", attr)
        parts.append(f"{attr}={encode_value(value)}")
    parts.append(f"{field}_{intent_id}{ext}")
    return "/".join(parts)


def parse_object_path(path: str) -> tuple[str, str, str, str]:
    """Split a path made by :func:`object_path` into schema, table, field, id.

    Raises StagingError for anything :func:`object_path` cannot have made,
    which is how the daemon refuses paths it did not allocate.
    """
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != "_schema" or "" in parts:
        raise StagingError(f"{path!r} is not an object path of the form "
                           "_schema/{schema}/{table}/.../{field}_{id}{ext}")
    schema, table, last = parts[1], urllib.parse.unquote(parts[2]), parts[-1]
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)_([0-9a-f]{20})(.*)", last)
    if match is None or not _EXT.fullmatch(match.group(3)):
        raise StagingError(f"{path!r} does not end in {{field}}_{{id}}{{ext}}")
    for segment in parts[3:-1]:
        attr, sep, value = segment.partition("=")
        if not sep or not IDENT.fullmatch(attr) or not _ENCODED.fullmatch(value):
            raise StagingError(f"{path!r}: {segment!r} is not attr=value")
    check_ident("schema", schema)
    return schema, table, match.group(1), match.group(2)
