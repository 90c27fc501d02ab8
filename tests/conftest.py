"""Shared fixtures: tiny, valid IDX datasets written by the tests themselves, and the real params shrunk."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import idx

ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def subprocess_env() -> dict[str, str]:
    """The environment for a command in a test repo: this venv's tools first, no DVC or MLflow settings leaking
    in from the caller (a test run inside `dvc exp run` or with a team MLFLOW_TRACKING_URI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def real_params() -> dict:
    """params.yaml of the repo, decoded (a fresh copy each call)."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_dataset(directory: Path, n_train: int = 200, n_test: int = 50, n_classes: int = 10,
                  shape: tuple[int, int] = (28, 28), seed: int = 0) -> dict:
    """Write a balanced random IDX dataset as four .gz files; returns a params `dataset` section for it."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % n_classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % n_classes).astype(np.uint8),
    }
    files = {}
    for role, array in arrays.items():
        idx.write(directory / FILE_NAMES[role], array)
        files[role] = {"name": FILE_NAMES[role], "gz_md5": None,
                       "sha256": hashlib.sha256(idx.encode(array)).hexdigest()}
    return {
        "name": "tiny",
        "mirrors": [{"location": str(directory), "original_gz": False}],
        "files": files,
        "train_count": n_train,
        "test_count": n_test,
        "image_shape": list(shape),
        "classes": [f"class{i}" for i in range(n_classes)],
    }


@pytest.fixture(autouse=True)
def forget_mlflow_tracking_uri():
    """mlflow.set_tracking_uri (called by stages run in-process) keeps a global and exports
    MLFLOW_TRACKING_URI; without this reset, one test's store would leak into the next."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def tiny_dataset(tmp_path) -> dict:
    return write_dataset(tmp_path / "mirror")


@pytest.fixture
def params_with(tiny_dataset):
    """Real params with the tiny dataset swapped in; `params_with(**sections)` overrides whole sections."""
    def build(**overrides) -> dict:
        params = real_params()
        params["dataset"] = copy.deepcopy(tiny_dataset)
        params.update(overrides)
        return params
    return build


def tiny_ensemble(classes=("a", "b", "c")):
    """A one-member ensemble of an untrained fast net: real code paths, no training."""
    import torch

    from stages import nets
    from stages.ensemble import Ensemble

    torch.manual_seed(0)
    model = nets.build("fast", len(classes), (28, 28)).eval()
    state = {"net": "fast", "classes": list(classes), "image_shape": [28, 28], "mean": torch.tensor(0.3),
             "std": torch.tensor(0.3), "member": "m0", "split": 0, "state_dict": model.state_dict()}
    return Ensemble([model], [state], "soft", np.ones(1), False, list(classes), (28, 28))


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 API (moto's server, as DVC's own tests use) on 127.0.0.1, for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a log line per S3 request
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": "team-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}  # moto's; in real use from the environment, never from git


def s3_client(endpoint: str):
    """A boto3 S3 client for the test server, with the team's credentials."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def create_bucket(endpoint: str, name: str) -> None:
    s3_client(endpoint).create_bucket(Bucket=name)


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])]


@contextlib.contextmanager
def s3_checking_keys(endpoint: str) -> Iterator[None]:
    """moto's IAM checks switched on for the block: keys it never issued are refused (403 InvalidAccessKeyId), as a
    real store refuses wrong credentials. Off again afterwards: the session's other tests use any key."""
    import urllib.request

    def post(count: str) -> None:
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", count.encode(),
                                         {"Content-Type": "text/plain"})  # not a form: moto reads the raw body
        urllib.request.urlopen(request, timeout=10).close()

    post("0")
    try:
        yield
    finally:
        post("inf")


def _postgres_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_rows(postgres_uri: str, query: str, *args) -> list[tuple]:
    """Rows straight from the `postgres` fixture's database, whether or not an MLflow server on it is up."""
    import psycopg

    with psycopg.connect(host=postgres_uri.split("host=")[1], dbname="mlflow", user="postgres") as connection:
        return connection.execute(query, args).fetchall()


@pytest.fixture(scope="session")
def postgres() -> str:
    """A throwaway PostgreSQL cluster listening only on a Unix socket (no TCP at all), with a database 'mlflow';
    yields its SQLAlchemy URI. As root, the server runs as the OS user postgres (it refuses root)."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    as_postgres = []
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, text=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
        f"-c listen_addresses='' -k {root}", "start")
    try:
        run(str(bindir / "createdb"), "-h", str(root), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@/mlflow?host={root}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
