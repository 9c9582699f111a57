"""S3 out of reach during an abort: the daemon keeps the intent and finishes
the deletion once the endpoint answers again."""

from __future__ import annotations

import signal

import pytest

import stagerd_client
from conftest import DaemonProcess, Deployment, wait_until
from lab import declare
from s3server import s3_options, start_moto, stop_moto


@pytest.fixture
def own_moto():
    proc, endpoint = start_moto()
    yield proc, endpoint
    proc.send_signal(signal.SIGCONT)
    stop_moto(proc)


def test_endpoint_unreachable_during_abort(tmp_path, own_moto):
    moto, endpoint = own_moto
    deployment = Deployment(tmp_path, s3_endpoint=endpoint)
    # Short timeouts, so a stalled endpoint fails an attempt in seconds.
    deployment.store_options = s3_options(
        endpoint, connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}
    )
    deployment.write_config()
    daemon = DaemonProcess(deployment).start()
    stagerd_client.config.load(deployment.config)
    try:
        lab = declare()
        with pytest.raises(RuntimeError, match="rig failed"):
            with lab.Recording.staged_insert1 as staged:
                staged.rec["recording_id"] = "s3-down"
                with staged.open("raw", ".bin") as f:
                    f.write(b"z" * 5000)
                assert deployment.files()
                moto.send_signal(signal.SIGSTOP)  # the endpoint stops answering
                raise RuntimeError("rig failed")

        # The decision is made (aborted) but the objects could not go yet.
        [pending] = deployment.status()["pending"]
        assert pending["id"] == staged.intent
        assert "StoreError" in pending["last_error"]
        assert deployment.decision("imaging", staged.intent) == "aborted"

        moto.send_signal(signal.SIGCONT)
        wait_until(lambda: deployment.status()["pending"] == [], 60, "retried")
        assert deployment.files() == []
        assert daemon.logged(f"deleted intent={staged.intent}")
    finally:
        moto.send_signal(signal.SIGCONT)
        stagerd_client.config.load()
        assert daemon.stop() == 0
