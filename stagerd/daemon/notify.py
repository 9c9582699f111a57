"""Talking to systemd: readiness notifications and socket activation.

Both are plain protocols, so no libsystemd is needed:

* ``$NOTIFY_SOCKET`` names a datagram socket (a path, or an abstract name
  written with a leading ``@``). Each message is newline-separated
  ``KEY=value`` lines: ``READY=1``, ``STATUS=...``, ``STOPPING=1``,
  ``WATCHDOG=1``, ``EXTEND_TIMEOUT_USEC=...``. With the variable unset
  (not run by systemd, or not ``Type=notify``) every call does nothing.
* ``$LISTEN_FDS`` and ``$LISTEN_PID`` say that systemd passed listening
  sockets from fd 3 on (a ``.socket`` unit). stagerd takes exactly one,
  a Unix stream socket; anything else is a configuration mistake and is
  refused with an error that says what was found.

A failed notification is logged at DEBUG and otherwise ignored: systemd
going away must not stop the daemon from serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Mapping

from stagerd.core.errors import ConfigError

__all__ = ["Notifier", "passed_socket", "LISTEN_FDS_START"]

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3
# How often a changed STATUS= line may be sent, at most.
STATUS_EVERY_S = 1.0
# A startup step that may run long asks systemd for this much more time,
# again and again until it is done.
EXTEND_S = 30.0


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; a no-op without it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._status = ""
        self._status_sent_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one message of ``KEY=value`` lines; whether it went out."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            log.debug("notify failed socket=%r message=%r: %s",
                      self.address, lines, e)
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self._status_sent_at = time.monotonic()
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` if it changed, at most every STATUS_EVERY_S.

        A change held back by the rate limit goes out on a later call, so
        the caller should call again periodically.
        """
        if text == self._status:
            return
        now = time.monotonic()
        if now - self._status_sent_at < STATUS_EVERY_S:
            return
        self._status = text
        self._status_sent_at = now
        self.send(f"STATUS={text}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    async def watchdog_forever(self) -> None:
        """Ping at half the watchdog interval, from the event loop itself.

        The ping is sent by a coroutine, not a thread, so a wedged loop
        stops pinging and systemd restarts the daemon.
        """
        if self.watchdog_s is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_s / 2)

    @contextlib.asynccontextmanager
    async def extending(self, what: str) -> AsyncIterator[None]:
        """Keep extending systemd's start timeout while the block runs."""
        if not self.enabled:
            yield
            return

        async def extend() -> None:
            while True:
                self.send(f"EXTEND_TIMEOUT_USEC={int(EXTEND_S * 1e6)}",
                          f"STATUS={what}")
                await asyncio.sleep(EXTEND_S / 3)

        task = asyncio.get_running_loop().create_task(extend())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # an abstract socket name
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; "
                "not notifying systemd", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """systemd's watchdog timeout in seconds, if it is meant for this process.

    ``$WATCHDOG_PID`` names the process the watchdog watches; when it is
    set to another pid the variables were inherited and are not ours.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; "
                    "not pinging the watchdog", usec)
        return None
    return seconds if seconds > 0 else None


def passed_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed us, or None if none was passed.

    Follows sd_listen_fds(3): the variables count only if ``$LISTEN_PID`` is
    this process. They are removed afterwards so that no child inherits
    them. The socket must be one listening Unix stream socket.
    """
    env = os.environ if environ is None else environ
    pid, fds = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not pid or not fds or pid != str(os.getpid()):
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)

    if fds != "1":
        raise ConfigError(
            f"systemd passed LISTEN_FDS={fds}; stagerd takes exactly one socket "
            "(one ListenStream= in stagerd.socket)"
        )
    fd = LISTEN_FDS_START
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise ConfigError(f"LISTEN_FDS=1 but fd {fd} is not open: {e}") from e
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"LISTEN_FDS=1 but fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    kind = (sock.family, sock.type)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if kind != (socket.AF_UNIX, socket.SOCK_STREAM) or not listening:
        found = f"{sock.family.name} {sock.type.name}" + (
            "" if listening else ", not listening"
        )
        sock.detach()  # leave the fd to its owner; we refuse to use it
        raise ConfigError(
            f"the socket systemd passed (fd {fd}) must be a listening AF_UNIX "
            f"SOCK_STREAM socket (ListenStream=/path), found {found}"
        )
    return sock
