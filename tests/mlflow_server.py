"""A local `mlflow server` for the tests (and docs/screenshots.py) that need the tracking REST API and the UI rather
than a store file. A team runs its own: `make mlflow-server`."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from fmnist.tracking.store import TrackingError

ROOT = Path(__file__).resolve().parents[1]

# MLflow 3's server starts a job runner (several huey worker processes, each importing mlflow: about 35 s of CPU
# per start on 2 cores) for UI features that neither the tests nor the pipeline use.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextlib.contextmanager
def local_server(store_uri: str, artifacts_destination: str | None = None, env: dict[str, str] | None = None,
                 startup_s: float = 90, port: int | None = None, app: str | None = None) -> Iterator[str]:
    """`mlflow server` for `store_uri` on 127.0.0.1 (never all interfaces) and `port` (default: a free one), for
    as long as the block runs; yields its base URL once /health answers, and stops it and its workers afterwards.
    With `artifacts_destination` (s3://bucket/prefix) the server proxies artifacts there, so clients need no
    credentials for it: only the server's `env` holds them (AWS_*, MLFLOW_S3_ENDPOINT_URL). `app`: MLflow's
    --app-name ('basic-auth', configured by the env's MLFLOW_AUTH_CONFIG_PATH: write_auth_config)."""
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", store_uri, "--workers", "1",
         *(["--artifacts-destination", artifacts_destination] if artifacts_destination else []),
         *(["--app-name", app] if app else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, **NO_JOB_RUNNER, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    reason = (process.stderr.read().decode()[-2000:] if process.poll() is not None
                              else f"no answer in {startup_s:g} s")
                    raise TrackingError(f"mlflow server for {store_uri} did not start: {reason}") from None
                time.sleep(0.5)
        yield base
    finally:
        if process.poll() is None:  # it may have died on its own: its stderr is then in the error above
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def write_auth_config(path: Path, database_uri: str) -> Path:
    """The basic-auth app's configuration, as `make mlflow-server` writes it: permissions in `database_uri`, every
    account may read (READ by default), the admin's password from MLFLOW_AUTH_ADMIN_PASSWORD at the first start."""
    path.write_text(AUTH_CONFIG.replace("{database_uri}", database_uri))
    return path


AUTH_CONFIG = (ROOT / "deploy" / "basic_auth.ini").read_text()
