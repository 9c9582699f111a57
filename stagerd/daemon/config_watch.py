"""Noticing that the config file changed, so the daemon can reload it.

The file's folder is watched, not the file: editors and configuration
tools save by writing a new file and renaming it over the old one, which
a watch on the old file would never see. A config that is a symlink is
watched in its own folder and in its target's, as resolved at start.

Only events that can change the file's content count; opening or reading
it (the reload itself does) does not, or every reload would trigger the
next.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

__all__ = ["ConfigWatch"]

log = logging.getLogger(__name__)
# watchdog's DEBUG lines describe every inotify event in the watched folder,
# not only the config file's; the daemon's debug log does not need them.
logging.getLogger("watchdog").setLevel(logging.INFO)

_CHANGES = {EVENT_TYPE_CLOSED, EVENT_TYPE_CREATED, EVENT_TYPE_DELETED,
            EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED}


class _Handler(FileSystemEventHandler):
    def __init__(self, paths: set[str], changed: Callable[[], None]) -> None:
        self.paths = paths
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES or event.is_directory:
            return
        touched = {os.fsdecode(event.src_path), os.fsdecode(event.dest_path or "")}
        if touched & self.paths:
            log.debug("config file event=%s paths=%s", event.event_type,
                      ",".join(sorted(touched & self.paths)))
            self.changed()


class ConfigWatch:
    """Calls ``changed`` (from a watchdog thread) whenever ``path`` changes.

    Raises OSError if the folder cannot be watched (no inotify instances
    left, say); the caller can still reload on SIGHUP.
    """

    # A save is often several events (truncate, write, close, rename);
    # reload once they have stopped for this long.
    SETTLE_S = 0.2

    def __init__(self, path: Path, changed: Callable[[], None]) -> None:
        paths = {os.path.abspath(path), os.path.realpath(path)}
        handler = _Handler(paths, changed)
        self._observer = Observer()
        self._observer.daemon = True
        for folder in sorted({os.path.dirname(p) for p in paths}):
            self._observer.schedule(handler, folder, recursive=False)
        self._observer.start()
        log.debug("watching config file paths=%s", ",".join(sorted(paths)))

    def stop(self) -> None:
        # watchdog's inotify emitter logs an ERROR ("queue_events() called
        # when the thread is inactive") when an event for the folder arrives
        # while it stops; nothing is wrong then, so that line is dropped.
        emitter_log = logging.getLogger("watchdog.observers.inotify")
        quiet = _DropStopRace()
        emitter_log.addFilter(quiet)
        try:
            self._observer.stop()
            self._observer.join(timeout=5)
        finally:
            emitter_log.removeFilter(quiet)


class _DropStopRace(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()
