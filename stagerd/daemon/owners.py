"""Who owns an intent, and whether that process still lives.

An owner is the uid and pid the kernel reports for the socket peer
(SO_PEERCRED), the pid's start time (so a reused pid is a different
owner) and the host's boot id (so nothing from before a reboot is alive).
A zombie counts as dead: it can never write another byte.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Owner", "boot_id", "start_time", "peer_credentials", "identify"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Tests simulate a reboot by giving the daemon another boot id.
BOOT_ID_ENV = "STAGERD_BOOT_ID"


@functools.cache
def boot_id() -> str:
    """This boot's id, read once: it cannot change while a process runs."""
    return os.environ.get(BOOT_ID_ENV) or _BOOT_ID.read_text().strip()


def start_time(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    return struct.unpack("3i", creds)


@dataclass(frozen=True)
class Owner:
    uid: int
    pid: int
    start_time: int
    boot_id: str

    def is_alive(self, current_boot: str | None = None) -> bool:
        if self.boot_id != (current_boot or boot_id()):
            return False
        return start_time(self.pid) == self.start_time

    def same_process(self, other: Owner) -> bool:
        return (self.pid, self.start_time, self.boot_id) == (
            other.pid,
            other.start_time,
            other.boot_id,
        )


def identify(uid: int, pid: int) -> Owner | None:
    """The owner for a live peer, or None if it died in the meantime."""
    started = start_time(pid)
    if started is None:
        return None
    return Owner(uid, pid, started, boot_id())
