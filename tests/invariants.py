"""What must hold of a deployment whatever was killed, and when.

Use it after any crash scenario, once the daemon has resolved every intent
(``deployment.status()["pending"] == []``)::

    from invariants import check

    acknowledged = [(lab.schema.name, "recording", {"recording_id": "a"})]
    assert check(deployment, acknowledged) == []

``check(deployment, acknowledged, schemas=None) -> list[str]`` returns one
line per violation, empty when all hold:

1. every acknowledged insert has its row: ``acknowledged`` lists
   ``(schema, table, key)`` for each staged insert whose ``with`` block
   returned, with the schema named as in the database (``lab.schema.name``,
   suffix included) and ``key`` the primary-key values as inserted;
2. every row's objects exist and match their manifest;
3. no stored object lies outside a row's objects, once intents still in
   flight are accounted for;
4. no row holds an object whose intent the ledger decided aborted or never
   decided.

(2)-(4) are ``stagerd verify SCHEMA --json``, run as a user would, for each
schema in ``schemas`` (default: the schemas named in ``acknowledged`` and
the test tables' ``imaging`` schema). Objects that verify counts as in
progress are not violations; wait for the daemon first if they must be
gone.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from lab import schema_name

__all__ = ["check"]


def check(
    deployment: Any,
    acknowledged: Iterable[tuple[str, str, dict[str, Any]]],
    schemas: Iterable[str] | None = None,
) -> list[str]:
    acknowledged = list(acknowledged)
    if schemas is None:
        schemas = {s for s, _, _ in acknowledged} | {schema_name("imaging")}
    return _rows_exist(deployment, acknowledged) + [
        line for schema in sorted(schemas) for line in _verify(deployment, schema)
    ]


def _rows_exist(
    deployment: Any, acknowledged: list[tuple[str, str, dict[str, Any]]]
) -> list[str]:
    db = deployment.db
    lost = []
    conn = db.connect()
    try:
        for schema, table, key in acknowledged:
            where = " AND ".join(f"{db.quote(k)} = {db.param}" for k in key)
            cur = db.execute(
                conn, f"SELECT COUNT(*) FROM {db.table(schema, table)} WHERE {where}",
                tuple(key.values()),
            )
            if cur.fetchone()[0] != 1:
                lost.append(f"acknowledged insert has no row: {schema}.{table} {key}")
    finally:
        conn.close()
    return lost


def _verify(deployment: Any, schema: str) -> list[str]:
    result = deployment.cli("verify", schema, "--json", check=False)
    if result.returncode not in (0, 1):
        return [f"stagerd verify {schema} failed ({result.returncode}): "
                f"{result.stderr.strip()}"]
    report = json.loads(result.stdout)
    lines = [
        f"verify: {p['kind']} {p['schema']}.{p['table']} {p['key']} "
        f"{p['store']}:{p['path']}: expected {p['expected']}, found {p['found']}"
        for p in report["problems"]
    ]
    if result.returncode == 1 and not lines:
        lines.append(f"stagerd verify {schema} exited 1 with no problem listed")
    return lines
