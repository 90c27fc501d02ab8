"""Services a team uses, real and only on this machine, for the integration and e2e tiers: moto's S3 server on
127.0.0.1 and a throwaway PostgreSQL cluster on a Unix socket. Registered as a pytest plugin by tests/conftest.py;
under CI a missing server fails the run (tests.conftest.require)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require


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

    database = postgres_uri.split("@/")[1].split("?")[0]
    with psycopg.connect(host=postgres_uri.split("host=")[1], dbname=database, user="postgres") as connection:
        return connection.execute(query, args).fetchall()


def create_database(postgres_uri: str, name: str) -> str:
    """A new database `name` in the `postgres` fixture's cluster; its SQLAlchemy URI."""
    import psycopg

    with psycopg.connect(host=postgres_uri.split("host=")[1], dbname="mlflow", user="postgres",
                         autocommit=True) as connection:
        connection.execute(f'create database "{name}"')
    return postgres_uri.replace("/mlflow?", f"/{name}?")


@pytest.fixture(scope="session")
def postgres() -> str:
    """A throwaway PostgreSQL cluster listening only on a Unix socket (no TCP at all), with a database 'mlflow';
    yields its SQLAlchemy URI. As root, the server runs as the OS user postgres (it refuses root)."""
    bindir = _postgres_bindir()
    if bindir is None:
        require("PostgreSQL's server (initdb, pg_ctl)", "Debian: apt-get install postgresql (`make postgresql` "
                "does it, with sudo -n where you are not root)")
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
