"""How fast the daemon registers intents, and what group commit saves.

Starts a daemon on a temp deployment (the embedded default), then:

* registrations per second from 1 and from 16 concurrent connections, with
  the number of intent-log commits (each one fsync) they needed;
* the end-to-end time of small staged inserts (register, write 1 KiB,
  describe, insert row + decision record, report the commit).

    python bench/registrations.py [--n 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from stagerd.core import protocol


def start_daemon(root: Path) -> tuple[subprocess.Popen, Path, dict]:
    config = root / "stagerd.toml"
    config.write_text(textwrap.dedent(f"""\
        [daemon]
        socket = "{root}/stagerd.sock"
        state_dir = "{root}/state"
        [database]
        url = "sqlite:///{root}/lab.db"
        [stores.default]
        url = "file://{root}/objects"
        """))
    env = {**os.environ, "STAGERD_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "stagerd", "serve",
                             "--log-level", "warning"], env=env)
    sock = root / "stagerd.sock"
    for _ in range(200):
        try:
            protocol.call(sock, "status")
            break
        except OSError:
            time.sleep(0.05)
    return proc, sock, env


def register_many(sock: Path, root: Path, n: int, conns: int) -> tuple[float, int]:
    """Seconds for n registrations over ``conns`` connections; log commits."""
    before = protocol.call(sock, "status")["daemon"]["log_commits"]
    per = n // conns
    fields = {
        "schema": "bench", "table": "t", "field": "f", "ext": ".bin",
        "store": "default", "store_url": f"file://{root}/objects",
        "database": f"sqlite:///{root.resolve()}/lab.db",
    }

    def work(c: int) -> None:
        s = protocol.connect(sock)
        for i in range(per):
            protocol.send(s, {"v": 1, "id": i, "op": "register",
                              "key": {"k": f"{conns}-{c}-{i}"}, **fields})
            protocol.check_reply(protocol.recv(s))
        s.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in range(conns)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    after = protocol.call(sock, "status")["daemon"]["log_commits"]
    return elapsed, after - before


def staged_inserts(env: dict, n: int) -> list[float]:
    code = textwrap.dedent(f"""
        import time, stagerd_client as dj
        schema = dj.Schema("bench")
        @schema
        class Blob(dj.Manual):
            definition = "blob_id : int32\\n---\\ndata : <object@>"
        times = []
        for i in range({n}):
            t = time.perf_counter()
            with Blob.staged_insert1 as staged:
                staged.rec["blob_id"] = i
                with staged.open("data", ".bin") as f:
                    f.write(b"x" * 1024)
            times.append(time.perf_counter() - t)
        print(" ".join(map(str, times)))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, sock, env = start_daemon(root)
        try:
            for conns in (1, 16):
                elapsed, commits = register_many(sock, root, args.n, conns)
                n = args.n // conns * conns
                print(f"register, {conns:2d} connection(s): {n / elapsed:8.0f}/s, "
                      f"{commits} log commits for {n} registrations "
                      f"({n / max(commits, 1):.1f} per fsync)")
            times = staged_inserts(env, args.n // 4)
            print(f"staged insert of 1 KiB, end to end: median "
                  f"{statistics.median(times) * 1000:.1f} ms, p95 "
                  f"{sorted(times)[int(len(times) * 0.95)] * 1000:.1f} ms "
                  f"over {len(times)} inserts")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
