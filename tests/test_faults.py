"""Fault points: how a test arms them, and that nothing else can."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stagerd.core import faults
from test_crash_matrix import CLIENT_POINTS, DAEMON_POINTS


def run(code: str, spec: str | None) -> subprocess.CompletedProcess:
    env = {} if spec is None else {faults.VARIABLE: spec}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**env, "PATH": "/usr/bin:/bin"},
    )


LOOP = """
from stagerd.core import faults
for i in range(1, 4):
    print("before", i, flush=True)
    try:
        faults.point("store.delete")
    except faults.InjectedFault as e:
        print("raised", e, flush=True)
print("end", flush=True)
"""


def test_the_crash_matrix_covers_every_point():
    assert set(CLIENT_POINTS) | set(DAEMON_POINTS) == set(faults.POINTS)


def test_unarmed_points_do_nothing():
    result = run(LOOP, None)
    assert result.returncode == 0 and result.stdout.count("before") == 3
    assert "raised" not in result.stdout and result.stderr == ""


def test_exit_fires_once_at_the_nth_hit():
    result = run(LOOP, "store.delete=exit@2")
    assert result.returncode == faults.EXIT_CODE
    assert result.stdout.split("\n")[:2] == ["before 1", "before 2"]
    assert "end" not in result.stdout
    assert "fault point store.delete fired: exit" in result.stderr
    assert "fault points armed" in result.stderr  # an armed process says so


def test_raise_fires_once():
    result = run(LOOP, "store.delete=raise")
    assert result.returncode == 0
    assert result.stdout.count("raised") == 1 and "end" in result.stdout
    assert "fault injected at store.delete (hit 1)" in result.stdout


@pytest.mark.parametrize("spec, message", [
    ("store.delet=exit", "unknown fault point in 'store.delet=exit'"),
    ("store.delete", "unknown fault point"),
    ("store.delete=crash", "needs name=exit or name=raise"),
    ("store.delete=exit@0", "needs name=exit or name=raise"),
    ("store.delete=exit@00", "needs name=exit or name=raise"),
    ("store.delete=exit@x", "needs name=exit or name=raise"),
])
def test_bad_specs_are_refused_by_name(spec, message):
    result = run(LOOP, spec)
    assert result.returncode != 0 and message in result.stderr
    assert "before" not in result.stdout

