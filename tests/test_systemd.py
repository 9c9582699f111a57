"""Running under systemd: unit files, sd_notify, socket activation, access.

systemd itself is not needed: a test binds the datagram socket systemd
would listen on and reads what a real daemon process sends there, and a
small launcher passes a listening socket as fd 3 the way systemd does
(LISTEN_FDS/LISTEN_PID, then exec). Only the unit-file checks need the
systemd tools, and are skipped without them.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest

import stagerd_client
from conftest import HERE, DaemonProcess, Deployment, holder, wait_until
from stagerd.core import config as config_mod
from stagerd.core import protocol
from stagerd.core.stores import Store

UNITS = HERE.parent / "systemd"

# Sets the given variables ("{pid}" becomes this process's pid, which exec
# keeps), moves an inherited socket to fd 3, then becomes the daemon.
LAUNCHER = """
import json, os, sys
fd, env, args = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3:]
if fd >= 0 and fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
for name, value in env.items():
    os.environ[name] = value.replace("{pid}", str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "stagerd", "serve", *args])
"""


class Served:
    """``stagerd serve`` with the environment and fds systemd would give it."""

    def __init__(
        self,
        deployment: Deployment,
        env: dict[str, str] | None = None,
        log_level: str | None = "debug",
        listen: socket.socket | None = None,
        launch_env: dict[str, str] | None = None,
    ) -> None:
        self.deployment = deployment
        self.env = {**deployment.env, **(env or {})}
        self.args = ["--config", str(deployment.config)]
        if log_level:
            self.args += ["--log-level", log_level]
        self.listen = listen
        self.launch_env = dict(launch_env or {})
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def start(self, wait: bool = True) -> Served:
        launch_env = dict(self.launch_env)
        fd = -1
        if self.listen is not None:
            fd = self.listen.fileno()
            launch_env.update(LISTEN_FDS="1", LISTEN_PID="{pid}")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(fd), json.dumps(launch_env),
             *self.args],
            stderr=subprocess.PIPE, text=True, env=self.env,
            pass_fds=() if fd < 0 else (fd,),
        )
        threading.Thread(target=self._collect, args=(self.proc,), daemon=True).start()
        if wait:
            wait_until(self.answers, 20, "the daemon answers")
        return self

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("daemon exited:\n" + "\n".join(self.log))
        try:
            protocol.call(self.deployment.socket, "status")
        except (OSError, stagerd_client.StagerdError):
            return False
        return True

    def _collect(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.log.append(line.rstrip())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        self.proc.stderr.close()
        return self.proc.returncode

    def logged(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]

    def text(self) -> str:
        return "\n".join(self.log)


def served_daemons(deployment: Deployment):
    """Make Served daemons; each is stopped and its log checked afterwards."""
    made: list[Served] = []

    def make(*args, **kwargs) -> Served:
        made.append(Served(deployment, *args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        if s.proc is None:
            continue
        running = s.proc.poll() is None
        code = s.stop()
        if running:
            assert code == 0, s.text()
        errors = s.logged("level=ERROR")
        assert not errors, "\n".join(errors)


@pytest.fixture
def served(deployment):
    yield from served_daemons(deployment)


class NotifySocket:
    """The datagram socket systemd listens on for sd_notify messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address}

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20):
        """The first message holding ``key`` (matching ``value`` if given)."""
        def found():
            return [(t, m) for t, m in self.with_key(key)
                    if value is None or re.search(value, m[key])]

        wait_until(lambda: bool(found()), timeout, f"a notify message with {key}")
        return found()[0]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    yield ns
    ns.close()


# sd_notify.


def test_ready_comes_after_the_log_is_loaded_then_status_then_stopping(
    deployment, spawn, served, notify
):
    # An intent whose owner died while no daemon ran: startup recovery's job.
    first = DaemonProcess(deployment).start()
    held = spawn(holder())
    intent = held.expect("HOLDING").split()[1]
    first.kill()
    held.kill()
    held.wait()
    assert deployment.files()

    daemon = served(env=notify.env).start(wait=False)
    ready_at, ready = notify.wait_for("READY")
    # The READY line counts the intent, so the log was loaded before it,
    # and the socket already answers.
    assert ready["READY"] == "1"
    assert re.search(r"\b1 pending intents\b", ready["STATUS"]), ready
    assert daemon.answers()
    extended = notify.with_key("EXTEND_TIMEOUT_USEC")
    assert extended and extended[0][0] <= ready_at
    assert int(extended[0][1]["EXTEND_TIMEOUT_USEC"]) > 0

    # Startup recovery resolves it, and the STATUS line follows.
    notify.wait_for("STATUS", r"\b0 pending intents\b")
    wait_until(lambda: deployment.files() == [], 5, f"{intent} removed")
    statuses = [m["STATUS"] for _, m in notify.with_key("STATUS")]
    assert len(statuses) == len(set(statuses)), "STATUS sent without a change"

    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0, daemon.text()
    _, stopping = notify.wait_for("STOPPING")
    assert stopping["STOPPING"] == "1"


