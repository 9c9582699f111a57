"""The crash matrix: die at every fault point, on every backend pair.

A writer process makes one staged insert that completes (acknowledged),
then a second one during which a fault point kills it, or kills the daemon,
with ``os._exit`` (see ``stagerd.core.faults``). Then the daemon runs (and
is restarted if it died) until nothing is pending, and the shared checker
in ``invariants.py`` must find every acknowledged insert whole and nothing
else left behind.
"""

from __future__ import annotations

import pytest

from conftest import ALL_BACKENDS, HERE, DaemonProcess, wait_until
from invariants import check
from lab import schema_name
from stagerd.core import faults

pytestmark = ALL_BACKENDS

# Each insert writes two objects: a folder of three chunks through store()
# and a file through open(), so a fault can land between objects too.
WRITER = f"""
import os, sys
sys.path.insert(0, {str(HERE)!r})
import stagerd_client as dj
from lab import schema_name
from stagerd.core import faults

schema = dj.Schema(schema_name("crash"))

@schema
class Take(dj.Manual):
    definition = '''
    take : int32
    ---
    frames : <object@>
    meta : <object@>
    '''

def stage(take, abort):
    with Take.staged_insert1 as staged:
        staged.rec["take"] = take
        chunks = staged.store("frames", ".zarr")
        for i in range(3):
            chunks[f"c/{{i}}"] = bytes([take]) * 1000
            faults.point("client.write.mid")
        with staged.open("meta", ".json") as f:
            f.write(b"{{}}")
        if abort:
            raise RuntimeError("aborted on purpose")
    print("ACK", take, flush=True)

stage(1, abort=False)
try:
    stage(2, abort=os.environ["ABORT_SECOND"] == "1")
except RuntimeError as e:
    print("ABORTED", e, flush=True)
print("DONE", flush=True)
"""

# Where the client dies during the second insert, as name=exit@N: the
# first insert reaches each point as often as the counts below.
CLIENT_POINTS = {
    "client.register.before": 3,  # two registrations per insert
    "client.register.after": 4,
    "client.write.mid": 5,  # three chunks per insert
    "client.commit.before_transaction": 2,
    "client.commit.after_row": 2,
    "client.commit.after_commit": 2,
}

# Where the daemon dies while it aborts the second insert on request.
DAEMON_POINTS = {
    "daemon.register.logged": 3,
    "daemon.resolve.decided": 1,
    "store.delete": 1,
    "daemon.delete.between": 1,
    "daemon.resolve.deleted": 1,
    "db.commit": 1,  # the daemon's only commit is the fence
}


def acknowledged(out: str) -> list[tuple[str, str, dict]]:
    return [
        (schema_name("crash"), "take", {"take": int(line.split()[1])})
        for line in out.splitlines() if line.startswith("ACK ")
    ]


def settle(deployment) -> None:
    wait_until(lambda: deployment.status()["pending"] == [], 20, "all resolved")


def takes(deployment) -> list[int]:
    return sorted(row[0] for row in deployment.rows("crash", "take"))


@pytest.mark.parametrize("point", list(CLIENT_POINTS))
def test_client_dies_at(point, deployment, daemon, spawn):
    nth = CLIENT_POINTS[point]
    client = spawn(WRITER, env={faults.VARIABLE: f"{point}=exit@{nth}",
                                "ABORT_SECOND": "0"})
    code, out, err = client.wait()
    assert code == faults.EXIT_CODE, err
    assert f"fault point {point} fired" in err
    assert acknowledged(out) == [(schema_name("crash"), "take", {"take": 1})]

    settle(deployment)
    problems = check(deployment, acknowledged(out), [schema_name("crash")])
    assert not problems, "\n".join(problems)
    # Only a COMMIT that happened makes the second row; else it is gone.
    expected = [1, 2] if point == "client.commit.after_commit" else [1]
    assert takes(deployment) == expected


@pytest.mark.parametrize("point", list(DAEMON_POINTS))
def test_daemon_dies_at(point, deployment, spawn):
    deployment.write_config(reconnect_s=0.5)
    nth = DAEMON_POINTS[point]
    first = DaemonProcess(deployment, env={faults.VARIABLE: f"{point}=exit@{nth}"})
    first.start()
    client = spawn(WRITER, env={"ABORT_SECOND": "1"})
    code, out, err = client.wait()
    first.proc.wait(10)
    assert first.proc.returncode == faults.EXIT_CODE, "\n".join(first.log)
    assert first.logged(f"fault point {point} fired")
    assert acknowledged(out) == [(schema_name("crash"), "take", {"take": 1})], err

    second = DaemonProcess(deployment).start()
    try:
        settle(deployment)
        problems = check(deployment, acknowledged(out), [schema_name("crash")])
        assert not problems, "\n".join(problems)
        assert takes(deployment) == [1]
        assert not second.logged("level=ERROR")
    finally:
        assert second.stop() == 0


def test_failed_deletion_is_retried_until_it_lands(deployment, spawn):
    """An operation that fails (not a death) is retried with backoff."""
    daemon = DaemonProcess(
        deployment, env={faults.VARIABLE: "store.delete=raise@1,db.commit=raise@1"}
    ).start()
    try:
        client = spawn(WRITER, env={"ABORT_SECOND": "1"})
        code, out, err = client.wait()
        assert code == 0 and "ABORTED" in out, err
        settle(deployment)
        assert daemon.logged("fault point fired point=db.commit")
        assert daemon.logged("fault point fired point=store.delete")
        problems = check(deployment, acknowledged(out), [schema_name("crash")])
        assert not problems, "\n".join(problems)
        assert takes(deployment) == [1]
    finally:
        assert daemon.stop() == 0

