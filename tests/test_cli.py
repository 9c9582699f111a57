"""The stagerd command: status, recover, and serving with no config at all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import HERE, DaemonProcess, holder, wait_until

HOLDER = holder()


def test_status_without_daemon_is_one_line_and_exit_1(deployment):
    result = deployment.cli("status", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("stagerd: no stagerd daemon answers at")
    assert "stagerd serve" in result.stderr and "Traceback" not in result.stderr


def test_status_shows_pending_intents(deployment, daemon, spawn):
    holder = spawn(HOLDER)
    intent = holder.expect("HOLDING").split()[1]
    status = json.loads(deployment.cli("status", "--json").stdout)
    [pending] = status["pending"]
    assert pending["id"] == intent and pending["pid"] == holder.pid
    assert pending["table"] == "recording" and pending["key"] == {
        "recording_id": "held"
    }
    text = deployment.cli("status").stdout
    assert "1 pending" in text and intent in text


def test_recover_with_daemon_running_keeps_live_owners(deployment, daemon, spawn):
    holder = spawn(HOLDER)
    intent = holder.expect("HOLDING").split()[1]
    reply = json.loads(deployment.cli("recover", "--json").stdout)
    assert reply == {"via": "daemon", "decided": [], "pending": 1}
    assert deployment.files()
    holder.kill(signal.SIGKILL)
    holder.wait()
    wait_until(lambda: deployment.files() == [], 2.0, f"{intent} resolved")


def test_recover_with_daemon_stopped_opens_the_log(deployment, daemon, spawn):
    holder = spawn(HOLDER)
    intent = holder.expect("HOLDING").split()[1]
    daemon.kill()
    holder.kill(signal.SIGKILL)
    holder.wait()
    assert deployment.files()

    result = deployment.cli("recover", "--json")
    assert json.loads(result.stdout) == {
        "via": "log", "decided": [{"id": intent, "state": "aborted"}], "pending": 0,
    }
    assert deployment.files() == []
    # A daemon started afterwards finds nothing left to do.
    second = DaemonProcess(deployment).start()
    try:
        assert deployment.status()["pending"] == []
        assert deployment.status()["counts"] == {"aborted": 1}
    finally:
        second.stop()


def test_recover_refuses_while_another_process_holds_the_log(deployment, daemon):
    os.unlink(deployment.socket)  # the daemon runs but cannot be reached
    result = deployment.cli("recover", check=False)
    assert result.returncode == 1 and "holds" in result.stderr


def test_every_command_has_help_and_docs():
    from stagerd.cli import main

    readme = (HERE.parent / "README.md").read_text()
    for command in main.commands:
        assert f"stagerd {command}" in readme, f"README lacks stagerd {command}"
        out = subprocess.run(
            [sys.executable, "-m", "stagerd", command, "--help"],
            capture_output=True, text=True, check=True,
        ).stdout
        assert "Example" in out and "stagerd" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_serve_with_no_config_at_all(tmp_path):
    """The embedded default, as root: /run/stagerd and /var/lib/stagerd.

    A private mount namespace puts empty tmpfs over /run, /var/lib and
    /etc/stagerd, so the test sees a fresh machine and touches nothing real.
    """
    assert shutil.which("unshare"), "util-linux unshare is required"
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from lab import declare
        lab = declare()
        with lab.Recording.staged_insert1 as staged:
            staged.rec["recording_id"] = "zero-config"
            with staged.open("raw", ".bin") as f:
                f.write(b"hello")
        print(lab.Recording.fetch1()["raw"].path)
    """))
    hide_etc = "[ -d /etc/stagerd ] && mount -t tmpfs t /etc/stagerd; "
    py = sys.executable
    shell = (
        "set -e; mount -t tmpfs t /run; mount -t tmpfs t /var/lib; " + hide_etc +
        f"{py} -m stagerd serve 2>{tmp_path}/daemon.log & pid=$!; "
        "for i in $(seq 100); do [ -S /run/stagerd/stagerd.sock ] && break; "
        "sleep 0.1; done; "
        f"{py} {script}; {py} -m stagerd status; "
        "kill -TERM $pid; wait $pid; ls -R /var/lib/stagerd"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("STAGERD_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
        capture_output=True, text=True, env=env, timeout=120,
    )
    log = (tmp_path / "daemon.log").read_text()
    assert result.returncode == 0, result.stderr + log
    assert "_schema/imaging/recording/recording_id=zero-config/raw_" in result.stdout
    assert "socket /run/stagerd/stagerd.sock" in result.stdout
    assert "database sqlite:////var/lib/stagerd/lab.db" in result.stdout
    for name in ("intents.db", "lab.db", "objects"):
        assert name in result.stdout
