"""A real S3 endpoint for tests: a ``moto`` server process on localhost.

``start_moto()`` runs ``python -m moto.server`` on a free port and returns
once it answers HTTP; ``stop_moto()`` ends it. Its state lives in memory,
so a restarted server on the same port starts with no buckets.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import s3fs

__all__ = ["start_moto", "stop_moto", "free_port", "make_bucket", "s3_options"]

KEY = SECRET = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    # http.client ignores *_PROXY variables, unlike urllib.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def start_moto(
    port: int | None = None, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto S3 server; the process and its endpoint URL.

    ``port`` reuses a known port, to bring "the same" endpoint back after
    ``stop_moto``.
    """
    port = port or free_port()
    # Dummy credentials so nothing in moto looks for real ones.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": REGION}
    # A file, not a pipe: moto logs every request, and nobody reads a pipe.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    with log:
        while not _answers(port):
            if proc.poll() is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise RuntimeError(f"moto server exited with {proc.returncode}: "
                                   f"{out}")
            if time.monotonic() > deadline:
                stop_moto(proc)
                raise RuntimeError(f"moto server on port {port} did not answer "
                                   f"within {timeout} s")
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def stop_moto(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait()


def s3_options(endpoint: str, **config_kwargs: Any) -> dict[str, Any]:
    """The ``[stores.NAME.options]`` of a store on the moto server.

    Explicit credentials, region and endpoint keep botocore away from the
    AWS config files, the instance metadata service and real AWS; empty
    ``proxies`` keeps it from routing localhost through a *_PROXY variable.
    ``config_kwargs`` (botocore ``Config`` fields, such as timeouts and
    retries) are added to those.
    """
    return {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
        "config_kwargs": {"proxies": {}, **config_kwargs},
    }


def make_bucket(endpoint: str, name: str) -> None:
    fs = s3fs.S3FileSystem(**s3_options(endpoint))
    # Not fs.mkdir: it sends region_name as the LocationConstraint, which
    # S3 (and moto) reject for us-east-1, the region that must have none.
    fs.call_s3("create_bucket", Bucket=name)
    fs.invalidate_cache(name)
