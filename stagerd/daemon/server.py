"""The daemon: a Unix-socket server in front of the intent log.

One asyncio loop serves every connection; the intent log, the database and
the stores are touched from worker threads so a slow disk never stalls the
socket. The rule the whole daemon keeps: an intent is resolved only when
its owner process is dead, whatever its connections do. A closed
connection only makes the daemon look at once (that is how a SIGKILL is
noticed within moments); a sweep looks again every :data:`SWEEP_S` and
finishes intents whose owner died while no connection was open, including
every intent of an earlier boot when the daemon starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import grp
import json
import logging
import os
import resource
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from stagerd.core import faults, layout, ledger, protocol
from stagerd.core import config as config_mod
from stagerd.core.config import Config
from stagerd.core.db import Database
from stagerd.core.db import connect as connect_db
from stagerd.core.errors import (
    ConfigError,
    NotOwnerError,
    ProtocolError,
    StagerdError,
    StagingError,
    TooManyConnections,
)
from stagerd.core.stores import Store
from stagerd.daemon import owners
from stagerd.daemon.config_watch import ConfigWatch
from stagerd.daemon.intents import (
    LOG_NAME,
    PENDING,
    Intent,
    IntentLog,
    LogWriter,
    ObjectEntry,
)
from stagerd.daemon.notify import Notifier, passed_socket
from stagerd.daemon.resolver import Resolver

__all__ = ["Daemon", "LOG_NAME", "LOCK_NAME", "SWEEP_S"]

log = logging.getLogger(__name__)

LOCK_NAME = "stagerd.lock"
SWEEP_S = 0.25
# Decided intents are pruned from the log at a tenth of the history window,
# at most hourly; PRUNE_BATCH rows per transaction keep registrations moving.
PRUNE_EVERY_S = 3600.0
PRUNE_BATCH = 5000
STATUS_TICK_S = 0.25
# Settings that reload cannot change: the socket and log are open, and
# pending intents are decided in the database the daemon connected to.
RESTART_KEYS = ("daemon.socket", "daemon.state_dir", "database.url",
                "database.password_file")
# A staged insert with more objects than this is a bug or an attack.
MAX_OBJECTS_PER_INTENT = 1000
# Primary keys are a few short values; a larger one would bloat every status.
MAX_KEY_BYTES = 8192
# Once a frame has begun, all of it must arrive within this many seconds
# (``daemon.frame_timeout_s``); between frames a client may stay silent.
FRAME_TIMEOUT_S = 10.0
# Open connections per uid (``daemon.max_connections_per_uid``); root has
# no cap of its own. A client process keeps one connection for its life.
MAX_CONNECTIONS_PER_UID = 256
# Connections in all, and the file descriptors kept for everything else.
MAX_CONNECTIONS = 8192
FD_RESERVE = 256
# A flood of refused connections logs one WARNING per uid this often.
REFUSAL_LOG_S = 10.0
# What a status reply spends on listing pending intents, of MAX_FRAME.
STATUS_BUDGET = protocol.MAX_FRAME // 2
MAX_ERROR_CHARS = 2000


class Peer:
    """One client connection and what the kernel says about it."""

    def __init__(self, pid: int, uid: int) -> None:
        self.pid = pid
        self.uid = uid
        self.attached: set[str] = set()

    @functools.cached_property
    def owner(self) -> owners.Owner | None:
        """The process at the other end; None if it had already exited.

        Identified once per connection: the kernel fixed the peer's pid.
        """
        return owners.identify(self.uid, self.pid)

    def may_act_on(self, intent: Intent) -> bool:
        """Commit, abort, stage into or see the whole of an intent."""
        return self.uid in (0, intent.owner.uid)

    def may_attach(self, owner: owners.Owner) -> bool:
        """Take an intent back: only the very process that registered it.

        Attaching says "this connection speaks for the owner", which no
        other process can say truthfully, root's included; root acts on
        other processes' intents through commit and abort.
        """
        return self.owner is not None and owner.same_process(self.owner)


def _setting(config: Config, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(
            f"{key} in {config.where} must be a positive number, found {value!r}"
        )
    return value


def _raise_fd_limit(wanted: int) -> int:
    """Lift the soft limit on open files towards ``wanted``; the limit now.

    Every client keeps its connection open for its whole life, and the
    usual soft limit of 1024 is below what a busy host needs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit to %d: %s", target, e)
    return wanted if soft == resource.RLIM_INFINITY else soft


