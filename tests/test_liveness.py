"""Who counts as alive: reboots, reused pids and forked children.

An owner is its pid, the pid's start time and the boot id. A "reboot" is
a daemon started with another boot id (``STAGERD_BOOT_ID``); a reused pid
is a new process made to get the dead owner's pid through
``/proc/sys/kernel/ns_last_pid``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from conftest import HERE, DaemonProcess, holder, wait_until
from stagerd.daemon.owners import BOOT_ID_ENV, start_time

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def test_a_reboot_resolves_every_intent_of_the_earlier_boot(deployment, spawn):
    before = DaemonProcess(deployment, env={BOOT_ID_ENV: "boot-before"}).start()
    client = spawn(holder())
    intent = client.expect("HOLDING").split()[1]
    before.kill()

    # The holder still runs, but after a reboot no process of the old boot
    # can: its intent is resolved at once.
    after = DaemonProcess(deployment, env={BOOT_ID_ENV: "boot-after"}).start()
    try:
        wait_until(lambda: deployment.files() == [], 20, "old boot's objects gone")
        wait_until(lambda: deployment.status()["pending"] == [], 20, "resolved")
        assert deployment.decision("imaging", intent) == "aborted"
        assert after.logged(f"fenced intent={intent}")
    finally:
        assert after.stop() == 0


def take_pid(pid: int) -> subprocess.Popen:
    """Start a process that gets ``pid``, which must be free."""
    for _ in range(50):
        NS_LAST_PID.write_text(str(pid - 1))
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == pid:
            return proc
        proc.kill()  # another process took the pid first: try again
        proc.wait()
    raise AssertionError(f"could not start a process with pid {pid}")


def test_a_reused_pid_is_not_the_dead_owner(deployment, spawn):
    daemon = DaemonProcess(deployment).start()
    client = spawn(holder())
    intent = client.expect("HOLDING").split()[1]
    [pending] = deployment.status()["pending"]
    daemon.kill()
    client.kill()
    client.wait()

    impostor = take_pid(client.pid)
    try:
        assert pending["pid"] == impostor.pid
        assert start_time(impostor.pid) is not None
        restarted = DaemonProcess(deployment).start()
        try:
            wait_until(lambda: deployment.files() == [], 20, "dead owner resolved")
            assert deployment.status()["pending"] == []
            assert deployment.decision("imaging", intent) == "aborted"
        finally:
            assert restarted.stop() == 0
    finally:
        impostor.kill()
        impostor.wait()


FORKER = f"""
import os, sys, time
sys.path.insert(0, {str(HERE)!r})
from lab import declare

lab = declare()
staged = lab.Recording.staged_insert1.__enter__()
staged.rec["recording_id"] = "forked"
with staged.open("raw", ".bin") as f:
    f.write(b"partial")
child = os.fork()
if child == 0:
    time.sleep(600)  # holds the parent's daemon socket, writes nothing
    os._exit(0)
print("FORKED", staged.intent, child, flush=True)
time.sleep(600)
"""


def test_a_forked_child_does_not_keep_a_dead_parents_intent(
    deployment, daemon, spawn
):
    parent = spawn(FORKER)
    _, intent, child = parent.expect("FORKED").split()
    try:
        parent.kill(signal.SIGKILL)
        parent.proc.wait(10)  # the child still holds its stdout: no communicate
        # The child keeps the connection open, so no close is seen; the
        # periodic sweep still finds the owner (the parent) dead.
        assert start_time(int(child)) is not None
        wait_until(lambda: deployment.files() == [], 20, "parent's objects gone")
        wait_until(lambda: deployment.status()["pending"] == [], 20, "resolved")
        assert deployment.decision("imaging", intent) == "aborted"
    finally:
        os.kill(int(child), signal.SIGKILL)
