"""Parse DataJoint-style table definitions into attributes with typed codecs.

A definition lists one attribute per line, ``name [= default] : type
[# comment]``; the lines above a ``---`` divider form the primary key::

    # a recording session
    subject_id : int32
    session_id : uint16
    ---
    n_frames = 0      : int64
    frame_rate = null : float32
    frames            : <object@>

:func:`parse_definition` turns that text into a :class:`Heading` of
:class:`Attribute` objects.  Each attribute knows its SQL column for the two
supported dialects, ``"sqlite"`` and ``"mysql"`` (MariaDB), and converts
Python values to database parameters (:meth:`Attribute.encode`) and back
(:meth:`Attribute.decode`).

Decisions that are not obvious from the grammar:

* ``tinyint(1)`` is an ``int8`` like any other ``tinyint``: the width is only
  a display hint, and mapping it to ``bool`` would make the codec reject the
  integers MySQL users put in such columns.
* SQLite integers are signed 64-bit, so ``uint64`` values above ``2**63 - 1``
  are refused there; MariaDB stores the full range.
* SQLite turns a bound NaN into NULL, so NaN is stored as the text ``'NaN'``
  in the REAL column; MariaDB cannot store NaN or infinities at all, so they
  raise :class:`DataError` for ``"mysql"`` instead of failing in the driver.
* Datetimes must be naive: MariaDB ``DATETIME`` keeps no zone, and a zone kept
  only by SQLite would make the dialects disagree.
* ``decode(None)`` returns ``None`` for every attribute, because outer joins
  and aggregates yield NULL even in NOT NULL columns.
* ``CURRENT_TIMESTAMP`` defaults are represented by the
  :data:`CURRENT_TIMESTAMP` sentinel; SQLite fills them in UTC, MariaDB in the
  session time zone.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import math
import numbers
import operator
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

from stagerd.core.errors import ConfigError, DataError, DefinitionError

__all__ = [
    "NO_DEFAULT",
    "CURRENT_TIMESTAMP",
    "DIALECTS",
    "AttrType",
    "Attribute",
    "Heading",
    "parse_definition",
]


class _Sentinel:
    """A named singleton that survives copy and pickle as itself."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        # Callers test defaults with ``is``; copies must stay the same object.
        return self._name


NO_DEFAULT = _Sentinel("NO_DEFAULT")
CURRENT_TIMESTAMP = _Sentinel("CURRENT_TIMESTAMP")

DIALECTS = ("sqlite", "mysql")

_KINDS = frozenset(
    "int uint float bool varchar char text date datetime json uuid decimal "
    "enum object".split()
)
_INTEGER_KINDS = frozenset({"int", "uint"})
_FLOAT32_MAX = 3.4028234663852886e38
_SQLITE_INT_MAX = (1 << 63) - 1
# MariaDB's documented limits; larger declarations fail only at CREATE TABLE.
_MAX_VARCHAR = 65535
_MAX_CHAR = 255
_MAX_DECIMAL_PRECISION = 65
_MAX_DECIMAL_SCALE = 30
# Room for 65 digits plus sign and exponent, above the default 28-digit context.
_DECIMAL_CONTEXT = decimal.Context(prec=80)

_SUPPORTED = (
    "int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64, "
    "bool, varchar(n), char(n), text, date, datetime, json, uuid, decimal(p,s), "
    "enum('a', ...), <object@> and <object@store>; MySQL spellings tinyint, "
    "smallint, mediumint, int, integer, bigint (with optional (n) and "
    "unsigned), float, double, real, boolean, mediumtext, longtext and timestamp"
)


def _check_dialect(dialect: str) -> str:
    if dialect not in DIALECTS:
        raise ConfigError(f"dialect: expected one of {DIALECTS}, got {dialect!r}")
    return dialect


