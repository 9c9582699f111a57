"""The demo: a clean acquisition, then one killed with SIGKILL mid-write.

Runs on the embedded default (a SQLite database and a local object folder)
in ./demo-state (or $STAGERD_DEMO_DIR), with its own daemon, and explains
what happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("STAGERD_DEMO_DIR", HERE.parent / "demo-state"))


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def stagerd(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "stagerd", *args], env=env, check=True,
        capture_output=True, text=True,
    ).stdout


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def main() -> None:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    config = STATE / "stagerd.toml"
    config.write_text(textwrap.dedent(f"""\
        # The embedded default, kept in one folder for the demo.
        [daemon]
        socket = "{STATE}/run/stagerd.sock"
        state_dir = "{STATE}/state"
        [database]
        url = "sqlite:///{STATE}/lab.db"
        [stores.default]
        url = "file://{STATE}/objects"
        """))
    env = {**os.environ, "STAGERD_CONFIG": str(config)}
    objects = STATE / "objects"

    say(f"starting the daemon (config {config})")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "stagerd", "serve"], env=env,
        stderr=open(STATE / "daemon.log", "w"),
    )
    try:
        for _ in range(100):
            if (STATE / "run/stagerd.sock").exists():
                break
            time.sleep(0.1)

        say("acquisition 1: 100 frames into Zarr, block exits cleanly")
        subprocess.run([sys.executable, HERE / "acquire.py", "--session", "1"],
                       env=env, check=True)
        print(f"{len(files(objects))} files in the store")

        say("acquisition 2: killed with SIGKILL after 10 frames")
        writer = subprocess.Popen(
            [sys.executable, HERE / "acquire.py", "--session", "2", "--slow"],
            env=env, stdout=subprocess.PIPE, text=True,
        )
        for line in writer.stdout:
            if line.startswith("frame 9"):
                break
        partial = len(files(objects))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        print(f"killed pid {writer.pid} with {partial} files in the store "
              "(session 1's and the partial session 2)")
        time.sleep(1.0)

        say("after the kill")
        session2 = [p for p in files(objects) if "session_id=2" in str(p)]
        print(f"files of session 2 left in the store: {len(session2)}")
        rows = subprocess.run(
            [sys.executable, "-c",
             "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute("
             "'select session_id from \"imaging.imaging_session\"').fetchall())",
             str(STATE / "lab.db")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        print(f"rows (session_id) in imaging.imaging_session: {rows}")
        print("\n$ stagerd status")
        print(stagerd("status", env=env), end="")
        ok = not session2 and rows == "[(1,)]"
        say("the partial object was removed and no row exists for session 2"
            if ok else "UNEXPECTED: something of session 2 survived")
        print(f"the daemon's log: {STATE / 'daemon.log'}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
