"""Named fault points, for crash tests: die or fail at an exact step.

The client, the daemon and the store and database layers call
``point(name)`` at the steps where a crash matters. Nothing happens unless
the process was started with the environment variable
``STAGERD_TEST_FAULTS``, read once at import, for example::

    STAGERD_TEST_FAULTS="daemon.resolve.decided=exit"
    STAGERD_TEST_FAULTS="client.commit.after_row=exit,store.delete=raise@2"

Each entry is ``name=action`` or ``name=action@N``: at the N-th time the
point is reached (the first, by default) the process dies at once with
``os._exit(EXIT_CODE)`` (``exit``: no cleanup, no flushing, like SIGKILL)
or the operation raises :class:`InjectedFault` (``raise``). Each entry
fires once. An unknown point name or action is refused with a message
naming it, so a typo never silently tests nothing.

Why no config key: a fault is armed only by this variable, which no config
file can set, and an armed process logs a WARNING naming its faults. When
nothing is armed, ``point`` is one test of an empty dict.
"""

from __future__ import annotations

import logging
import os
import sys

from stagerd.core.errors import StagerdError

__all__ = ["POINTS", "EXIT_CODE", "VARIABLE", "InjectedFault", "point"]

log = logging.getLogger(__name__)

VARIABLE = "STAGERD_TEST_FAULTS"
EXIT_CODE = 86

POINTS = {
    # The client, around one staged insert.
    "client.register.before": "before asking the daemon to register a path",
    "client.register.after": "after the daemon logged the intent, before any byte",
    "client.write.mid": "between two writes of an object (called by writers)",
    "client.commit.before_transaction": "objects written and listed, no transaction",
    "client.commit.after_row": "row and decision record inserted, before COMMIT",
    "client.commit.after_commit": "COMMIT done, before telling the daemon",
    # The daemon.
    "daemon.register.logged": "intent durable in the log, before the reply",
    "daemon.resolve.decided": "decision read or fenced, before any deletion",
    "daemon.delete.between": "one object of an intent deleted, before the next",
    "daemon.resolve.deleted": "objects deleted, before marking the intent done",
    # The layers below.
    "store.delete": "a store deletion, before it starts",
    "db.commit": "a database COMMIT, before it is sent",
}

_ACTIONS = ("exit", "raise")


class InjectedFault(StagerdError, OSError):
    """The failure a ``raise`` fault point injects."""


def _parse(spec: str) -> dict[str, list[tuple[str, int]]]:
    faults: dict[str, list[tuple[str, int]]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, action = entry.partition("=")
        action, _, nth = action.partition("@")
        if not sep or name not in POINTS:
            raise ValueError(
                f"{VARIABLE}: unknown fault point in {entry!r}; known points: "
                + ", ".join(sorted(POINTS))
            )
        if action not in _ACTIONS or not (nth or "1").isdigit() or int(nth or 1) < 1:
            raise ValueError(
                f"{VARIABLE}: {entry!r} needs name=exit or name=raise, "
                "optionally followed by @N with N >= 1"
            )
        faults.setdefault(name, []).append((action, int(nth or 1)))
    return faults


_armed = _parse(os.environ.get(VARIABLE, ""))
_hits: dict[str, int] = {}
if _armed:
    log.warning("fault points armed pid=%d faults=%s", os.getpid(),
                ",".join(f"{n}={a}@{k}" for n, s in _armed.items() for a, k in s))


def point(name: str) -> None:
    """A fault point: nothing, unless a test armed ``name``."""
    if _armed:
        _reach(name)


def _reach(name: str) -> None:
    specs = _armed.get(name)
    if not specs:
        return
    hit = _hits[name] = _hits.get(name, 0) + 1
    for action, nth in specs:
        if nth != hit:
            continue
        if action == "exit":
            # Say which point fired, then die without any cleanup.
            sys.stderr.write(f"stagerd: fault point {name} fired: exit\n")
            sys.stderr.flush()
            os._exit(EXIT_CODE)
        log.warning("fault point fired point=%s action=raise hit=%d", name, hit)
        raise InjectedFault(f"fault injected at {name} (hit {hit})")