def _show(value: object) -> str:
    """Describe a value for a message without dumping megabytes of it."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _sql_string(text: str, dialect: str) -> str:
    """Quote ``text`` as a SQL string literal for ``dialect``."""
    if dialect == "mysql":
        # MariaDB treats backslash as an escape unless NO_BACKSLASH_ESCAPES.
        text = text.replace("\\", "\\\\")
    return "'" + text.replace("'", "''") + "'"


def _sql_literal(value: object, dialect: str) -> str:
    """Render an already encoded value as a SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return _sql_string(value, dialect)
    if isinstance(value, bytes):
        return "X'" + value.hex().upper() + "'"
    if isinstance(value, _dt.datetime):
        return _sql_string(value.isoformat(sep=" "), dialect)
    if isinstance(value, _dt.date):
        return _sql_string(value.isoformat(), dialect)
    raise TypeError(f"no SQL literal for {_show(value)}")


def _py_string(text: str) -> str:
    """Quote ``text`` so that :func:`_read_quoted` reads it back unchanged."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class AttrType:
    """The type of one attribute, independent of the SQL dialect.

    ``bits`` is set for int, uint and float; ``length`` for varchar and char;
    ``precision`` and ``scale`` for decimal; ``values`` for enum; ``store``
    for object (``'default'`` for ``<object@>``).
    """

    kind: str
    bits: int | None = None
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    values: tuple[str, ...] = ()
    store: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise DefinitionError(
                f"AttrType.kind: expected one of {sorted(_KINDS)}, got {self.kind!r}"
            )

    def __str__(self) -> str:
        kind = self.kind
        if kind in ("int", "uint", "float"):
            return f"{kind}{self.bits}"
        if kind in ("varchar", "char"):
            return f"{kind}({self.length})"
        if kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        if kind == "enum":
            return "enum(" + ", ".join(_py_string(v) for v in self.values) + ")"
        if kind == "object":
            return f"<object@{self.store}>"
        return kind

    @property
    def is_object(self) -> bool:
        return self.kind == "object"

    def sql(self, dialect: str) -> str:
        """The column type for ``dialect`` (``'sqlite'`` or ``'mysql'``)."""
        kind = self.kind
        if _check_dialect(dialect) == "sqlite":
            if kind in ("int", "uint", "bool"):
                return "INTEGER"
            if kind == "float":
                return "REAL"
            return "TEXT"
        if kind in _INTEGER_KINDS:
            name = {8: "tinyint", 16: "smallint", 32: "int", 64: "bigint"}[self.bits]
            return name + " unsigned" if kind == "uint" else name
        if kind == "float":
            return "float" if self.bits == 32 else "double"
        simple = {
            "bool": "tinyint",
            "text": "longtext",
            "date": "date",
            "datetime": "datetime(6)",
            "json": "json",
            "uuid": "binary(16)",
            "object": "json",
        }
        if kind in simple:
            return simple[kind]
        if kind in ("varchar", "char"):
            return f"{kind}({self.length})"
        if kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return "enum(" + ",".join(_sql_string(v, dialect) for v in self.values) + ")"


@dataclass(frozen=True)
class Attribute:
    """One column: its name, type, key membership, nullability and default.

    ``default`` is :data:`NO_DEFAULT`, ``None`` (nullable attributes),
    :data:`CURRENT_TIMESTAMP`, or an already decoded Python value.
    """

    name: str
    type: AttrType
    in_key: bool
    nullable: bool
    default: object = NO_DEFAULT
    comment: str = ""

    def encode(self, value: object, dialect: str) -> object:
        """Convert a Python value into a parameter for a ``dialect`` query."""
        _check_dialect(dialect)
        if value is None:
            if self.nullable:
                return None
            raise DataError(
                f"attribute {self.name!r} is not nullable: expected {self.type}, "
                "got None"
            )
        return _to_db(self, _normalize(self, value), dialect)

    def decode(self, value: object, dialect: str) -> object:
        """Convert a value fetched from a ``dialect`` database to Python."""
        _check_dialect(dialect)
        if value is None:
            return None
        return _from_db(self, value, dialect)

    def column_sql(self, dialect: str, quote: Callable[[str], str]) -> str:
        """The column definition for CREATE TABLE, e.g. ``"x" INTEGER NOT NULL``."""
        parts = [quote(self.name), self.type.sql(dialect)]
        if not self.nullable:
            parts.append("NOT NULL")
        if self.default is CURRENT_TIMESTAMP:
            # MySQL insists the default's precision match datetime(6).
            now = "CURRENT_TIMESTAMP(6)" if dialect == "mysql" else "CURRENT_TIMESTAMP"
            parts.append("DEFAULT " + now)
        elif self.default is not NO_DEFAULT and self.default is not None:
            literal = _sql_literal(self.encode(self.default, dialect), dialect)
            if dialect == "mysql" and self.type.kind in ("text", "json", "object"):
                # MySQL accepts defaults on TEXT/JSON only as expressions;
                # MariaDB accepts the same spelling.
                literal = f"({literal})"
            parts.append("DEFAULT " + literal)
        if dialect == "sqlite" and self.type.kind == "enum":
            options = ", ".join(_sql_string(v, dialect) for v in self.type.values)
            parts.append(f"CHECK ({quote(self.name)} IN ({options}))")
        return " ".join(parts)


@dataclass(frozen=True)
class Heading:
    """The attributes of a table in definition order, and its comment."""

    attributes: tuple[Attribute, ...]
    comment: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))

    @cached_property
    def _by_name(self) -> dict[str, Attribute]:
        return {a.name: a for a in self.attributes}

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes if a.in_key)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def object_fields(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes if a.type.is_object)

    def __getitem__(self, name: str) -> Attribute:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"no attribute {name!r}; attributes are {', '.join(self.names)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Attribute]:
        # Without this, iteration would fall back to __getitem__(0).
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)


# ---------------------------------------------------------------------------
# Codecs


def _fail(attr: Attribute, expected: str, value: object) -> DataError:
    return DataError(
        f"attribute {attr.name!r}: expected {expected}, got {_show(value)}"
    )


def _is_bool(value: object) -> bool:
    if isinstance(value, bool):
        return True
    # numpy booleans without importing numpy: a 0-d value of dtype kind 'b'.
    dtype = getattr(value, "dtype", None)
    return getattr(dtype, "kind", None) == "b" and getattr(value, "ndim", 1) == 0


def _int_range(t: AttrType) -> tuple[int, int]:
    bits = t.bits or 64
    if t.kind == "int":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _parse_date(attr: Attribute, value: str) -> _dt.date:
    expected = "a datetime.date or an ISO date string 'YYYY-MM-DD'"
    # fromisoformat alone would also take week dates and compact forms.
    if not _DATE_RE.fullmatch(value):
        raise _fail(attr, expected, value)
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise _fail(attr, expected, value) from None


def _check_naive(attr: Attribute, value: _dt.datetime, original: object) -> None:
    if value.tzinfo is not None:
        raise _fail(
            attr, "a naive datetime (convert to UTC or local time first)", original
        )


def _normalize(attr: Attribute, value: object) -> object:
    """Check ``value`` against the attribute and return its canonical form."""
    t = attr.type
    kind = t.kind
    if kind in _INTEGER_KINDS:
        if _is_bool(value):
            raise _fail(attr, f"an integer for {t}", value)
        try:
            number = operator.index(value)
        except TypeError:
            raise _fail(attr, f"an integer for {t}", value) from None
        low, high = _int_range(t)
        if not low <= number <= high:
            raise _fail(attr, f"an integer in [{low}, {high}] for {t}", value)
        return number
    if kind == "float":
        if _is_bool(value) or not isinstance(value, numbers.Real):
            raise _fail(attr, f"a real number for {t}", value)
        try:
            number = float(value)
        except OverflowError:
            raise _fail(attr, f"a number within the range of {t}", value) from None
        if t.bits == 32 and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
            raise _fail(attr, f"a number within +-{_FLOAT32_MAX} for {t}", value)
        return number
    if kind == "bool":
        if not _is_bool(value):
            raise _fail(attr, "a bool", value)
        return bool(value)
    if kind in ("varchar", "char", "text"):
        if not isinstance(value, str):
            raise _fail(attr, f"a str for {t}", value)
        if t.length is not None and len(value) > t.length:
            raise DataError(
                f"attribute {attr.name!r}: expected at most {t.length} characters "
                f"for {t}, got {len(value)} characters: {_show(value)}"
            )
        return str(value)
    if kind == "date":
        if isinstance(value, str):
            return _parse_date(attr, value)
        # datetime is a date subclass, but silently dropping its time is a bug.
        if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
            return value
        raise _fail(attr, "a datetime.date or an ISO date string 'YYYY-MM-DD'", value)
    if kind == "datetime":
        expected = "a datetime.datetime or an ISO datetime string"
        if isinstance(value, _dt.datetime):
            moment = value
        elif isinstance(value, str):
            try:
                moment = _dt.datetime.fromisoformat(value)
            except ValueError:
                raise _fail(attr, expected, value) from None
        else:
            raise _fail(attr, expected, value)
        _check_naive(attr, moment, value)
        return moment
    if kind == "uuid":
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        raise _fail(attr, "a uuid.UUID or a UUID string", value)
    if kind == "decimal":
        return _normalize_decimal(attr, value)
    if kind == "enum":
        if not isinstance(value, str) or value not in t.values:
            raise _fail(attr, f"one of {t.values!r}", value)
        return str(value)
    if kind == "object":
        if not isinstance(value, dict):
            raise _fail(attr, "a dict of object metadata", value)
        return value
    # json: serializability is checked once, when encoding.
    return value


def _normalize_decimal(attr: Attribute, value: object) -> decimal.Decimal:
    t = attr.type
    expected = f"a Decimal, int or numeric str for {t}"
    if _is_bool(value) or isinstance(value, float):
        raise _fail(attr, expected, value)
    if isinstance(value, decimal.Decimal):
        number = value
    elif isinstance(value, str):
        try:
            number = decimal.Decimal(value)
        except decimal.InvalidOperation:
            raise _fail(attr, expected, value) from None
    else:
        try:
            number = decimal.Decimal(operator.index(value))
        except TypeError:
            raise _fail(attr, expected, value) from None
    if not number.is_finite():
        raise _fail(attr, f"a finite number for {t}", value)
    scale, precision = t.scale or 0, t.precision or 0
    quantized = number.quantize(
        decimal.Decimal(1).scaleb(-scale), context=_DECIMAL_CONTEXT
    )
    if quantized != number:
        raise _fail(attr, f"at most {scale} digits after the point for {t}", value)
    if abs(quantized) >= decimal.Decimal(10) ** (precision - scale):
        raise _fail(
            attr, f"at most {precision - scale} digits before the point for {t}", value
        )
    return quantized


def _to_db(attr: Attribute, value: object, dialect: str) -> object:
    """Turn a canonical value into the parameter ``dialect`` stores."""
    kind = attr.type.kind
    sqlite = dialect == "sqlite"
    if kind == "uint" and sqlite and value > _SQLITE_INT_MAX:
        raise _fail(
            attr, f"an integer <= {_SQLITE_INT_MAX} (SQLite integers are signed)", value
        )
    if kind == "float" and not math.isfinite(value):
        if not sqlite:
            raise _fail(attr, "a finite number (MariaDB stores no NaN or inf)", value)
        if math.isnan(value):
            # SQLite would bind NaN as NULL; text keeps it distinct.
            return "NaN"
    if kind == "bool":
        return 1 if value else 0
    if kind == "date" and sqlite:
        return value.isoformat()
    if kind == "datetime" and sqlite:
        return value.isoformat(sep=" ")
    if kind in ("json", "object"):
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _fail(attr, f"a JSON-serializable value ({exc})", value) from None
    if kind == "uuid":
        return str(value) if sqlite else value.bytes
    if kind == "decimal" and sqlite:
        return format(value, "f")
    return value


def _from_db(attr: Attribute, value: object, dialect: str) -> object:
    """Turn a value fetched from ``dialect`` into its Python form."""
    t = attr.type
    kind = t.kind
    if isinstance(value, (bytes, bytearray, memoryview)):
        if kind == "uuid" and len(value) == 16:
            return uuid.UUID(bytes=bytes(value))
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _cannot_decode(attr, value, dialect) from None
    try:
        if kind in _INTEGER_KINDS:
            if isinstance(value, str):
                return int(value)
            return operator.index(value)
        if kind == "float":
            if isinstance(value, (str, numbers.Real, decimal.Decimal)):
                return float(value)
            raise TypeError
        if kind == "bool":
            if value in (0, 1) and not isinstance(value, str):
                return bool(value)
            raise TypeError
        if kind in ("varchar", "char", "text", "enum"):
            if isinstance(value, str):
                return value
            raise TypeError
        if kind in ("json", "object"):
            if not isinstance(value, str):
                raise TypeError
            loaded = json.loads(value)
            if kind == "object" and not isinstance(loaded, dict):
                raise TypeError
            return loaded
        if kind == "decimal":
            if isinstance(value, float):
                # repr is the shortest text that round-trips the float.
                return decimal.Decimal(repr(value))
            if isinstance(value, (str, int, decimal.Decimal)):
                return decimal.Decimal(value)
            raise TypeError
        # date, datetime and uuid accept the same inputs as when encoding.
        return _normalize(attr, value)
    except (TypeError, ValueError, decimal.InvalidOperation):
        raise _cannot_decode(attr, value, dialect) from None


def _cannot_decode(attr: Attribute, value: object, dialect: str) -> DataError:
    return DataError(
        f"attribute {attr.name!r}: expected a {dialect} value for {attr.type}, "
        f"got {_show(value)}"
    )


# ---------------------------------------------------------------------------
# Parsing

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_STORE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIVIDER_RE = re.compile(r"-{3,}\s*(#.*)?")
_INT_LITERAL_RE = re.compile(r"[+-]?\d+")
_NUMBER_LITERAL_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_MYSQL_INT_RE = re.compile(
    r"(tinyint|smallint|mediumint|int|integer|bigint)"
    r"(?:\s*\(\s*\d+\s*\))?(?:\s+(unsigned))?",
    re.IGNORECASE,
)
_SIZED_RE = re.compile(r"(varchar|char)\s*\(\s*(\d+)\s*\)", re.IGNORECASE)
_DECIMAL_RE = re.compile(
    r"decimal\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.IGNORECASE
)
_TIME_RE = re.compile(r"(datetime|timestamp)\s*\(\s*[0-6]\s*\)", re.IGNORECASE)
_ENUM_RE = re.compile(r"enum\s*\((.*)\)", re.IGNORECASE | re.DOTALL)
_OBJECT_RE = re.compile(r"<\s*object\s*@(.*)>", re.IGNORECASE | re.DOTALL)
_MYSQL_INT_BITS = {
    "tinyint": 8,
    "smallint": 16,
    "mediumint": 32,
    "int": 32,
    "integer": 32,
    "bigint": 64,
}

_SIMPLE_TYPES: dict[str, AttrType] = {
    **{f"int{b}": AttrType("int", bits=b) for b in (8, 16, 32, 64)},
    **{f"uint{b}": AttrType("uint", bits=b) for b in (8, 16, 32, 64)},
    "float32": AttrType("float", bits=32),
    "float64": AttrType("float", bits=64),
    "float": AttrType("float", bits=32),
    "double": AttrType("float", bits=64),
    "double precision": AttrType("float", bits=64),
    # MySQL's REAL is DOUBLE unless the REAL_AS_FLOAT mode is set.
    "real": AttrType("float", bits=64),
    "bool": AttrType("bool"),
    "boolean": AttrType("bool"),
    "text": AttrType("text"),
    "mediumtext": AttrType("text"),
    "longtext": AttrType("text"),
    "date": AttrType("date"),
    "datetime": AttrType("datetime"),
    "timestamp": AttrType("datetime"),
    "json": AttrType("json"),
    "uuid": AttrType("uuid"),
}
_NOT_IN_KEY = {
    "float": "floats compare inexactly",
    "json": "JSON values have no reliable equality",
    "text": "text columns cannot be indexed whole",
    "object": "objects live in a store, not in the row",
}


class _LineError(Exception):
    """A problem found inside a line; the caller adds the line to the message."""


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted string at ``text[start]``; return it and the index after.

    A doubled quote or a backslash-escaped quote or backslash stands for
    itself; any other backslash is kept, so Windows paths survive.
    """
    quote = text[start]
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
            chars.append(text[i + 1])
            i += 2
        elif c == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                chars.append(quote)
                i += 2
            else:
                return "".join(chars), i + 1
        else:
            chars.append(c)
            i += 1
    raise _LineError(
        f"expected a closing {quote} for the string starting at column {start + 1}, "
        "got the end of the line"
    )


