"""How many hostile messages a second the daemon answers, and what it costs.

Starts a daemon on a temp deployment (as bench/registrations.py does), then
throws hostile frames at it from several connections for a while: random
bytes, bit flips of real requests, every field of every operation with a
wrong-typed or poisonous value (huge and non-finite numbers, NUL bytes,
lone surrogates, ``../``, long strings, deep nesting), oversized and
truncated frames. Every frame must get an error reply, or the hang-up an
oversized frame earns. Prints the rate, the daemon's memory before and
after, whether an honest registration is still served, and what a
thousand idle connections cost the daemon in memory.

    python bench/fuzz.py [--seconds 10] [--connections 4] [--idle 2000]

tests/test_hostile.py runs the same fuzzer for a few seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagerd.core import protocol


class Raw(str):
    """JSON text sent as it is: what ``json.dumps`` will not write."""


def nested(depth: int, kind: str = "dict") -> Raw:
    if kind == "dict":
        return Raw('{"a":' * depth + "1" + "}" * depth)
    return Raw("[" * depth + "1" + "]" * depth)


# Values a field may be given instead of the right one.
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**64), 10**300, Raw("9" * 5000),
    1.5, -0.0, 1e308, Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
    "", "\x00", "a\x00b", "\ud800", "x\udfffy", "../", "../../../../etc/passwd",
    "/etc/passwd", ".", "..", "*", "[a-z]?", "\n\r\t", "é" * 1000, "x" * 100_000,
    [], [1, "2", None], ["../x"] * 50, {}, {"a": {"b": {"c": {"d": 1}}}},
    {"../": 1}, nested(9), nested(1000), nested(1000, "list"),
]


def to_json(value: Any) -> str:
    """JSON text of ``value``; a lone surrogate stays an escape like \\ud800."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def requests(fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A well-formed request of every operation, to spoil one field at a time.

    ``fields`` are what a register needs (schema, table, key, field, ext,
    store, store_url, database).
    """
    intent = "0123456789abcdef0123"
    path = f"_schema/{fields['schema']}/{fields['table']}/k=1/raw_{intent}.bin"
    return {
        "register": {"v": 1, "id": 1, "op": "register", **fields},
        "commit": {"v": 1, "id": 2, "op": "commit", "intent": intent},
        "abort": {"v": 1, "id": 3, "op": "abort", "intent": intent},
        "attach": {"v": 1, "id": 4, "op": "attach", "intents": [intent]},
        "status": {"v": 1, "id": 5, "op": "status"},
        "recover": {"v": 1, "id": 6, "op": "recover"},
        "delete": {
            "v": 1, "id": 7, "op": "delete", "schema": fields["schema"],
            "table": fields["table"], "database": fields["database"],
            "objects": [{"store": fields["store"], "path": path}],
        },
    }


@dataclass
class Shot:
    """One frame to send and what the daemon must do with it."""

    data: bytes
    hangs_up: bool = False  # the daemon answers, then closes the connection
    ours: bool = False  # we stop halfway and close; no answer is due


def spoil(rng: random.Random, request: dict[str, Any]) -> dict[str, Any]:
    """The request with one to three fields replaced, dropped or nested."""
    spoiled = dict(request)
    for _ in range(rng.randint(1, 3)):
        name = rng.choice([*spoiled, "extra", "objects", "path"])
        roll = rng.random()
        if roll < 0.1:
            spoiled.pop(name, None)
        elif roll < 0.2 and isinstance(spoiled.get(name), dict):
            inner = dict(spoiled[name])
            inner[rng.choice([*inner, "../"] if inner else ["x"])] = rng.choice(HOSTILE)
            spoiled[name] = inner
        else:
            spoiled[name] = rng.choice(HOSTILE)
    return spoiled


def shots(rng: random.Random, fields: dict[str, Any]):
    """An endless stream of hostile frames."""
    templates = list(requests(fields).values())
    while True:
        roll = rng.random()
        request = rng.choice(templates)
        if roll < 0.55:
            body = to_json(spoil(rng, request)).encode("utf-8", "surrogatepass")
            if len(body) > protocol.MAX_FRAME:
                yield Shot(frame(body), hangs_up=True)
            else:
                yield Shot(frame(body))
        elif roll < 0.7:
            body = bytearray(json.dumps(request).encode())
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            yield Shot(frame(bytes(body)))
        elif roll < 0.8:
            yield Shot(frame(rng.randbytes(rng.randint(0, 300))))
        elif roll < 0.85:
            yield Shot(frame(b""))
        elif roll < 0.9:
            length = rng.randint(protocol.MAX_FRAME + 1, 2**32 - 1)
            yield Shot(struct.pack(">I", length), hangs_up=True)
        else:
            data = frame(json.dumps(request).encode())
            yield Shot(data[: rng.randint(1, len(data) - 1)], ours=True)


@dataclass
class Tally:
    sent: int = 0
    errors: int = 0  # error replies
    hang_ups: int = 0  # connections the daemon closed after answering
    ours: int = 0  # frames we abandoned halfway
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _answer(sock: socket.socket) -> dict[str, Any] | None:
    """The daemon's reply, or None if it closed the connection first."""
    try:
        return protocol.recv(sock)
    except ConnectionError:
        return None


