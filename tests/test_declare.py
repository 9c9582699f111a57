"""Tests for stagerd_client.declare: definition parsing, SQL and codecs."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import math
import pickle
import sqlite3
import uuid

import numpy as np
import pytest

from stagerd.core.errors import ConfigError, DataError, DefinitionError
from stagerd_client.declare import (
    CURRENT_TIMESTAMP,
    NO_DEFAULT,
    Attribute,
    AttrType,
    Heading,
    parse_definition,
)

__all__: list[str] = []

EXAMPLE = """\
# optional table comment on the first line starting with '#'
subject_id : int32            # comment
session_id : uint16
---
n_frames = 0     : int64          # default value 0
frame_rate = null : float32       # nullable (default null)
note = "hello"   : varchar(64)
mode : enum('fast', 'slow')
frames : <object@>                # object in the default store
raw    : <object@raw>             # object in the store named raw
"""


def dq(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def one(type_text: str, default: str | None = None) -> Attribute:
    """Parse a one-attribute secondary column of the given type."""
    line = f"x = {default} : {type_text}" if default is not None else f"x : {type_text}"
    return parse_definition(f"id : int32\n---\n{line}\n")["x"]


def sqlite_round_trip(attr: Attribute, value: object) -> object:
    """Store ``value`` through a real SQLite column and decode it back."""
    con = sqlite3.connect(":memory:")
    try:
        con.execute(f"CREATE TABLE t ({attr.column_sql('sqlite', dq)})")
        con.execute("INSERT INTO t VALUES (?)", (attr.encode(value, "sqlite"),))
        (stored,) = con.execute("SELECT * FROM t").fetchone()
    finally:
        con.close()
    return attr.decode(stored, "sqlite")


# --------------------------------------------------------------------------
# Parsing the example


def test_example_parses() -> None:
    h = parse_definition(EXAMPLE)
    assert h.comment == "optional table comment on the first line starting with '#'"
    assert h.primary_key == ("subject_id", "session_id")
    assert h.names == (
        "subject_id", "session_id", "n_frames", "frame_rate", "note", "mode",
        "frames", "raw",
    )
    assert h.object_fields == ("frames", "raw")
    assert [a.in_key for a in h.attributes] == [True, True] + [False] * 6

    assert h["subject_id"].type == AttrType("int", bits=32)
    assert h["subject_id"].comment == "comment"
    assert h["session_id"].type == AttrType("uint", bits=16)
    assert h["session_id"].default is NO_DEFAULT

    n_frames = h["n_frames"]
    assert (n_frames.default, type(n_frames.default)) == (0, int)
    assert not n_frames.nullable and n_frames.comment == "default value 0"

    rate = h["frame_rate"]
    assert rate.nullable and rate.default is None
    assert rate.type == AttrType("float", bits=32)

    assert h["note"].default == "hello"
    assert h["note"].type == AttrType("varchar", length=64)
    assert h["mode"].type.values == ("fast", "slow")
    assert h["mode"].default is NO_DEFAULT

    assert h["frames"].type.store == "default" and h["frames"].type.is_object
    assert h["raw"].type.store == "raw" and h["raw"].type.is_object
    assert not h["note"].type.is_object


def test_heading_lookup() -> None:
    h = parse_definition(EXAMPLE)
    assert "note" in h and "nope" not in h
    with pytest.raises(KeyError, match="nope"):
        h["nope"]
    assert [a.name for a in h] == list(h.names)
    assert len(h) == 8
    # A Heading built by hand behaves like a parsed one.
    built = Heading(tuple(h.attributes), "c")
    assert built["raw"] is h["raw"] and built.primary_key == h.primary_key


def test_no_divider_puts_everything_in_key_and_no_comment() -> None:
    h = parse_definition("\n  a : int32\n\n  b : varchar(8)  # why\n")
    assert h.primary_key == ("a", "b")
    assert h.comment == ""
    assert h["b"].comment == "why"


def test_comment_lines_and_long_divider_are_ignored() -> None:
    h = parse_definition(
        "# table\na : int32\n# not a table comment\n------ # sec\nb : bool"
    )
    assert h.comment == "table"
    assert h.primary_key == ("a",)
    assert h["b"].in_key is False


def test_keywords_are_case_insensitive() -> None:
    h = parse_definition(
        "a : INT32\n---\nb = NULL : VarChar(3)\nc = TRUE : BOOL\n"
        "d = current_timestamp : DateTime\ne : <OBJECT@Raw_1>"
    )
    assert h["a"].type == AttrType("int", bits=32)
    assert h["b"].nullable and h["b"].type.length == 3
    assert h["c"].default is True
    assert h["d"].default is CURRENT_TIMESTAMP
    assert h["e"].type.store == "Raw_1"


# --------------------------------------------------------------------------
# Quoting inside defaults and enum values


@pytest.mark.parametrize(
    ("line", "default", "comment"),
    [
        ('x = "a # b" : varchar(20)  # real', "a # b", "real"),
        ("x = 'k: v' : varchar(20)", "k: v", ""),
        ("x = 'a:#b' : varchar(20) # c: d # e", "a:#b", "c: d # e"),
        ("x = 'it''s' : varchar(20)", "it's", ""),
        (r"x = 'it\'s' : varchar(20)", "it's", ""),
        (r'x = "say \"hi\"" : varchar(20)', 'say "hi"', ""),
        ("x = '' : varchar(20)", "", ""),
        (r"x = 'C:\data' : varchar(20)", "C:\\data", ""),
        ("x = '=' : varchar(20)", "=", ""),
    ],
)
def test_quoted_defaults(line: str, default: str, comment: str) -> None:
    attr = parse_definition(f"id : int32\n---\n{line}")["x"]
    assert attr.default == default
    assert attr.comment == comment


def test_enum_values_with_commas_quotes_hash_and_colon() -> None:
    attr = parse_definition(
        "id : int32\n---\n"
        "x = 'a,b' : enum('a,b', \"c'd\", 'e#f', 'g:h', 'i''j', ' sp ')  # note, here"
    )["x"]
    assert attr.type.values == ("a,b", "c'd", "e#f", "g:h", "i'j", " sp ")
    assert attr.default == "a,b"
    assert attr.comment == "note, here"
    for value in attr.type.values:
        for dialect in ("sqlite", "mysql"):
            assert attr.decode(attr.encode(value, dialect), dialect) == value
    # str() spells the type so that parsing it again gives the same values.
    again = one(str(attr.type))
    assert again.type == attr.type


# --------------------------------------------------------------------------
# Types and their SQL

SQL_TYPES = [
    ("int8", "INTEGER", "tinyint"),
    ("int16", "INTEGER", "smallint"),
    ("int32", "INTEGER", "int"),
    ("int64", "INTEGER", "bigint"),
    ("uint8", "INTEGER", "tinyint unsigned"),
    ("uint16", "INTEGER", "smallint unsigned"),
    ("uint32", "INTEGER", "int unsigned"),
    ("uint64", "INTEGER", "bigint unsigned"),
    ("float32", "REAL", "float"),
    ("float64", "REAL", "double"),
    ("bool", "INTEGER", "tinyint"),
    ("varchar(10)", "TEXT", "varchar(10)"),
    ("char(3)", "TEXT", "char(3)"),
    ("longtext", "TEXT", "longtext"),
    ("date", "TEXT", "date"),
    ("datetime", "TEXT", "datetime(6)"),
    ("json", "TEXT", "json"),
    ("uuid", "TEXT", "binary(16)"),
    ("decimal(6,2)", "TEXT", "decimal(6,2)"),
    ("enum('a', 'b''c')", "TEXT", "enum('a','b''c')"),
    ("<object@>", "TEXT", "json"),
    ("<object@raw>", "TEXT", "json"),
]


@pytest.mark.parametrize(("spelled", "sqlite", "mysql"), SQL_TYPES)
def test_sql_types(spelled: str, sqlite: str, mysql: str) -> None:
    t = one(spelled).type
    assert t.sql("sqlite") == sqlite
    assert t.sql("mysql") == mysql


@pytest.mark.parametrize(
    ("spelled", "expected"),
    [
        ("tinyint", AttrType("int", bits=8)),
        ("tinyint(1)", AttrType("int", bits=8)),
        ("tinyint unsigned", AttrType("uint", bits=8)),
        ("smallint", AttrType("int", bits=16)),
        ("smallint(5) unsigned", AttrType("uint", bits=16)),
        ("mediumint", AttrType("int", bits=32)),
        ("mediumint unsigned", AttrType("uint", bits=32)),
        ("int", AttrType("int", bits=32)),
        ("INT(11)", AttrType("int", bits=32)),
        ("int unsigned", AttrType("uint", bits=32)),
        ("integer", AttrType("int", bits=32)),
        ("bigint", AttrType("int", bits=64)),
        ("BIGINT(20)  UNSIGNED", AttrType("uint", bits=64)),
        ("float", AttrType("float", bits=32)),
        ("double", AttrType("float", bits=64)),
        ("real", AttrType("float", bits=64)),
        ("boolean", AttrType("bool")),
        ("text", AttrType("text")),
        ("mediumtext", AttrType("text")),
        ("longtext", AttrType("text")),
        ("timestamp", AttrType("datetime")),
        ("datetime(6)", AttrType("datetime")),
        ("decimal(5)", AttrType("decimal", precision=5, scale=0)),
        ("Decimal( 10 , 3 )", AttrType("decimal", precision=10, scale=3)),
    ],
)
def test_mysql_spellings(spelled: str, expected: AttrType) -> None:
    assert one(spelled).type == expected


def test_text_is_allowed_as_secondary_only() -> None:
    assert one("mediumtext").type.kind == "text"
    with pytest.raises(DefinitionError, match=r"line 1 .*cannot be indexed"):
        parse_definition("x : longtext")


def test_unknown_dialect_is_refused() -> None:
    attr = one("int32")
    with pytest.raises(ConfigError, match="postgres"):
        attr.type.sql("postgres")
    with pytest.raises(ConfigError, match="postgres"):
        attr.encode(1, "postgres")
    with pytest.raises(ConfigError, match="postgres"):
        attr.decode(1, "postgres")


# --------------------------------------------------------------------------
# Codecs: round trips

U = uuid.UUID("12345678-1234-5678-1234-567812345678")
ROUND_TRIPS = [
    ("int8", -128),
    ("int8", 127),
    ("uint8", 255),
    ("int16", -32768),
    ("uint16", 65535),
    ("int32", -(2**31)),
    ("uint32", 2**32 - 1),
    ("int64", -(2**63)),
    ("int64", 2**63 - 1),
    ("uint64", 2**63 - 1),
    ("float32", 1.5),
    ("float64", 0.1),
    ("bool", True),
    ("bool", False),
    ("varchar(5)", "héllo"),
    ("char(2)", "ab"),
    ("text", "x" * 10_000),
    ("date", dt.date(2024, 2, 29)),
    ("datetime", dt.datetime(2024, 2, 29, 13, 5, 7)),
    ("datetime", dt.datetime(2024, 2, 29, 13, 5, 7, 123456)),
    ("json", {"a": [1, 2.5, None, "s"], "b": {"c": True}}),
    ("json", [1, "two"]),
    ("json", "just a string"),
    ("uuid", U),
    ("decimal(6,2)", decimal.Decimal("-1234.56")),
    ("decimal(40,20)", decimal.Decimal("12345678901234567890.12345678901234567890")),
    ("enum('fast','slow')", "slow"),
    ("<object@>", {"path": "a/b", "size": 3, "files": ["x"]}),
]


@pytest.mark.parametrize(("spelled", "value"), ROUND_TRIPS)
def test_round_trip_sqlite(spelled: str, value: object) -> None:
    attr = one(spelled)
    back = sqlite_round_trip(attr, value)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize(("spelled", "value"), ROUND_TRIPS)
def test_round_trip_mysql(spelled: str, value: object) -> None:
    attr = one(spelled)
    back = attr.decode(attr.encode(value, "mysql"), "mysql")
    assert back == value
    assert type(back) is type(value)


def test_mysql_uint64_full_range() -> None:
    attr = one("uint64")
    assert attr.decode(attr.encode(2**64 - 1, "mysql"), "mysql") == 2**64 - 1
    with pytest.raises(DataError, match=r"'x'.*signed"):
        attr.encode(2**63, "sqlite")


@pytest.mark.parametrize(
    ("spelled", "value", "sqlite", "mysql"),
    [
        ("bool", True, 1, 1),
        ("bool", False, 0, 0),
        ("date", dt.date(2020, 1, 2), "2020-01-02", dt.date(2020, 1, 2)),
        (
            "datetime",
            dt.datetime(2020, 1, 2, 3, 4, 5, 6),
            "2020-01-02 03:04:05.000006",
            dt.datetime(2020, 1, 2, 3, 4, 5, 6),
        ),
        ("datetime", "2020-01-02T03:04:05", "2020-01-02 03:04:05",
         dt.datetime(2020, 1, 2, 3, 4, 5)),
        ("uuid", str(U).upper(), str(U), U.bytes),
        ("uuid", U, str(U), U.bytes),
        ("decimal(6,2)", decimal.Decimal("1.5"), "1.50", decimal.Decimal("1.50")),
        ("decimal(6,2)", 7, "7.00", decimal.Decimal("7.00")),
        ("decimal(12,10)", "1E-7", "0.0000001000", decimal.Decimal("1E-7")),
        ("json", {"a": 1}, '{"a": 1}', '{"a": 1}'),
        ("<object@raw>", {"k": "v"}, '{"k": "v"}', '{"k": "v"}'),
        ("int16", np.int16(-5), -5, -5),
        ("uint64", np.uint64(7), 7, 7),
        ("float32", np.float32(1.5), 1.5, 1.5),
        ("float64", 3, 3.0, 3.0),
        ("bool", np.bool_(True), 1, 1),
    ],
)
def test_encoded_forms(
    spelled: str, value: object, sqlite: object, mysql: object
) -> None:
    attr = one(spelled)
    for dialect, expected in (("sqlite", sqlite), ("mysql", mysql)):
        encoded = attr.encode(value, dialect)
        assert encoded == expected
        assert type(encoded) is type(expected)


def test_string_inputs_decode_to_python_types() -> None:
    assert one("date").encode("2021-03-04", "mysql") == dt.date(2021, 3, 4)
    assert one("date").decode("2021-03-04", "sqlite") == dt.date(2021, 3, 4)
    assert one("datetime").decode("2021-03-04 05:06:07", "sqlite") == dt.datetime(
        2021, 3, 4, 5, 6, 7
    )
    assert one("uuid").decode(str(U), "sqlite") == U
    assert one("uuid").decode(U.bytes, "mysql") == U
    assert one("json").decode(b'{"a": 1}', "mysql") == {"a": 1}
    assert one("decimal(5,2)").decode("1.20", "sqlite") == decimal.Decimal("1.20")
    assert one("varchar(3)").decode(b"abc", "mysql") == "abc"
    assert one("bool").decode(1, "mysql") is True


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_in_sqlite_but_not_mysql(value: float) -> None:
    attr = one("float64")
    back = sqlite_round_trip(attr, value)
    assert isinstance(back, float)
    assert back == value or (math.isnan(back) and math.isnan(value))
    with pytest.raises(DataError, match=r"'x'.*finite"):
        attr.encode(value, "mysql")


def test_nullable_none_and_decode_none() -> None:
    attr = one("float32", "null")
    for dialect in ("sqlite", "mysql"):
        assert attr.encode(None, dialect) is None
        assert attr.decode(None, dialect) is None
    # NULL from an outer join decodes even for a NOT NULL column.
    assert one("int32").decode(None, "sqlite") is None


# --------------------------------------------------------------------------
# Codecs: bad values

BAD_VALUES = [
    ("int32", None, "not nullable"),
    ("int32", True, "integer"),
    ("int32", 1.0, "integer"),
    ("int32", "1", "integer"),
    ("int32", np.float64(1.0), "integer"),
    ("int8", 128, r"\[-128, 127\]"),
    ("int8", -129, r"\[-128, 127\]"),
    ("uint8", -1, r"\[0, 255\]"),
    ("uint16", 65536, r"\[0, 65535\]"),
    ("int64", 2**63, "int64"),
    ("uint64", 2**64, "uint64"),
    ("float64", True, "real number"),
    ("float64", "1.0", "real number"),
    ("float64", decimal.Decimal(1), "real number"),
    ("float32", 1e39, "float32"),
    ("bool", 1, "bool"),
    ("bool", "true", "bool"),
    ("varchar(3)", "abcd", "at most 3 characters"),
    ("varchar(3)", 12, "str"),
    ("char(2)", "abc", "at most 2"),
    ("text", b"bytes", "str"),
    ("date", dt.datetime(2020, 1, 1), "datetime.date"),
    ("date", "2020-02-30", "YYYY-MM-DD"),
    ("date", "20200101", "YYYY-MM-DD"),
    ("date", 20200101, "YYYY-MM-DD"),
    ("datetime", dt.date(2020, 1, 1), "datetime.datetime"),
    ("datetime", "yesterday", "ISO"),
    ("datetime", dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), "naive"),
    ("json", {1, 2}, "JSON"),
    ("json", {"x": math.nan}, "JSON"),
    ("uuid", "not-a-uuid", "UUID"),
    ("uuid", 5, "UUID"),
    ("decimal(5,2)", decimal.Decimal("1.005"), "2 digits after"),
    ("decimal(5,2)", decimal.Decimal("1000"), "3 digits before"),
    ("decimal(5,2)", 1.5, "Decimal"),
    ("decimal(5,2)", "abc", "Decimal"),
    ("decimal(5,2)", decimal.Decimal("NaN"), "finite"),
    ("enum('a','b')", "c", "one of"),
    ("enum('a','b')", "A", "one of"),
    ("<object@>", "path", "dict"),
    ("<object@>", {"f": object()}, "JSON"),
]


@pytest.mark.parametrize(("spelled", "value", "expected"), BAD_VALUES)
@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_bad_values(spelled: str, value: object, expected: str, dialect: str) -> None:
    attr = one(spelled)
    with pytest.raises(DataError, match=expected) as info:
        attr.encode(value, dialect)
    assert "'x'" in str(info.value)


def test_bad_value_message_names_what_arrived() -> None:
    with pytest.raises(DataError) as info:
        one("int8").encode(300, "sqlite")
    assert "300" in str(info.value) and "'x'" in str(info.value)
    with pytest.raises(DataError) as info:
        one("varchar(2)").encode("a" * 1000, "sqlite")
    # The value is shown, but long values are cut short.
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("spelled", "stored", "dialect"),
    [
        ("int32", "abc", "sqlite"),
        ("int32", 1.5, "mysql"),
        ("json", "{not json", "mysql"),
        ("json", 5, "mysql"),
        ("<object@>", "[1, 2]", "sqlite"),
        ("uuid", b"short", "mysql"),
        ("date", "someday", "sqlite"),
        ("bool", 2, "mysql"),
        ("decimal(5,2)", "x", "sqlite"),
    ],
)
def test_bad_stored_values(spelled: str, stored: object, dialect: str) -> None:
    with pytest.raises(DataError, match="'x'"):
        one(spelled).decode(stored, dialect)


# --------------------------------------------------------------------------
# Definition errors

DEFINITION_ERRORS = [
    # (definition, line number, text expected in the message)
    ("a : int32\n-> Parent", 2, "foreign keys are not supported"),
    ("a = null : int32", 1, "nullable"),
    ("\na : json", 2, "key-able"),
    ("a : int32\nb : <object@>\n---", 2, "key-able"),
    ("a : float64", 1, "compare inexactly"),
    ("a : double", 1, "compare inexactly"),
    ("a : text", 1, "cannot be indexed"),
    ("a : int32\n---\nb : int8\nb : int16", 4, "first on line 3"),
    ("a : int32\n---\nb : int8\n---\nc : int8", 4, "second"),
    ("a : int32\n---\nBad : int8", 3, "name"),
    ("a : int32\n---\n2x : int8", 3, "name"),
    ("a : int32\n---\nb int8", 3, "':'"),
    ("a : int32\n---\nb : strange", 3, "supported"),
    ("a : int32\n---\nb : blob", 3, "not supported"),
    ("a : int32\n---\nb : longblob", 3, "int8, int16"),
    ("a : int32\n---\nb : <blob>", 3, "not supported"),
    ("a : int32\n---\nb :", 3, "type"),
    ("a : int32\n---\nb = 'open : varchar(5)", 3, "closing"),
    ("a : int32\n---\nb = : int8", 3, "default"),
    ("a : int32\n---\nb = 1.5 : int8", 3, "integer"),
    ("a : int32\n---\nb = 300 : int8", 3, "127"),
    ("a : int32\n---\nb = -1 : uint8", 3, "255"),
    ("a : int32\n---\nb = '5' : int8", 3, "unquoted"),
    ("a : int32\n---\nb = 'toolong' : varchar(3)", 3, "at most 3"),
    ("a : int32\n---\nb = hello : varchar(9)", 3, "quoted string"),
    ("a : int32\n---\nb = 5 : varchar(9)", 3, "quoted"),
    ("a : int32\n---\nb = 'c' : enum('a', 'b')", 3, "one of"),
    ("a : int32\n---\nb = CURRENT_TIMESTAMP : int64", 3, "datetime"),
    ("a : int32\n---\nb = CURRENT_TIMESTAMP : date", 3, "datetime"),
    ("a : int32\n---\nb = true : int8", 3, "bool"),
    ("a : int32\n---\nb = 2 : bool", 3, "true, false, 0 or 1"),
    ("a : int32\n---\nb = 1e999 : float64", 3, "finite"),
    ("a : int32\n---\nb = '2020-13-01' : date", 3, "YYYY-MM-DD"),
    ("a : int32\n---\nb = 'nope' : uuid", 3, "UUID"),
    ("a : int32\n---\nb = 1.234 : decimal(4,2)", 3, "digits after"),
    ("a : int32\n---\nb = '{bad' : json", 3, "JSON"),
    ("a : int32\n---\nb = '{}' : <object@>", 3, "null"),
    ("a : int32\n---\nb = 'a' 'b' : varchar(3)", 3, "one quoted"),
    ("a : int32\n---\nb : <object@bad-name>", 3, "store name"),
    ("a : int32\n---\nb : enum()", 3, "enum value"),
    ("a : int32\n---\nb : enum('a', 'A')", 3, "distinct"),
    ("a : int32\n---\nb : enum('a' 'b')", 3, "','"),
    ("a : int32\n---\nb : enum(a, b)", 3, "quoted enum value"),
    ("a : int32\n---\nb : char(0)", 3, "length"),
    ("a : int32\n---\nb : char(256)", 3, "length"),
    ("a : int32\n---\nb : varchar(70000)", 3, "length"),
    ("a : int32\n---\nb : decimal(3,5)", 3, "scale"),
    ("a : int32\n---\nb : decimal(66,2)", 3, "precision"),
]


@pytest.mark.parametrize(("definition", "line", "expected"), DEFINITION_ERRORS)
def test_definition_errors(definition: str, line: int, expected: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(definition)
    message = str(info.value)
    text = definition.splitlines()[line - 1].strip()
    assert f"line {line} {text!r}" in message
    assert expected in message


@pytest.mark.parametrize(
    "definition",
    ["", "\n  \n", "# only a comment", "---\nb : int8", "# c\n---\n"],
)
def test_definition_without_primary_key(definition: str) -> None:
    with pytest.raises(DefinitionError, match="primary-key"):
        parse_definition(definition)


def test_definition_must_be_text() -> None:
    with pytest.raises(DefinitionError, match="str"):
        parse_definition(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Defaults

DEFAULTS = [
    ("int8", "-5", -5),
    ("uint64", "18446744073709551615", 2**64 - 1),
    ("float32", "0", 0.0),
    ("float64", "-1.5e-3", -0.0015),
    ("bool", "true", True),
    ("bool", "False", False),
    ("bool", "1", True),
    ("varchar(8)", "'hi'", "hi"),
    ("text", '"long"', "long"),
    ("date", "'2020-01-02'", dt.date(2020, 1, 2)),
    ("datetime", "'2020-01-02 03:04:05'", dt.datetime(2020, 1, 2, 3, 4, 5)),
    ("json", "'{\"a\": [1]}'", {"a": [1]}),
    ("json", "3", 3),
    ("json", "false", False),
    ("uuid", f"'{U}'", U),
    ("decimal(6,2)", "1.5", decimal.Decimal("1.50")),
    ("decimal(6,2)", "'-2'", decimal.Decimal("-2.00")),
    ("enum('a','b')", "'b'", "b"),
]


@pytest.mark.parametrize(("spelled", "raw", "expected"), DEFAULTS)
def test_defaults_are_decoded(spelled: str, raw: str, expected: object) -> None:
    attr = one(spelled, raw)
    assert attr.default == expected
    assert type(attr.default) is type(expected)
    assert not attr.nullable


def test_float_default_is_a_float() -> None:
    assert type(one("float64", "2").default) is float


def test_current_timestamp_only_for_datetime() -> None:
    assert one("datetime", "CURRENT_TIMESTAMP").default is CURRENT_TIMESTAMP
    assert one("timestamp", "current_timestamp").default is CURRENT_TIMESTAMP


def test_sentinels_keep_identity() -> None:
    assert NO_DEFAULT is not None and NO_DEFAULT is not CURRENT_TIMESTAMP
    for sentinel in (NO_DEFAULT, CURRENT_TIMESTAMP):
        assert copy.deepcopy(sentinel) is sentinel
        assert pickle.loads(pickle.dumps(sentinel)) is sentinel
    attr = one("int8")
    assert pickle.loads(pickle.dumps(attr)).default is NO_DEFAULT


# --------------------------------------------------------------------------
# column_sql

def test_column_sql_text() -> None:
    h = parse_definition(EXAMPLE)
    assert (
        h["n_frames"].column_sql("sqlite", dq)
        == '"n_frames" INTEGER NOT NULL DEFAULT 0'
    )
    assert h["frame_rate"].column_sql("sqlite", dq) == '"frame_rate" REAL'
    assert h["mode"].column_sql("sqlite", dq) == (
        "\"mode\" TEXT NOT NULL CHECK (\"mode\" IN ('fast', 'slow'))"
    )
    bq = lambda name: f"`{name}`"  # noqa: E731
    assert (
        h["note"].column_sql("mysql", bq)
        == "`note` varchar(64) NOT NULL DEFAULT 'hello'"
    )
    assert h["frames"].column_sql("mysql", bq) == "`frames` json NOT NULL"


@pytest.mark.parametrize(
    ("spelled", "raw", "expected"),
    [
        ("varchar(9)", r"'it''s \ ok'", r"DEFAULT 'it''s \\ ok'"),
        ("text", "'t'", "DEFAULT ('t')"),
        ("json", "'[1]'", "DEFAULT ('[1]')"),
        ("datetime", "CURRENT_TIMESTAMP", "DEFAULT CURRENT_TIMESTAMP(6)"),
        ("uuid", f"'{U}'", f"DEFAULT X'{U.hex.upper()}'"),
        ("decimal(6,2)", "1.5", "DEFAULT 1.50"),
        ("bool", "true", "DEFAULT 1"),
        ("date", "'2020-01-02'", "DEFAULT '2020-01-02'"),
        ("enum('a','b')", "'b'", "enum('a','b') NOT NULL DEFAULT 'b'"),
    ],
)
def test_mysql_defaults(spelled: str, raw: str, expected: str) -> None:
    sql = one(spelled, raw).column_sql("mysql", lambda n: f"`{n}`")
    assert sql.endswith(expected), sql


FULL = """\
# every type, with and without defaults
id : int32
tag : varchar(8)
---
i8 = -8 : int8
u64 = 9223372036854775807 : bigint unsigned
f = 1.25 : float32
ok = true : bool
name = 'it''s # a: "name"' : varchar(32)
letter = 'x' : char(1)
body = 'long' : text
day = '2020-01-02' : date
stamp = '2020-01-02 03:04:05.5' : datetime
created = CURRENT_TIMESTAMP : timestamp
meta = '{"a": [1, 2]}' : json
uid = '12345678-1234-5678-1234-567812345678' : uuid
price = 9.5 : decimal(6,2)
mode = 'slow, really' : enum('fast', 'slow, really')
maybe = null : int16
blob_meta = null : <object@>
# required attributes, given on insert
must : varchar(4)
obj : <object@raw>
"""


def test_sqlite_table_from_column_sql() -> None:
    h = parse_definition(FULL)
    columns = [a.column_sql("sqlite", dq) for a in h.attributes]
    key = ", ".join(dq(n) for n in h.primary_key)
    con = sqlite3.connect(":memory:")
    con.execute(f"CREATE TABLE t ({', '.join(columns)}, PRIMARY KEY({key}))")

    row = {"id": 1, "tag": "a", "must": "m", "obj": {"path": "p", "size": 1}}
    names = list(row)
    con.execute(
        f"INSERT INTO t ({', '.join(map(dq, names))}) "
        f"VALUES ({', '.join('?' * len(names))})",
        [h[n].encode(row[n], "sqlite") for n in names],
    )
    cursor = con.execute(f"SELECT {', '.join(map(dq, h.names))} FROM t")
    fetched = dict(zip(h.names, cursor.fetchone()))
    got = {n: h[n].decode(v, "sqlite") for n, v in fetched.items()}

    for attr in h.attributes:
        if attr.name in row:
            assert got[attr.name] == row[attr.name]
        elif attr.default is CURRENT_TIMESTAMP:
            age = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - got[attr.name]
            assert abs(age) < dt.timedelta(minutes=5)
        else:
            assert got[attr.name] == attr.default, attr.name
            assert type(got[attr.name]) is type(attr.default), attr.name
    assert got["name"] == "it's # a: \"name\""
    assert got["stamp"] == dt.datetime(2020, 1, 2, 3, 4, 5, 500000)
    assert got["price"] == decimal.Decimal("9.50")
    assert got["maybe"] is None and got["blob_meta"] is None

    # The primary key and the column constraints are enforced by SQLite.
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            "INSERT INTO t (id, tag, must, obj) VALUES (1, 'a', 'm', '{}')"
        )
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            "INSERT INTO t (id, tag, must, obj, mode) VALUES (2, 'a', 'm', '{}', 'no')"
        )
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO t (id, tag, obj) VALUES (3, 'a', '{}')")
    con.close()