def _split_line(text: str) -> tuple[str, str | None, str, str]:
    """Split ``name [= default] : type [# comment]`` respecting quotes."""
    colon = equals = None
    comment_at = len(text)
    i = 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            _, i = _read_quoted(text, i)
            continue
        if c == "#":
            comment_at = i
            break
        if c == ":" and colon is None:
            colon = i
        elif c == "=" and colon is None and equals is None:
            equals = i
        i += 1
    if colon is None:
        raise _LineError(
            "expected 'name [= default] : type [# comment]', got no ':' before "
            "the comment"
        )
    comment = text[comment_at + 1 :].strip()
    type_text = text[colon + 1 : comment_at].strip()
    if equals is None:
        return text[:colon].strip(), None, type_text, comment
    return text[:equals].strip(), text[equals + 1 : colon].strip(), type_text, comment


def _parse_enum_values(inner: str) -> tuple[str, ...]:
    values: list[str] = []
    i, n = 0, len(inner)
    while True:
        while i < n and inner[i].isspace():
            i += 1
        if i >= n or inner[i] not in "'\"":
            got = repr(inner[i:]) if i < n else "nothing"
            raise _LineError(f"expected a quoted enum value, got {got}")
        value, i = _read_quoted(inner, i)
        values.append(value)
        while i < n and inner[i].isspace():
            i += 1
        if i == n:
            break
        if inner[i] != ",":
            raise _LineError(
                f"expected ',' or ')' after enum value {value!r}, got {inner[i:]!r}"
            )
        i += 1
    seen: dict[str, str] = {}
    for value in values:
        # MariaDB compares enum values case-insensitively and rejects such twins.
        folded = value.casefold()
        if folded in seen:
            raise _LineError(
                f"expected distinct enum values, got {seen[folded]!r} and {value!r}"
            )
        seen[folded] = value
    return tuple(values)


