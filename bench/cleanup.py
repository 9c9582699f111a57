"""How soon the daemon removes what a SIGKILLed writer left behind.

Starts a daemon on a temp deployment (the embedded default: SQLite and a
local folder), then, again and again, runs a writer process that stages an
object, writes 1 MiB into it and waits; SIGKILLs it, and times how long the
object takes to disappear from the store.

    python bench/cleanup.py [--n 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from registrations import start_daemon

WRITER = textwrap.dedent("""
    import sys, time
    import stagerd_client as dj

    schema = dj.Schema("bench")

    @schema
    class Take(dj.Manual):
        definition = '''
        take : int32
        ---
        data : <object@>
        '''

    staged = Take.staged_insert1.__enter__()
    staged.rec["take"] = int(sys.argv[1])
    with staged.open("data", ".bin") as f:
        f.write(b"x" * (1 << 20))
    print("WRITTEN", flush=True)
    time.sleep(600)
""")


def one(root: Path, env: dict, take: int) -> float:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(take)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().startswith("WRITTEN")
    objects = root / "objects" / "_schema" / "bench" / "take" / f"take={take}"
    assert any(objects.iterdir()), "the writer wrote nothing"
    proc.kill()
    killed = time.perf_counter()
    while objects.exists() and any(objects.iterdir()):
        time.sleep(0.001)
    gone = time.perf_counter() - killed
    proc.wait()
    return gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        daemon, _, env = start_daemon(root)
        try:
            times = sorted(one(root, env, take) for take in range(args.n))
        finally:
            daemon.terminate()
            daemon.wait()
    p95 = times[min(len(times) - 1, round(0.95 * len(times)))]
    print(f"SIGKILLed writer cleaned up after: median "
          f"{statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {times[-1] * 1000:.0f} ms ({args.n} kills, 1 MiB each)")


if __name__ == "__main__":
    main()
