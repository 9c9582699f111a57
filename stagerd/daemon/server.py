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
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from stagerd.core import faults, layout, ledger, protocol
from stagerd.core.config import Config
from stagerd.core.db import Database
from stagerd.core.db import connect as connect_db
from stagerd.core.errors import (
    ConfigError,
    NotOwnerError,
    ProtocolError,
    StagerdError,
    StagingError,
)
from stagerd.core.stores import Store
from stagerd.daemon import owners
from stagerd.daemon.intents import (
    PENDING,
    Intent,
    IntentLog,
    LogWriter,
    ObjectEntry,
)
from stagerd.daemon.resolver import Resolver

__all__ = ["Daemon", "LOG_NAME", "LOCK_NAME", "SWEEP_S"]

log = logging.getLogger(__name__)

LOG_NAME = "intents.db"
LOCK_NAME = "stagerd.lock"
SWEEP_S = 0.25
# A staged insert with more objects than this is a bug or an attack.
MAX_OBJECTS_PER_INTENT = 1000


class Peer:
    """One client connection and what the kernel says about it."""

    def __init__(self, pid: int, uid: int) -> None:
        self.pid = pid
        self.uid = uid
        self.attached: set[str] = set()

    def may_act_on(self, intent: Intent) -> bool:
        return self.uid in (0, intent.owner.uid)


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
    def __init__(self, config: Config) -> None:
        self.config = config
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

    # Life cycle.

    def store(self, name: str) -> Store:
        if name not in self._stores:
            self._stores[name] = Store(self.config.store(name))
        return self._stores[name]

    async def start(self, listen: bool = True) -> None:
        """Open the log, load pending intents and listen on the socket.

        ``listen=False`` opens the log only, for ``stagerd recover`` while no
        daemon runs.
        """
        self._lock_file = take_lock(self.config.state_dir)
        if self._lock_file is None:
            raise ConfigError(
                f"another stagerd holds {self.config.state_dir / LOCK_NAME}"
            )

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

        self._server = await asyncio.start_unix_server(
            self._serve, sock=self._bind(self.config.socket_path)
        )
        self._spawn(self._sweep_forever())
        log.info("listening socket=%s pid=%d", self.config.socket_path, os.getpid())

    def _bind(self, path: Path) -> socket.socket:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
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
        # TODO(access): mode 0660 and a stagerd group; until then any local
        # user may connect, and SO_PEERCRED still limits what each may do.
        os.chmod(path, 0o666)
        return sock

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        await self._stop.wait()
        await self.close()

    async def close(self) -> None:
        log.info("stopping pending=%d", len(self.pending))
        if self._server is not None:
            self._server.close()
        # Closing a connection ends its handler normally; cancelling the
        # handler instead trips asyncio's stream callback on Python 3.11.
        for conn in self._connections.values():
            conn.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path.unlink()
        await asyncio.to_thread(self.writer.close)
        self._lock_file.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Liveness and resolution.

    async def _sweep_forever(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(SWEEP_S)

    async def sweep(self, force: bool = False) -> list[dict[str, Any]]:
        """Finish every pending intent whose owner is dead; what was done.

        ``force`` retries failed intents now instead of after their backoff.
        """
        current = owners.boot_id()
        retrying = self.resolver.retrying
        due = [
            intent
            for intent in list(self.pending.values())
            if not self.resolver.busy(intent.id)
            and (force or self.resolver.due(intent.id))
            and (intent.id in retrying or not intent.owner.is_alive(current))
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
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                message = await self._read(reader, writer)
                if message is None:
                    break
                reply = await self._dispatch(message, peer)
                writer.write(protocol.encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            del self._connections[task]
            writer.close()
            if peer.attached and not self._stop.is_set():
                self._spawn(self._check_soon(set(peer.attached)))

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        """The next message; None when the client is gone or must be cut off."""
        while True:
            try:
                header = await reader.readexactly(protocol.HEADER.size)
            except asyncio.IncompleteReadError:
                return None
            try:
                length = protocol.header_length(header)
            except ProtocolError as e:
                # The rest of the stream cannot be framed: answer and hang up.
                writer.write(protocol.encode(_error(None, e)))
                await writer.drain()
                return None
            body = await reader.readexactly(length)
            try:
                return protocol.decode(body)
            except ProtocolError as e:
                writer.write(protocol.encode(_error(None, e)))
                await writer.drain()

    async def _dispatch(self, message: dict[str, Any], peer: Peer) -> dict[str, Any]:
        request_id = message.get("id")
        if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
            request_id = None
        try:
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
        field = protocol.field(message, "field", str)
        ext = layout.check_ext(protocol.field(message, "ext", str))
        store_name = protocol.field(message, "store", str)
        self._check_database(message)
        self._check_store(message, store_name)

        intent_id = message.get("intent")
        if intent_id is None:
            owner = owners.identify(peer.uid, peer.pid)
            if owner is None:
                raise StagingError(f"process {peer.pid} exited while registering")
            intent = Intent(
                layout.new_intent_id(), "stage", PENDING, schema, table, key,
                owner, time.time(),
            )
        else:
            intent = self._owned(intent_id, peer)
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

        entries = []
        for item in objects:
            if not isinstance(item, dict):
                raise ProtocolError(f"delete: object {item!r} is not an object")
            store_name = protocol.field(item, "store", str)
            path = protocol.field(item, "path", str)
            store = self.store(store_name)
            store.full(path)
            their_schema, their_table, field, _ = layout.parse_object_path(path)
            if (their_schema, their_table) != (schema, table):
                raise StagingError(
                    f"delete: {path!r} does not belong to {schema}.{table}"
                )
            entries.append(ObjectEntry(field, store_name, path, ""))
        await asyncio.to_thread(self._check_committed, schema, entries)

        owner = owners.identify(peer.uid, peer.pid)
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
        conn = self.db.connect()
        try:
            for entry in entries:
                made_by = layout.parse_object_path(entry.path)[3]
                if ledger.read(self.db, conn, schema, made_by) != ledger.COMMITTED:
                    raise StagingError(
                        f"delete: {entry.path!r} was not made by a committed "
                        "staged insert; refusing to delete it"
                    )
        finally:
            conn.close()

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
        """A reconnecting client takes its intents back."""
        ids = protocol.field(message, "intents", list)
        me = owners.identify(peer.uid, peer.pid)
        states = {}
        for intent_id in ids:
            if not isinstance(intent_id, str):
                raise ProtocolError(f"attach: intent id {intent_id!r} is not a string")
            intent = self.pending.get(intent_id)
            if intent is None:
                states[intent_id] = await self._final_state(intent_id)
                continue
            if me is None or not intent.owner.same_process(me):
                raise NotOwnerError(
                    f"intent {intent_id} belongs to pid {intent.owner.pid}, "
                    f"not to pid {peer.pid}"
                )
            peer.attached.add(intent_id)
            states[intent_id] = PENDING
        return {"states": states}

    async def _final_state(self, intent_id: str) -> str | None:
        def read(lg: IntentLog) -> str | None:
            row = lg.conn.execute(
                "SELECT state FROM intents WHERE id = ?", (intent_id,)
            ).fetchone()
            return None if row is None else row[0]

        return await self.writer.read(read)

    async def _op_status(self, message: dict[str, Any], peer: Peer) -> dict:
        counts = await self.writer.read(lambda lg: lg.counts())
        return {
            "daemon": {
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3),
                "socket": str(self.config.socket_path),
                "state_dir": str(self.config.state_dir),
                "database": self.db.identity,
                "log_commits": self.writer.commits,
                "log_writes": self.writer.writes,
            },
            "counts": counts,
            "pending": [i.summary() for i in self.pending.values()],
        }

    async def _op_recover(self, message: dict[str, Any], peer: Peer) -> dict:
        if peer.uid != 0 and peer.uid != os.geteuid():
            raise NotOwnerError("recover: only root or the daemon's user may ask")
        return {"decided": await self.sweep(force=True), "pending": len(self.pending)}


def _error(request_id: Any, error: BaseException) -> dict[str, Any]:
    kind = type(error).__name__ if isinstance(error, StagerdError) else "InternalError"
    return {
        "v": protocol.VERSION,
        "id": request_id,
        "ok": False,
        "error": {"kind": kind, "message": str(error)},
    }
