"""The demo that README's first command runs must keep working."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import HERE


def test_demo_runs_and_cleans_the_killed_acquisition(tmp_path):
    env = {**os.environ, "STAGERD_DEMO_DIR": str(tmp_path / "demo")}
    env.pop("STAGERD_CONFIG", None)
    result = subprocess.run(
        [sys.executable, str(HERE.parent / "demo" / "run.py")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "files of session 2 left in the store: 0" in result.stdout
    assert "rows (session_id) in imaging.imaging_session: [(1,)]" in result.stdout
    assert "no pending intents" in result.stdout