def _parse_type(text: str) -> AttrType:
    spelled = " ".join(text.split())
    lower = spelled.lower()
    if lower in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[lower]
    match = _OBJECT_RE.fullmatch(spelled)
    if match:
        store = match.group(1).strip()
        if not store:
            return AttrType("object", store="default")
        if not _STORE_RE.fullmatch(store):
            raise _LineError(
                f"expected a store name matching {_STORE_RE.pattern}, got {store!r}"
            )
        return AttrType("object", store=store)
    match = _ENUM_RE.fullmatch(spelled)
    if match:
        # Use the unnormalized text so spaces inside values survive.
        inner = _ENUM_RE.fullmatch(text.strip())
        return AttrType("enum", values=_parse_enum_values(inner.group(1)))
    match = _SIZED_RE.fullmatch(spelled)
    if match:
        kind, length = match.group(1).lower(), int(match.group(2))
        limit = _MAX_CHAR if kind == "char" else _MAX_VARCHAR
        if not 1 <= length <= limit:
            raise _LineError(f"expected a {kind} length in [1, {limit}], got {length}")
        return AttrType(kind, length=length)
    match = _DECIMAL_RE.fullmatch(spelled)
    if match:
        precision = int(match.group(1))
        scale = int(match.group(2) or 0)
        if not 1 <= precision <= _MAX_DECIMAL_PRECISION:
            raise _LineError(
                f"expected a decimal precision in [1, {_MAX_DECIMAL_PRECISION}], "
                f"got {precision}"
            )
        if not 0 <= scale <= min(precision, _MAX_DECIMAL_SCALE):
            raise _LineError(
                f"expected a decimal scale in [0, {min(precision, _MAX_DECIMAL_SCALE)}]"
                f", got {scale}"
            )
        return AttrType("decimal", precision=precision, scale=scale)
    match = _MYSQL_INT_RE.fullmatch(spelled)
    if match:
        bits = _MYSQL_INT_BITS[match.group(1).lower()]
        return AttrType("uint" if match.group(2) else "int", bits=bits)
    if _TIME_RE.fullmatch(spelled):
        return AttrType("datetime")
    if not spelled:
        raise _LineError(
            f"expected a type after ':', got nothing; supported: {_SUPPORTED}"
        )
    if "blob" in lower or "binary" in lower:
        raise _LineError(
            f"expected a supported type, got {spelled!r}: binary and blob types are "
            f"not supported; supported: {_SUPPORTED}"
        )
    raise _LineError(
        f"expected a supported type, got {spelled!r}; supported: {_SUPPORTED}"
    )


