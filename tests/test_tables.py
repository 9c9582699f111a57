"""Declaring tables, inserting, restricting and fetching rows."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest

import stagerd_client as dj
from lab import declare, schema_name


@pytest.fixture
def schema(client_config):
    return dj.Schema(schema_name("lab"))


def test_all_core_types_round_trip(schema):
    @schema
    class Everything(dj.Manual):
        definition = """
        id : uint16
        ---
        i8 : int8
        f64 : float64
        flag : bool
        name : varchar(20)
        code : char(3)
        day : date
        at : datetime
        blob_json : json
        uid : uuid
        price : decimal(8,2)
        mode : enum('fast', 'slow')
        count = 7 : int unsigned       # MySQL spelling
        note = null : varchar(10)
        """

    row = {
        "id": 1, "i8": -5, "f64": 2.5, "flag": True, "name": "x", "code": "abc",
        "day": datetime.date(2026, 1, 2), "at": datetime.datetime(2026, 1, 2, 3, 4),
        "blob_json": {"a": [1, 2]}, "uid": uuid.UUID(int=7),
        "price": decimal.Decimal("12.50"), "mode": "slow",
    }
    Everything.insert1(row)
    got = Everything.fetch1()
    assert got == {**row, "count": 7, "note": None}


def test_bad_definition_names_the_line(schema):
    with pytest.raises(dj.DefinitionError, match=r"Broken: line 4 .x : floaty"):
        @schema
        class Broken(dj.Manual):
            definition = """
            id : int32
            ---
            x : floaty
            """


def test_insert_errors_name_the_attribute(client_config):
    lab = declare()
    with pytest.raises(dj.DataError, match="'species' has no value"):
        lab.Subject.insert1({"subject_id": 1})
    with pytest.raises(dj.DataError, match="no attribute 'age'"):
        lab.Subject.insert1({"subject_id": 1, "species": "mouse", "age": 3})
    with pytest.raises(dj.DataError, match="subject_id"):
        lab.Subject.insert1({"subject_id": "one", "species": "mouse"})
    assert len(lab.Subject) == 0


def test_insert_is_all_or_nothing(client_config):
    lab = declare()
    lab.Subject.insert1({"subject_id": 1, "species": "mouse"})
    with pytest.raises(dj.DuplicateError):
        lab.Subject.insert([{"subject_id": 2, "species": "rat"},
                            {"subject_id": 1, "species": "mouse"}])
    assert len(lab.Subject) == 1
    lab.Subject.insert([{"subject_id": 2, "species": "rat"},
                        {"subject_id": 1, "species": "mouse"}], skip_duplicates=True)
    assert len(lab.Subject) == 2


def test_restriction_fetch_and_delete(client_config):
    lab = declare()
    lab.Subject.insert([{"subject_id": i, "species": "mouse" if i % 2 else "rat"}
                        for i in range(6)])
    mice = lab.Subject & {"species": "mouse"}
    assert [k["subject_id"] for k in mice.keys()] == [1, 3, 5]
    assert len(mice & {"subject_id": 3}) == 1
    assert len(lab.Subject & [{"subject_id": 0}, {"subject_id": 5}]) == 2
    assert len(lab.Subject & []) == 0
    assert len(lab.Subject & {"not_an_attribute": 1}) == 6  # ignored, as in DataJoint
    with pytest.raises(dj.MissingRowError, match="found 3"):
        mice.fetch1()
    # Tables without object fields delete without the daemon.
    assert mice.delete() == 3
    assert [r["species"] for r in lab.Subject.to_dicts()] == ["rat"] * 3
    assert lab.Subject().to_dicts() == lab.Subject.to_dicts()


def test_lookup_contents_are_inserted_once(schema):
    @schema
    class Species(dj.Lookup):
        definition = """
        species : varchar(32)
        """
        contents = [{"species": "mouse"}, {"species": "rat"}]

    assert Species.table_name == "#species"
    assert [r["species"] for r in Species.to_dicts()] == ["mouse", "rat"]
    again = dj.Schema(schema_name("lab"))(type("Species", (dj.Lookup,), {
        "definition": "species : varchar(32)", "contents": [{"species": "mouse"}]
    }))
    assert len(again) == 2


def test_nullable_object_field_may_be_left_out(client_config):
    lab = declare()
    lab.Recording.insert1({"recording_id": "plain"})
    assert lab.Recording.fetch1()["raw"] is None
