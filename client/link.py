"""The client's connection to the daemon.

One link per process (a forked child opens its own, since its intents are
its own). When the daemon restarts, the link reconnects on the next
request, waiting up to ``client.reconnect_s`` seconds for the socket to
come back, then re-attaches the intents this process still holds and
replays commits and aborts the daemon has not confirmed. While the daemon
is away nothing is lost: the decision record in the database is the truth
and the daemon reads it when it returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from stagerd.core import protocol
from stagerd.core.errors import DaemonUnavailable, StagerdError

__all__ = ["Link", "link"]

log = logging.getLogger(__name__)

RECONNECT_S = 10.0


class Link:
    def __init__(self, socket_path: Path, reconnect_s: float = RECONNECT_S) -> None:
        self.socket_path = socket_path
        self.reconnect_s = reconnect_s
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._next_id = 0
        # Intents this process holds, and outcomes the daemon has not heard.
        self.intents: set[str] = set()
        self.unconfirmed: dict[str, str] = {}

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def request(self, op: str, wait: bool = True, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply; raise the error it names.

        ``wait=False`` gives up at once when the daemon is not there.
        A connection that breaks is retried until ``reconnect_s`` runs out:
        a dying daemon may still accept a connection it never answers, and
        its successor takes a moment to listen. Retrying a ``register`` whose
        reply was lost leaves an intent without objects, which is resolved
        when this process exits.
        """
        with self._lock:
            deadline = time.monotonic() + (self.reconnect_s if wait else 0)
            tries = 0
            while True:
                tries += 1
                try:
                    return self._roundtrip(self._connected(deadline), op, fields)
                except DaemonUnavailable:
                    raise
                except OSError as e:
                    self.close()
                    if tries > 1 and time.monotonic() >= deadline:
                        raise DaemonUnavailable(
                            f"the daemon at {self.socket_path} dropped the "
                            f"connection during {op!r}: {e}"
                        ) from e
                    if tries > 1:  # the first retry goes at once
                        time.sleep(0.1)

    def _roundtrip(
        self, sock: socket.socket, op: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        self._next_id += 1
        protocol.send(sock, {"v": protocol.VERSION, "id": self._next_id, "op": op,
                             **fields})
        return protocol.check_reply(protocol.recv(sock))

    def _connected(self, deadline: float) -> socket.socket:
        """The open connection, or a new one made before ``deadline``."""
        if self._sock is not None:
            return self._sock
        while True:
            try:
                sock = protocol.connect(self.socket_path)
                break
            except DaemonUnavailable:
                # No socket file at all: no daemon was ever started here.
                if not self.socket_path.exists() or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        self._sock = sock
        self._resume(sock)
        return sock

    def _resume(self, sock: socket.socket) -> None:
        """Re-attach held intents and replay unconfirmed outcomes."""
        if self.intents:
            reply = self._roundtrip(sock, "attach", {"intents": sorted(self.intents)})
            for intent_id, state in reply["states"].items():
                if state != "pending":
                    self.intents.discard(intent_id)
        for intent_id, op in list(self.unconfirmed.items()):
            try:
                self._roundtrip(sock, op, {"intent": intent_id})
            except StagerdError as e:
                log.warning("replaying %s intent=%s failed: %s", op, intent_id, e)
            self.unconfirmed.pop(intent_id, None)
            self.intents.discard(intent_id)

    def finish(self, op: str, intent_id: str) -> dict[str, Any] | None:
        """Report a commit or ask an abort; None if the daemon is away.

        An outcome the daemon did not hear is replayed on the next
        connection; failing that, the daemon decides it from the ledger
        once this process has exited.
        """
        try:
            reply = self.request(op, intent=intent_id)
        except DaemonUnavailable:
            self.unconfirmed[intent_id] = op
            log.warning("daemon unreachable; %s of intent=%s deferred", op, intent_id)
            return None
        self.intents.discard(intent_id)
        return reply


_link: tuple[int, Link] | None = None


def link(socket_path: Path, reconnect_s: float = RECONNECT_S) -> Link:
    """This process's link to the daemon at ``socket_path``."""
    global _link
    if _link is None or _link[0] != os.getpid() or (
        _link[1].socket_path != socket_path
    ):
        _link = (os.getpid(), Link(socket_path, reconnect_s))
    return _link[1]