def _parse_default(raw: str, attr: Attribute) -> object:
    """Turn the default's text into the canonical Python value for ``attr``."""
    t = attr.type
    kind = t.kind
    if not raw:
        raise _LineError("expected a default value after '=', got nothing")
    if kind == "object":
        # An object default would share one stored object among many rows.
        raise _LineError(f"expected null as the only default for {t}, got {raw!r}")
    word = raw.lower()
    if raw[0] in "'\"":
        text, end = _read_quoted(raw, 0)
        if raw[end:].strip():
            raise _LineError(
                f"expected one quoted default, got {raw!r} with text after the quote"
            )
        if kind in ("int", "uint", "float", "bool"):
            raise _LineError(f"expected an unquoted default for {t}, got {raw!r}")
        if kind == "json":
            try:
                return json.loads(text)
            except ValueError:
                raise _LineError(
                    f"expected JSON text as the default for json, got {raw!r}"
                ) from None
        value: object = text
    elif word == "current_timestamp":
        if kind != "datetime":
            raise _LineError(
                f"expected CURRENT_TIMESTAMP only for datetime, got it for {t}"
            )
        return CURRENT_TIMESTAMP
    elif word in ("true", "false"):
        if kind not in ("bool", "json"):
            raise _LineError(f"expected true/false only for bool or json, got {t}")
        return word == "true"
    elif _NUMBER_LITERAL_RE.fullmatch(raw):
        is_int = bool(_INT_LITERAL_RE.fullmatch(raw))
        if kind == "bool":
            if raw not in ("0", "1"):
                raise _LineError(f"expected true, false, 0 or 1 for bool, got {raw!r}")
            return raw == "1"
        if kind in _INTEGER_KINDS:
            if not is_int:
                raise _LineError(f"expected an integer default for {t}, got {raw!r}")
            value = int(raw)
        elif kind in ("float", "json"):
            value = int(raw) if kind == "json" and is_int else float(raw)
            # '1e999' reads as inf, which has no SQL literal.
            if isinstance(value, float) and not math.isfinite(value):
                raise _LineError(f"expected a finite default for {t}, got {raw!r}")
            if kind == "json":
                return value
        elif kind == "decimal":
            value = raw
        else:
            raise _LineError(f"expected a quoted default for {t}, got {raw!r}")
    else:
        raise _LineError(
            "expected a number, a quoted string, null, true, false or "
            f"CURRENT_TIMESTAMP as the default, got {raw!r}"
        )
    try:
        return _normalize(attr, value)
    except DataError as exc:
        raise _LineError(f"invalid default {raw!r}: {exc}") from None