def fire(socket_path: Path, shot: Shot, sock: socket.socket | None,
         tally: Tally) -> socket.socket | None:
    """Send one shot and check the daemon's answer; the socket to reuse."""
    if sock is None:
        sock = protocol.connect(socket_path, timeout=30)
    try:
        sock.sendall(shot.data)
    except BrokenPipeError:
        pass  # the reply (or the hang-up) is read below
    if shot.ours:
        sock.close()
        with tally.lock:
            tally.sent += 1
            tally.ours += 1
        return None
    reply = _answer(sock)
    problem = None
    if reply is None or not isinstance(reply.get("ok"), bool):
        problem = f"no reply to {shot.data[:120]!r}: {reply!r}"
    elif reply["ok"] and reply.get("intent"):
        # A spoiled field the daemon may ignore made a real intent: let it go.
        protocol.send(sock, {"v": 1, "id": 0, "op": "abort",
                             "intent": reply["intent"]})
        protocol.recv(sock)
    if shot.hangs_up:
        problem = problem or (None if _answer(sock) is None else
                              f"connection left open after {shot.data[:40]!r}")
    with tally.lock:
        tally.sent += 1
        tally.errors += reply is not None and reply.get("ok") is False
        tally.hang_ups += shot.hangs_up
        if problem:
            tally.failures.append(problem)
    if shot.hangs_up or reply is None:
        sock.close()
        return None
    return sock


def fuzz(socket_path: Path, fields: dict[str, Any], seconds: float,
         connections: int = 4, seed: int = 0) -> Tally:
    """Fire hostile frames from ``connections`` threads for ``seconds``."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        sock = None
        stream = shots(rng, fields)
        try:
            while time.monotonic() < deadline:
                sock = fire(socket_path, next(stream), sock, tally)
        except Exception as e:  # reported in the tally
            with tally.lock:
                tally.failures.append(f"worker {n}: {type(e).__name__}: {e}")
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def idle_cost(socket_path: Path, pid: int, n: int) -> float:
    """KiB of daemon RSS per idle connection, with ``n`` of them open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 100, hard), hard))
    before = rss_kib(pid)
    idle = [protocol.connect(socket_path, timeout=30) for _ in range(n)]
    try:
        protocol.send(idle[-1], {"v": 1, "op": "status"})
        served = protocol.recv(idle[-1])["daemon"]["connections"]
        return (rss_kib(pid) - before) / max(served, 1)
    finally:
        for s in idle:
            s.close()


def main() -> None:
    from registrations import start_daemon

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, sock, _ = start_daemon(root)
        fields = {
            "schema": "bench", "table": "t", "key": {"k": 1}, "field": "f",
            "ext": ".bin", "store": "default", "store_url": f"file://{root}/objects",
            "database": f"sqlite:///{root.resolve()}/lab.db",
        }
        try:
            before = rss_kib(proc.pid)
            start = time.perf_counter()
            tally = fuzz(sock, fields, args.seconds, args.connections, args.seed)
            elapsed = time.perf_counter() - start
            after = rss_kib(proc.pid)
            honest = protocol.call(sock, "register", **{**fields, "key": {"k": 2}})
            protocol.call(sock, "abort", intent=honest["intent"])
            per_idle = idle_cost(sock, proc.pid, args.idle)
        finally:
            proc.terminate()
            proc.wait()
    print(f"hostile frames: {tally.sent / elapsed:8.0f}/s over {args.connections} "
          f"connections for {elapsed:.1f} s ({tally.sent} frames: {tally.errors} "
          f"error replies, {tally.hang_ups} hang-ups, {tally.ours} abandoned)")
    print(f"daemon RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after")
    print(f"honest register afterwards: {'served' if honest['ok'] else 'refused'}")
    print(f"idle connections: {per_idle:.1f} KiB of daemon RSS each, "
          f"with {args.idle} open")
    if tally.failures:
        print(f"{len(tally.failures)} frames were not answered properly, e.g.:")
        for problem in tally.failures[:5]:
            print(f"  {problem}")
        sys.exit(1)


if __name__ == "__main__":
    main()