def test_status_follows_pending_counts_rate_limited(deployment, spawn, served,
                                                     notify):
    served(env=notify.env).start()
    ready_at, _ = notify.wait_for("READY")
    clients = [spawn(holder()) for _ in range(3)]
    for c in clients:
        c.expect("HOLDING")
    notify.wait_for("STATUS", r"\b3 pending intents\b")
    for c in clients:
        c.kill()
    notify.wait_for("STATUS", r"\b0 pending intents\b")
    times = [t for t, _ in notify.with_key("STATUS") if t >= ready_at]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 0.9 for g in gaps), gaps  # at most one a second


def test_watchdog_pings_at_half_the_interval(deployment, served, notify):
    served(env={**notify.env, "WATCHDOG_USEC": "200000"}).start()
    notify.wait_for("READY")
    time.sleep(1.0)
    pings = [t for t, m in notify.with_key("WATCHDOG")]
    assert len(pings) >= 6, pings
    gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
    assert 0.05 <= gaps[len(gaps) // 2] <= 0.2, gaps


def test_watchdog_pid_of_this_process_is_honoured(deployment, served, notify):
    # WATCHDOG_PID set to the daemon's own pid (exec keeps it): pings.
    served(env={**notify.env, "WATCHDOG_USEC": "200000"},
           launch_env={"WATCHDOG_PID": "{pid}"}).start()
    notify.wait_for("READY")
    notify.wait_for("WATCHDOG", timeout=2)


def test_watchdog_meant_for_another_process_is_ignored(deployment, served, notify):
    env = {**notify.env, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    served(env=env).start()
    notify.wait_for("READY")
    time.sleep(0.6)
    assert notify.with_key("WATCHDOG") == []


def test_abstract_notify_socket(deployment, served):
    ns = NotifySocket(f"@stagerd-test-{uuid.uuid4().hex}")
    try:
        served(env=ns.env).start()
        ns.wait_for("READY")
    finally:
        ns.close()


def test_no_notify_socket_no_notifications(deployment, served, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon = served().start()
    time.sleep(0.3)
    assert "NOTIFY_SOCKET" not in daemon.env and daemon.answers()
    assert not daemon.logged("logger=stagerd.daemon.notify"), "it tried to notify"


# Socket activation.


def _listening(path: Path, kind: int = socket.SOCK_STREAM) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(str(path))
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    return sock


def test_passed_socket_is_served_kept_and_queues_clients_across_restarts(
    deployment, served
):
    # The passed socket sits where the config says: a daemon that tried to
    # bind its own would find it taken and stop.
    sock = _listening(deployment.socket)
    try:
        first = served(listen=sock).start()
        assert first.logged("activated=True")
        first.signal(signal.SIGTERM)
        assert first.proc.wait(20) == 0, first.text()
        assert deployment.socket.is_socket(), "systemd's socket was removed"

        # Between daemons the kernel queues a client on the held socket.
        client = protocol.connect(deployment.socket, timeout=30)
        protocol.send(client, {"v": protocol.VERSION, "id": 7, "op": "status"})
        second = served(listen=sock).start(wait=False)
        reply = protocol.check_reply(protocol.recv(client))
        client.close()
        assert reply["id"] == 7 and reply["daemon"]["pid"] == second.proc.pid
    finally:
        sock.close()


def test_passed_socket_of_the_wrong_kind_is_refused(deployment, served, tmp_path):
    sock = _listening(tmp_path / "dgram.sock", socket.SOCK_DGRAM)
    try:
        daemon = served(listen=sock).start(wait=False)
        assert daemon.proc.wait(20) == 1
        time.sleep(0.1)
        assert daemon.logged("stagerd: the socket systemd passed (fd 3) must be")
        assert daemon.logged("SOCK_DGRAM") and "Traceback" not in daemon.text()
    finally:
        sock.close()


def test_listen_fds_meant_for_another_process_are_ignored(deployment, served):
    daemon = served(launch_env={"LISTEN_FDS": "1", "LISTEN_PID": "1"}).start()
    assert daemon.logged("activated=False")


# The socket the daemon binds itself.


def _other_group() -> grp.struct_group:
    """An existing group that neither root nor nobody is in."""
    for g in grp.getgrall():
        if g.gr_gid not in (0, 65534) and not g.gr_mem:
            return g
    pytest.fail("no spare group in /etc/group to give the socket to")


def test_own_socket_falls_back_to_the_daemons_group(deployment, served):
    missing = f"stagerd-absent-{uuid.uuid4().hex[:8]}"
    deployment.write_config(daemon={"socket_group": missing})
    daemon = served().start()
    [warning] = daemon.logged(f"socket group '{missing}' does not exist")
    assert "level=WARNING" in warning
    info = deployment.socket.stat()
    assert info.st_mode & 0o777 == 0o660 and info.st_gid == os.getegid()
    folder = deployment.socket.parent.stat()
    assert folder.st_mode & 0o777 == 0o750 and folder.st_gid == os.getegid()


def _connect_as(path: Path, uid: int, groups: list[int]) -> str:
    """Try the socket from a child process with another uid; what happened."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on
        result = "connected"
        try:
            os.setgroups(groups)
            os.setgid(groups[0] if groups else 65534)
            os.setuid(uid)
            protocol.call(path, "status")
        except stagerd_client.DaemonUnavailable as e:
            refused = isinstance(e.__cause__, PermissionError)
            result = "refused" if refused else f"unavailable: {e}"
        except BaseException as e:  # reported to the parent, which fails
            result = f"{type(e).__name__}: {e}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result = f.read()
    os.waitpid(pid, 0)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_own_socket_admits_its_group_only(served):
    group = _other_group()
    # The test's tmp_path is closed to other users; this folder is not.
    root = Path(tempfile.mkdtemp(prefix="stagerd-access-"))
    try:
        root.chmod(0o711)
        deployment = Deployment(root)
        deployment.write_config(daemon={"socket_group": group.gr_name})
        daemon = Served(deployment).start()
        try:
            info = deployment.socket.stat()
            assert info.st_mode & 0o777 == 0o660 and info.st_gid == group.gr_gid
            folder = deployment.socket.parent.stat()
            assert folder.st_mode & 0o777 == 0o750
            assert folder.st_gid == group.gr_gid

            nobody = 65534
            assert _connect_as(deployment.socket, nobody, []) == "refused"
            assert _connect_as(deployment.socket, nobody, [group.gr_gid]) == (
                "connected"
            )
        finally:
            assert daemon.stop() == 0, daemon.text()
        assert not daemon.logged("level=ERROR"), daemon.text()
        assert not daemon.logged("level=WARNING"), daemon.text()
    finally:
        shutil.rmtree(root)


NOBODY = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3")


# Lists where each module the daemon imports was loaded from.
IMPORTED_FROM = """
import sys, stagerd.cli
for name, module in sorted(sys.modules.items()):
    if "." not in name and getattr(module, "__file__", None):
        print(module.__file__)
"""


def _readable_copy(into: Path) -> Path:
    """Copy the packages the daemon imports to ``into``, open to everyone.

    The test venv and the checkout may sit in folders other users cannot
    enter (under /root, or in a 0700 temp dir), so user nobody gets copies.
    """
    found = subprocess.run([sys.executable, "-c", IMPORTED_FROM], check=True,
                           capture_output=True, text=True).stdout.split()
    stdlib = Path(os.__file__).parent
    for file in map(Path, found):
        if file.is_relative_to(stdlib):
            continue
        source = file.parent if file.name == "__init__.py" else file
        target = into / source.name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return into


@pytest.fixture
def packages_for_nobody():
    packages = Path(tempfile.mkdtemp(prefix="stagerd-packages-"))
    yield packages
    shutil.rmtree(packages)


def _python_for_nobody(packages: Path) -> tuple[list[str], dict[str, str]]:
    """A python that user nobody can run with stagerd importable, or skip.

    The system python of the test's version imports readable copies of the
    packages the daemon needs.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to start a daemon as another user")
    env = {**os.environ, "PYTHONPATH": str(_readable_copy(packages))}
    command = [str(SYSTEM_PYTHON), "-c", "import stagerd.daemon.server"]
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"no {SYSTEM_PYTHON} to run a daemon as user nobody")
    probe = subprocess.run(command, env=env, user=NOBODY, group=NOBODY,
                           extra_groups=[], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot import stagerd with {SYSTEM_PYTHON}: "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    return [str(SYSTEM_PYTHON), "-m", "stagerd"], env


def test_unprivileged_daemon_falls_back_to_its_own_group(packages_for_nobody):
    """As under systemd's User=: the socket group is one it is not in."""
    command, env = _python_for_nobody(packages_for_nobody)
    group = _other_group()
    root = Path(tempfile.mkdtemp(prefix="stagerd-nobody-"))
    try:
        root.chmod(0o711)
        deployment = Deployment(root)
        deployment.write_config(daemon={"socket_group": group.gr_name})
        os.chown(root, NOBODY, NOBODY)
        proc = subprocess.Popen(
            [*command, "serve", "--config", str(deployment.config)],
            env={**env, "STAGERD_CONFIG": str(deployment.config)},
            user=NOBODY, group=NOBODY, extra_groups=[],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            def answers() -> bool:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    return bool(deployment.status())
                except (OSError, stagerd_client.StagerdError):
                    return False

            wait_until(answers, 20, "the daemon answers")
            info = deployment.socket.stat()
            assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
            assert info.st_mode & 0o777 == 0o660
            assert deployment.socket.parent.stat().st_mode & 0o777 == 0o750
        finally:
            proc.send_signal(signal.SIGTERM)
            _, log = proc.communicate(timeout=20)
        assert proc.returncode == 0, log
        assert f"cannot give {deployment.socket.parent} to gid={group.gr_gid}" in log
        assert "level=ERROR" not in log, log
    finally:
        shutil.rmtree(root)


def test_own_socket_leaves_a_shared_folder_alone(tmp_path, served, deployment):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "someone-elses-file").write_text("x")
    deployment.socket = shared / "stagerd.sock"
    deployment.write_config(daemon={"socket": str(deployment.socket)})
    daemon = served().start()
    assert shared.stat().st_mode & 0o777 == 0o777
    assert daemon.logged(f"socket folder {shared} is open to other users")
    assert deployment.socket.stat().st_mode & 0o777 == 0o660


# The unit files.


def _exec_paths(unit: Path) -> set[str]:
    paths = set()
    for line in unit.read_text().splitlines():
        m = re.match(r"Exec\w+=[-@:+!]*(/\S+)", line)
        if m:
            paths.add(m.group(1))
    return paths


def test_units_pass_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (no systemd here)")
    # A root of our own, so the check does not depend on this machine's
    # units or on where stagerd is installed; the programs the units run
    # must exist there, so each gets a stand-in.
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    names = []
    for unit in sorted(UNITS.glob("stagerd*.*")):
        if unit.suffix in (".service", ".socket", ".timer"):
            shutil.copy(unit, units / unit.name)
            names.append(unit.name)
            for program in _exec_paths(unit):
                stand_in = tmp_path / program.lstrip("/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
    assert set(names) == {"stagerd.service", "stagerd.socket",
                          "stagerd-gc.service", "stagerd-gc.timer"}

    result = subprocess.run(
        [tool, "verify", "--man=no", "--recursive-errors=no",
         f"--root={tmp_path}", *names],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_sysusers_makes_the_stagerd_user_and_group(tmp_path):
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed (no systemd here)")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [tool, f"--root={tmp_path}", str(UNITS / "stagerd.sysusers")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [user] = [line.split(":") for line in (tmp_path / "etc/passwd").read_text()
              .splitlines() if line.startswith("stagerd:")]
    [group] = [line.split(":") for line in (tmp_path / "etc/group").read_text()
               .splitlines() if line.startswith("stagerd:")]
    assert user[3] == group[2]  # its primary group is stagerd
    assert user[5] == "/var/lib/stagerd" and user[6].endswith("nologin")


def _settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_units_and_sample_config_agree():
    service = _settings(UNITS / "stagerd.service")
    sock = _settings(UNITS / "stagerd.socket")
    sample = UNITS / "stagerd.toml"
    cfg = config_mod.load(sample)

    assert service["Type"] == ["notify"] and service["User"] == ["stagerd"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    assert "--config /etc/stagerd/stagerd.toml" in service["ExecStart"][0]
    assert sock["ListenStream"] == [str(cfg.socket_path)]
    assert sock["SocketGroup"] == [cfg.socket_group]
    assert service["StateDirectory"] == [cfg.state_dir.name]
    assert cfg.state_dir.parent == Path("/var/lib")
    assert service["RuntimeDirectory"] == [cfg.socket_path.parent.name]
    assert cfg.log_level == "info" and cfg.history_days == 30
    # Every store in the sample builds, and the values are what TOML says.
    stores = tomllib.loads(sample.read_text())["stores"]
    for name in stores:
        assert Store(cfg.store(name)).url == stores[name]["url"]