def _parse_attribute(text: str, in_key: bool) -> Attribute:
    name, raw_default, type_text, comment = _split_line(text)
    if not _NAME_RE.fullmatch(name):
        raise _LineError(
            f"expected an attribute name matching {_NAME_RE.pattern}, got {name!r}"
        )
    attr_type = _parse_type(type_text)
    nullable = raw_default is not None and raw_default.lower() == "null"
    attr = Attribute(
        name=name,
        type=attr_type,
        in_key=in_key,
        nullable=nullable,
        default=None if nullable else NO_DEFAULT,
        comment=comment,
    )
    if in_key:
        if nullable:
            raise _LineError(
                f"expected primary-key attribute {name!r} to be non-nullable, "
                "got default null; move it below '---'"
            )
        if attr_type.kind in _NOT_IN_KEY:
            raise _LineError(
                f"expected a key-able type for primary-key attribute {name!r}, got "
                f"{attr_type} ({_NOT_IN_KEY[attr_type.kind]}); move it below '---'"
            )
    if raw_default is not None and not nullable:
        default = _parse_default(raw_default, attr)
        attr = Attribute(name, attr_type, in_key, False, default, comment)
    return attr


def parse_definition(definition: str) -> Heading:
    """Parse a DataJoint-style table definition into a :class:`Heading`.

    Raises :class:`DefinitionError` naming the 1-based line and its text.
    """
    if not isinstance(definition, str):
        raise DefinitionError(f"definition: expected a str, got {_show(definition)}")
    attributes: list[Attribute] = []
    first_line: dict[str, int] = {}
    table_comment = ""
    in_key = True
    divider_line: int | None = None
    seen_content = False
    for number, line in enumerate(definition.splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        where = f"line {number} {text!r}"
        if text.startswith("#"):
            if not seen_content:
                table_comment = text[1:].strip()
            seen_content = True
            continue
        seen_content = True
        if text.startswith("->"):
            raise DefinitionError(
                f"{where}: expected an attribute or '---', got a foreign key; "
                "foreign keys are not supported yet"
            )
        if _DIVIDER_RE.fullmatch(text):
            if divider_line is not None:
                raise DefinitionError(
                    f"{where}: expected one '---' divider, got a second one "
                    f"(the first is on line {divider_line})"
                )
            divider_line = number
            in_key = False
            continue
        try:
            attr = _parse_attribute(text, in_key)
        except _LineError as exc:
            raise DefinitionError(f"{where}: {exc}") from None
        if attr.name in first_line:
            raise DefinitionError(
                f"{where}: expected a new attribute name, got {attr.name!r} "
                f"again (first on line {first_line[attr.name]})"
            )
        first_line[attr.name] = number
        attributes.append(attr)
    if not any(a.in_key for a in attributes):
        raise DefinitionError(
            "definition: expected at least one primary-key attribute above '---', "
            f"got {'none' if attributes else 'no attributes at all'}"
        )
    return Heading(tuple(attributes), table_comment)