def _chgrp(path: Path, gid: int) -> int:
    """Give ``path`` to group ``gid``, or to ours if we may not; the gid set."""
    try:
        os.chown(path, -1, gid)
        return gid
    except PermissionError:
        mine = os.getegid()
        log.warning(
            "cannot give %s to gid=%d (the daemon is not in that group); "
            "using the daemon's group gid=%d", path, gid, mine,
        )
        os.chown(path, -1, mine)
        return mine


def take_lock(state_dir: Path) -> Any:
    """Hold the state dir's lock file, or None if another process holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class Daemon:
    """The per-host daemon.

    ``log_level``, when given (``stagerd serve --log-level``), wins over the
    config's ``daemon.log_level``, also across reloads.
    """

    def __init__(self, config: Config, log_level: str | None = None) -> None:
        self.config = config
        self.log_level = log_level
        self.db: Database = connect_db(
            config.database_url, config.database_password_file
        )
        self.started = time.time()
        self.pending: dict[str, Intent] = {}
        self._stores: dict[str, Store] = {}
        self._lock_file: Any = None
        self._server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.writer: LogWriter | None = None
        self.notifier = Notifier()
        self._bound: Path | None = None  # a socket we made and must remove
        self._watch: ConfigWatch | None = None
        self._reload_timer: asyncio.TimerHandle | None = None
        self._uid_connections: Counter[int] = Counter()
        self._refused_at: dict[int, float] = {}
        self._frame_timeout_s = _setting(
            config, "daemon.frame_timeout_s", FRAME_TIMEOUT_S
        )
        self._max_per_uid = int(_setting(
            config, "daemon.max_connections_per_uid", MAX_CONNECTIONS_PER_UID
        ))
        fds = _raise_fd_limit(MAX_CONNECTIONS + FD_RESERVE)
        self._max_connections = max(1, min(MAX_CONNECTIONS, fds - FD_RESERVE))

    # Life cycle.

    def store(self, name: str) -> Store:
        if name not in self._stores:
            self._stores[name] = Store(self.config.store(name))
        return self._stores[name]

    async def start(self, listen: bool = True) -> None:
        """Open the log, load pending intents and listen on the socket.

        ``listen=False`` opens the log only, for ``stagerd recover`` while no
        daemon runs. Under systemd, READY=1 is sent only once the log is
        open and the first sweep (startup recovery) is scheduled.
        """
        self._lock_file = take_lock(self.config.state_dir)
        if self._lock_file is None:
            raise ConfigError(
                f"another stagerd holds {self.config.state_dir / LOCK_NAME}"
            )
        if listen:
            self._spawn(self.notifier.watchdog_forever())

        # A log with many pending intents can take a while to load: ask
        # systemd for more time instead of being killed as hung.
        async with self.notifier.extending("loading the intent log"):
            intent_log = await asyncio.to_thread(
                IntentLog, self.config.state_dir / LOG_NAME
            )
            self.writer = LogWriter(intent_log)
            for intent in await self.writer.read(lambda lg: lg.load(PENDING)):
                self.pending[intent.id] = intent
        self.resolver = Resolver(self.db, self.store, self.writer, self.pending)
        log.info("intent log open path=%s pending=%d",
                 intent_log.path, len(self.pending))
        if not listen:
            return

        sock = passed_socket()
        extra: dict[str, Any] = {}
        if sock is None:
            sock = self._bind(self.config.socket_path)
            self._bound = self.config.socket_path
        elif sys.version_info >= (3, 13):
            # systemd owns a passed socket's path: asyncio must not remove it.
            extra["cleanup_socket"] = False
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, **extra
        )
        self._spawn(self._sweep_forever())
        self._spawn(self._prune_forever())
        self._spawn(self._status_forever())
        self._watch_config()
        self.notifier.ready(self._status_text())
        name = sock.getsockname()
        log.info("listening socket=%s activated=%s pid=%d", name,
                 self._bound is None, os.getpid())
        if self._bound is None and name != str(self.config.socket_path):
            log.warning(
                "systemd passed socket=%s but daemon.socket=%s in %s; clients "
                "look for the latter", name, self.config.socket_path,
                self.config.where,
            )

    def _bind(self, path: Path) -> socket.socket:
        """Listen on ``path``: mode 0660, group ``daemon.socket_group``.

        The socket's folder is kept closed to other users as well (0750,
        same group), since a connect needs search access to it.
        """
        gid = self._socket_gid()
        gid = self._socket_folder(path, gid)
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise ConfigError(
                    f"daemon.socket {path} exists and is not a socket; "
                    "remove it or point daemon.socket elsewhere"
                )
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that died; nobody listens
            else:
                raise ConfigError(f"another daemon is listening on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        _chgrp(path, gid)
        os.chmod(path, 0o660)
        return sock

    def _socket_gid(self) -> int:
        name = self.config.socket_group
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            gid = os.getegid()
            log.warning(
                "socket group %r does not exist; the socket gets the daemon's "
                "group gid=%d instead (create it: systemd-sysusers, or set "
                "daemon.socket_group in %s)", name, gid, self.config.where,
            )
            return gid

    def _socket_folder(self, path: Path, gid: int) -> int:
        """Make or tighten the socket's folder; the gid it was given.

        A folder that holds other files (``/tmp``, a home) is not ours to
        change: it is only warned about, and the socket's own mode still
        keeps other users out.
        """
        folder = path.parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
        info = folder.stat()
        if info.st_mode & 0o007 == 0 and info.st_gid == gid:
            return gid
        others = [p.name for p in folder.iterdir() if p.name != path.name]
        if info.st_uid != os.geteuid() or others:
            if info.st_mode & 0o007:
                log.warning(
                    "socket folder %s is open to other users (mode %o) and "
                    "holds other files, so it is left as it is", folder,
                    info.st_mode & 0o7777,
                )
            return gid
        gid = _chgrp(folder, gid)
        os.chmod(folder, 0o750)
        return gid

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop serving; every pending intent stays in the log for next time.

        New connections are refused at once, sweeps stop, registrations whose
        group commit is in flight are committed and answered, and only then
        are the connections closed and the log shut. A request that a
        client sent in the last moment may be logged without its answer
        reaching the client; that intent stays pending like any other and
        is resolved once its owner exits.
        """
        self._stop.set()
        if self._server is not None:
            self.notifier.stopping(
                f"stopping: {len(self.pending)} pending intents kept"
            )
        log.info("stopping pending=%d", len(self.pending))
        if self._watch is not None:
            await asyncio.to_thread(self._watch.stop)
        if self._reload_timer is not None:
            self._reload_timer.cancel()
        if self._server is not None:
            self._server.close()

        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._settle()
        # Closing a connection ends its handler normally; cancelling the
        # handler instead trips asyncio's stream callback on Python 3.11.
        for conn in self._connections.values():
            conn.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        await self._settle()

        if self._bound is not None:
            with contextlib.suppress(FileNotFoundError):
                self._bound.unlink()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self._lock_file is not None:
            self._lock_file.close()
        self.notifier.close()

    async def _settle(self) -> None:
        """Wait until every write queued so far is committed.

        The log applies queued writes in order, so a no-op submitted now
        returns only after the group commits before it.
        """
        if self.writer is not None:
            await self.writer.submit(lambda conn: None)

    # Reloading the configuration.

    def reload(self) -> bool:
        """Re-read the config file; stores and the log level change in place.

        Clients stay connected. A file that cannot be read, is not valid, or
        changes what only a restart can change (socket, state dir,
        database) is refused with a WARNING, and the old config stays.
        """
        try:
            new = config_mod.load(self.config.source)
            stores = self._check_reload(new)
        except StagerdError as e:
            log.warning("reload refused, keeping the config from %s: %s",
                        self.config.where, e)
            return False
        if new.values == self.config.values:
            log.debug("reload: %s is unchanged", new.where)
            return True
        self.config = new
        self._stores = stores
        level = self.log_level or new.log_level
        logging.getLogger().setLevel(level.upper())
        log.info("reloaded config=%s stores=%s log_level=%s", new.where,
                 ",".join(sorted(stores)), level)
        return True

    def _check_reload(self, new: Config) -> dict[str, Store]:
        """The stores of ``new``; ConfigError if it cannot replace the old."""
        for key in RESTART_KEYS:
            if new.get(key) != self.config.get(key):
                raise ConfigError(
                    f"{key} changes from {self.config.get(key)!r} to "
                    f"{new.get(key)!r} in {new.where}; that needs a restart"
                )
        # Reading the typed views checks their values.
        _ = (new.log_level, new.history_days, new.socket_group)
        stores = {name: Store(new.store(name)) for name in new.get("stores", {})}

        # Every pending intent must still be finishable where it was staged.
        for intent in self.pending.values():
            for entry in intent.objects:
                old_url = self.store(entry.store).url
                store = stores.get(entry.store)
                if store is None or store.url != old_url:
                    found = "gone" if store is None else store.url
                    raise ConfigError(
                        f"store {entry.store!r} changes from {old_url} to "
                        f"{found} while intent {intent.id} has objects in it; "
                        "wait for it or run `stagerd recover` first"
                    )
        return stores

    def _watch_config(self) -> None:
        if self.config.source is None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._watch = ConfigWatch(
                self.config.source,
                lambda: loop.call_soon_threadsafe(self._reload_soon),
            )
        except OSError as e:
            log.warning("not watching %s for changes (%s); SIGHUP still "
                        "reloads it", self.config.source, e)

    def _reload_soon(self) -> None:
        """Reload once an editor has finished writing the file."""
        if self._reload_timer is not None:
            self._reload_timer.cancel()
        self._reload_timer = asyncio.get_running_loop().call_later(
            ConfigWatch.SETTLE_S, self.reload
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Liveness and resolution.

    async def _sweep_forever(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(SWEEP_S)

    async def _status_forever(self) -> None:
        """Keep systemd's STATUS= line current (the notifier rate-limits)."""
        if not self.notifier.enabled:
            return
        while True:
            self.notifier.status(self._status_text())
            await asyncio.sleep(STATUS_TICK_S)

    def _status_text(self) -> str:
        return (
            f"serving: {len(self.pending)} pending intents, "
            f"{len(self.resolver.retrying)} retrying, "
            f"{len(self._connections)} clients"
        )

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune()
            except sqlite3.Error as e:
                log.warning("pruning the intent log failed, retrying later: %s", e)
            history_s = self.config.history_days * 86400
            await asyncio.sleep(min(PRUNE_EVERY_S, history_s / 10))

    async def prune(self) -> int:
        """Forget intents decided more than ``daemon.history_days`` ago.

        Then checkpoint the WAL, so the log's files stop growing.
        """
        assert self.writer is not None
        days = self.config.history_days
        before = time.time() - days * 86400
        removed = 0
        while True:
            n = await self.writer.submit(
                IntentLog.forget_decided(before, PRUNE_BATCH)
            )
            removed += n
            if n < PRUNE_BATCH:
                break
        frames, copied = await self.writer.read(lambda lg: lg.checkpoint())
        if removed:
            log.info("pruned decided intents=%d older_than_days=%g "
                     "wal_frames=%d checkpointed=%d", removed, days, frames, copied)
        return removed

    async def sweep(
        self, force: bool = False, uid: int | None = None
    ) -> list[dict[str, Any]]:
        """Finish every pending intent whose owner is dead; what was done.

        ``force`` retries failed intents now instead of after their backoff;
        ``uid`` limits the sweep to that user's intents.
        """
        current = owners.boot_id()
        retrying = self.resolver.retrying
        alive: dict[owners.Owner, bool] = {}  # one /proc read per owner a pass

        def dead(owner: owners.Owner) -> bool:
            if owner not in alive:
                alive[owner] = owner.is_alive(current)
            return not alive[owner]

        due = [
            intent
            for intent in list(self.pending.values())
            if (uid is None or intent.owner.uid == uid)
            and not self.resolver.busy(intent.id)
            and (force or self.resolver.due(intent.id))
            and (intent.id in retrying or dead(intent.owner))
        ]
        results = await asyncio.gather(
            *(self._resolve(i, retrying.get(i.id, True)) for i in due)
        )
        return [r for r in results if r is not None]

    async def _resolve(self, intent: Intent, fence: bool = True) -> dict[str, Any]:
        try:
            state = await self.resolver.finish(intent, fence=fence)
        except Exception as e:
            return {"id": intent.id, "state": PENDING, "error": str(e)}
        return {"id": intent.id, "state": state}

    async def _check_soon(self, intent_ids: set[str]) -> None:
        """A connection closed: look at its owners now and shortly after.

        The kernel closes a dying process's sockets before /proc shows it
        as a zombie, so the first look may still see it alive.
        """
        for delay in (0.0, 0.05, 0.2):
            await asyncio.sleep(delay)
            current = owners.boot_id()
            for intent_id in intent_ids:
                intent = self.pending.get(intent_id)
                if intent is not None and not intent.owner.is_alive(current):
                    await self._resolve(intent)

    # The socket.

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        pid, uid, _ = owners.peer_credentials(sock)
        peer = Peer(pid, uid)
        log.debug("connection pid=%d uid=%d", pid, uid)
        refusal = self._over_limit(peer)
        if refusal is not None:
            await self._refuse(writer, peer, refusal)
            return

        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self._uid_connections[uid] += 1
        try:
            while True:
                message = await self._read(reader, writer, peer)
                if message is None:
                    break
                await self._send(writer, await self._dispatch(message, peer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except TimeoutError:
            log.warning(
                "closing connection pid=%d uid=%d: its replies went unread for %s s",
                pid, uid, self._frame_timeout_s,
            )
            # close() would wait for the unread replies to drain, for ever.
            writer.transport.abort()
        finally:
            del self._connections[task]
            self._uid_connections[uid] -= 1
            if not self._uid_connections[uid]:
                del self._uid_connections[uid]
            writer.close()
            if peer.attached and not self._stop.is_set():
                self._spawn(self._check_soon(set(peer.attached)))

    def _over_limit(self, peer: Peer) -> str | None:
        """Why a new connection must be refused, or None to serve it."""
        if len(self._connections) >= self._max_connections:
            return f"the daemon serves {self._max_connections} connections already"
        if peer.uid != 0 and self._uid_connections[peer.uid] >= self._max_per_uid:
            return (
                f"uid {peer.uid} has {self._max_per_uid} connections open already "
                "(daemon.max_connections_per_uid)"
            )
        return None

    async def _refuse(
        self, writer: asyncio.StreamWriter, peer: Peer, reason: str
    ) -> None:
        """Answer a connection over a limit with one error, and hang up."""
        now = time.monotonic()
        last = self._refused_at.get(peer.uid)
        level = logging.DEBUG
        if last is None or now - last >= REFUSAL_LOG_S:
            # A flood of refusals logs once per uid per REFUSAL_LOG_S.
            self._refused_at[peer.uid] = now
            level = logging.WARNING
        log.log(level, "refused connection pid=%d uid=%d reason=%r",
                peer.pid, peer.uid, reason)
        try:
            await self._send(writer, _error(None, TooManyConnections(reason)))
        except (ConnectionError, TimeoutError):
            writer.transport.abort()
        writer.close()

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> dict[str, Any] | None:
        """The next message; None when the client is gone or must be cut off.

        A client may stay silent between frames as long as it likes, but a
        frame once begun must be complete within the frame timeout: a writer
        that stalls halfway would otherwise hold its buffer for ever.
        """
        while True:
            try:
                first = await reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return None
            try:
                async with asyncio.timeout(self._frame_timeout_s):
                    rest = await reader.readexactly(protocol.HEADER.size - 1)
                    length = protocol.header_length(first + rest)
                    body = await reader.readexactly(length)
            except ProtocolError as e:
                # The rest of the stream cannot be framed: answer and hang up.
                await self._send(writer, _error(None, e))
                return None
            except TimeoutError:
                log.warning(
                    "closing connection pid=%d uid=%d: a frame stalled for %s s",
                    peer.pid, peer.uid, self._frame_timeout_s,
                )
                return None
            try:
                return protocol.decode(body)
            except ProtocolError as e:
                await self._send(writer, _error(None, e))

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        """Write one reply; TimeoutError if the client stopped reading."""
        try:
            frame = protocol.encode(reply)
        except protocol.FrameTooLarge as e:
            frame = protocol.encode(_error(reply.get("id"), e))
        writer.write(frame)
        async with asyncio.timeout(self._frame_timeout_s):
            await writer.drain()

    async def _dispatch(self, message: dict[str, Any], peer: Peer) -> dict[str, Any]:
        request_id = None
        try:
            request_id = protocol.request_id(message)
            op = protocol.check_request(message)
            handler = getattr(self, f"_op_{op}")
            reply = await handler(message, peer)
        except StagerdError as e:
            return _error(request_id, e)
        except Exception as e:
            log.exception("request failed op=%r", message.get("op"))
            return _error(request_id, e)
        return {"v": protocol.VERSION, "id": request_id, "ok": True, **reply}

    # Operations.

    def _check_database(self, message: dict[str, Any]) -> None:
        theirs = protocol.field(message, "database", str)
        if theirs != self.db.identity:
            raise ConfigError(
                f"the client uses database {theirs} but this daemon decides "
                f"intents in {self.db.identity}; point both at one config"
            )

    def _check_store(self, message: dict[str, Any], name: str) -> Store:
        try:
            store = self.store(name)
        except ConfigError as e:
            raise ConfigError(f"daemon: {e}") from e
        theirs = protocol.field(message, "store_url", str)
        if theirs != store.url:
            raise ConfigError(
                f"store {name!r} is {theirs} for the client but {store.url} for "
                "the daemon; point both at one config"
            )
        return store

    def _owned(self, intent_id: Any, peer: Peer) -> Intent:
        if not isinstance(intent_id, str):
            raise ProtocolError(f"intent id must be a string, got {intent_id!r}")
        intent = self.pending.get(intent_id)
        if intent is None:
            raise StagingError(f"no pending intent {intent_id!r}")
        if not peer.may_act_on(intent):
            raise NotOwnerError(
                f"intent {intent_id} belongs to uid {intent.owner.uid}; "
                f"uid {peer.uid} may not act on it"
            )
        return intent

    async def _op_register(self, message: dict[str, Any], peer: Peer) -> dict:
        schema = layout.check_ident("schema", protocol.field(message, "schema", str))
        table = protocol.field(message, "table", str)
        key = protocol.field(message, "key", dict)
        key_bytes = len(json.dumps(key))
        if key_bytes > MAX_KEY_BYTES:
            raise StagingError(
                f"register: the primary key takes {key_bytes} bytes as JSON; "
                f"the limit is {MAX_KEY_BYTES}"
            )
        field = protocol.field(message, "field", str)
        ext = layout.check_ext(protocol.field(message, "ext", str))
        store_name = protocol.field(message, "store", str)
        self._check_database(message)
        self._check_store(message, store_name)

        intent_id = message.get("intent")
        if intent_id is None:
            owner = peer.owner
            if owner is None:
                raise StagingError(f"process {peer.pid} exited while registering")
            intent = Intent(
                layout.new_intent_id(), "stage", PENDING, schema, table, key,
                owner, time.time(),
            )
        else:
            intent = self._owned(intent_id, peer)
            if intent.kind != "stage":
                raise StagingError(
                    f"intent {intent.id} is a {intent.kind} intent; objects are "
                    "staged only into the intent of a staged insert"
                )
            if (intent.schema, intent.table, intent.key) != (schema, table, key):
                raise StagingError(
                    f"intent {intent.id} is for {intent.schema}.{intent.table} "
                    f"{intent.key}, not {schema}.{table} {key}"
                )
            for entry in intent.objects:
                if entry.field == field and entry.store == store_name:
                    if entry.ext != ext:
                        raise StagingError(
                            f"field {field!r} was staged with ext {entry.ext!r}, "
                            f"not {ext!r}"
                        )
                    return {"intent": intent.id, "path": entry.path}
            if len(intent.objects) >= MAX_OBJECTS_PER_INTENT:
                raise StagingError(
                    f"intent {intent.id} has {MAX_OBJECTS_PER_INTENT} objects already"
                )

        entry = ObjectEntry(
            field, store_name,
            layout.object_path(schema, table, key, field, intent.id, ext), ext,
        )
        if intent_id is None:
            intent.objects.append(entry)
            await self.writer.submit(IntentLog.insert_intent(intent))
            self.pending[intent.id] = intent
        else:
            await self.writer.submit(IntentLog.insert_object(intent.id, entry))
            intent.objects.append(entry)
        peer.attached.add(intent.id)
        faults.point("daemon.register.logged")
        log.info(
            "registered intent=%s uid=%d pid=%d table=%s.%s store=%s path=%s",
            intent.id, peer.uid, peer.pid, schema, table, store_name, entry.path,
        )
        return {"intent": intent.id, "path": entry.path}

    async def _op_delete(self, message: dict[str, Any], peer: Peer) -> dict:
        """Log the objects of rows a client is about to delete.

        The client then deletes the rows and records ``committed`` for this
        intent in one transaction; the daemon deletes the objects only once
        that decision exists.
        """
        schema = layout.check_ident("schema", protocol.field(message, "schema", str))
        table = protocol.field(message, "table", str)
        objects = protocol.field(message, "objects", list)
        self._check_database(message)
        if not objects or len(objects) > MAX_OBJECTS_PER_INTENT:
            raise ProtocolError(
                f"delete: 'objects' must list 1 to {MAX_OBJECTS_PER_INTENT} objects"
            )

        # Once the ledger says committed, the resolver still keeps any object
        # a row references: a forged decision cannot delete under kept rows.
        entries: list[ObjectEntry] = []
        seen: set[tuple[str, str]] = set()
        for item in objects:
            if not isinstance(item, dict):
                raise ProtocolError(
                    f"delete: each object must be an object, got {type(item).__name__}"
                )
            store_name = protocol.field(item, "store", str, "delete: object")
            path = protocol.field(item, "path", str, "delete: object")
            store = self.store(store_name)
            store.full(path)
            their_schema, their_table, field, _ = layout.parse_object_path(path)
            if (their_schema, their_table) != (schema, table):
                raise StagingError(
                    f"delete: {path!r} does not belong to {schema}.{table}"
                )
            if (store_name, path) in seen:
                raise ProtocolError(f"delete: {store_name}:{path} is listed twice")
            seen.add((store_name, path))
            entries.append(ObjectEntry(field, store_name, path, ""))
        forged = await self.writer.read(lambda lg: _not_allocated(lg, entries))
        if forged:
            raise StagingError(
                f"delete: {forged!r} names the intent that made it, but that "
                "intent was never given this path; refusing to delete it"
            )
        await asyncio.to_thread(self._check_committed, schema, entries)

        owner = peer.owner
        if owner is None:
            raise StagingError(f"process {peer.pid} exited while deleting")
        intent = Intent(
            layout.new_intent_id(), "delete", PENDING, schema, table, {}, owner,
            time.time(), entries,
        )
        await self.writer.submit(IntentLog.insert_intent(intent))
        self.pending[intent.id] = intent
        peer.attached.add(intent.id)
        log.info(
            "registered delete intent=%s uid=%d pid=%d table=%s.%s objects=%d",
            intent.id, peer.uid, peer.pid, schema, table, len(entries),
        )
        return {"intent": intent.id}

    def _check_committed(self, schema: str, entries: list[ObjectEntry]) -> None:
        """Refuse to delete any object that no committed insert made."""
        made_by = {e.path: layout.parse_object_path(e.path)[3] for e in entries}
        conn = self.db.connect()
        try:
            outcomes = ledger.read_many(self.db, conn, schema, made_by.values())
        finally:
            conn.close()
        for path, intent_id in made_by.items():
            if outcomes.get(intent_id) != ledger.COMMITTED:
                raise StagingError(
                    f"delete: {path!r} was not made by a committed "
                    "staged insert; refusing to delete it"
                )

    async def _op_commit(self, message: dict[str, Any], peer: Peer) -> dict:
        intent = self._owned(message.get("intent"), peer)
        state = await self.resolver.finish(intent, fence=False)
        if state is None:
            raise StagingError(
                f"intent {intent.id} has no decision record in the ledger; "
                "commit the row and its record before reporting the commit"
            )
        return {"intent": intent.id, "state": state}

    async def _op_abort(self, message: dict[str, Any], peer: Peer) -> dict:
        intent = self._owned(message.get("intent"), peer)
        state = await self.resolver.finish(intent, fence=True)
        return {"intent": intent.id, "state": state}

    async def _op_attach(self, message: dict[str, Any], peer: Peer) -> dict:
        """A reconnecting client takes its intents back, or learns how they ended.

        Only the owning process may take a pending intent back; how an
        intent ended is told to its owner's uid and root. An id the log does
        not know gets the state None.
        """
        ids = protocol.field(message, "intents", list)
        if len(ids) > MAX_OBJECTS_PER_INTENT:
            raise ProtocolError(
                f"attach: at most {MAX_OBJECTS_PER_INTENT} intents at once, "
                f"got {len(ids)}"
            )
        states = {}
        for intent_id in ids:
            if not isinstance(intent_id, str):
                kind = type(intent_id).__name__
                raise ProtocolError(f"attach: intent ids must be strings, got {kind}")
            intent = self.pending.get(intent_id)
            if intent is None:
                owner, state = await self._finished(intent_id)
                allowed = owner is None or peer.uid in (0, owner.uid)
            else:
                owner, state = intent.owner, PENDING
                allowed = peer.may_attach(owner)
            if owner is not None and not allowed:
                raise NotOwnerError(
                    f"intent {intent_id} belongs to pid {owner.pid} of uid "
                    f"{owner.uid}, not to pid {peer.pid} of uid {peer.uid}"
                )
            if intent is not None:
                peer.attached.add(intent_id)
            states[intent_id] = state
        return {"states": states}

    async def _finished(self, intent_id: str) -> tuple[owners.Owner | None, str | None]:
        """Owner and state of an intent no longer pending; Nones if unknown."""
        return await self.writer.read(lambda lg: lg.owner_and_state(intent_id))

    async def _op_status(self, message: dict[str, Any], peer: Peer) -> dict:
        """The daemon, and the pending intents as far as one reply holds them.

        Oldest first, up to STATUS_BUDGET bytes of JSON; ``pending_truncated``
        says whether some were left out (``counts`` has them all).
        """
        counts = await self.writer.read(lambda lg: lg.counts())
        shown: list[dict[str, Any]] = []
        size = 0
        for intent in self.pending.values():
            summary = _summary(intent, peer)
            size += len(json.dumps(summary))
            if size > STATUS_BUDGET:
                break
            shown.append(summary)
        return {
            "daemon": {
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3),
                "socket": str(self.config.socket_path),
                "state_dir": str(self.config.state_dir),
                "database": self.db.identity,
                "log_commits": self.writer.commits,
                "log_writes": self.writer.writes,
                "connections": len(self._connections),
            },
            "counts": counts,
            "pending": shown,
            "pending_truncated": len(shown) < len(self.pending),
        }

    async def _op_recover(self, message: dict[str, Any], peer: Peer) -> dict:
        """Resolve dead owners' intents now, retrying failed ones at once.

        Root and the daemon's own user sweep every intent; anyone else only
        their own, and hears only of those.
        """
        uid = None if peer.uid in (0, os.geteuid()) else peer.uid
        decided = await self.sweep(force=True, uid=uid)
        pending = sum(
            1 for i in self.pending.values() if uid is None or i.owner.uid == uid
        )
        return {"decided": decided, "pending": pending}


def _not_allocated(lg: IntentLog, entries: list[ObjectEntry]) -> str | None:
    """The first path whose intent the log knows but never gave that path.

    An intent the log does not know (pruned after ``daemon.history_days``,
    or staged through another host's daemon) leaves the decision record as
    the only check.
    """
    for entry in entries:
        made_by = layout.parse_object_path(entry.path)[3]
        if lg.allocated(made_by, entry.store, entry.path) is False:
            return entry.path
    return None


def _summary(intent: Intent, peer: Peer) -> dict[str, Any]:
    """What status shows of an intent: everything to its owner and root.

    Other users see whose intent it is, of what kind, on which table, its
    age and object count, but not its id, key, paths or last error: the id
    is the key of its decision record, so whoever may write the ledger
    could decide it with that, and the paths say where its bytes go.
    """
    summary = {**intent.summary(), "n_objects": len(intent.objects)}
    if peer.may_act_on(intent):
        return {**summary, "hidden": False}
    return {**summary, "id": None, "key": None, "objects": [], "last_error": None,
            "hidden": True}


def _error(request_id: Any, error: BaseException) -> dict[str, Any]:
    kind = type(error).__name__ if isinstance(error, StagerdError) else "InternalError"
    text = str(error)
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}... ({len(text)} characters in all)"
    return {
        "v": protocol.VERSION,
        "id": request_id,
        "ok": False,
        "error": {"kind": kind, "message": text},
    }
