"""`fmnist share` against a real S3 API (moto's server) on a tiny DVC project the test writes: what a pull takes
from the remote is checked before anything is checked out (tampered objects, forged run-cache entries, missing
objects), and it takes only the run-cache entries of the stages its dvc.lock names."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import clone, commit_all, init_repo, subprocess_env
from tests.services import S3_CREDENTIALS, create_bucket, s3_client

# One xdist worker runs this module, so its one pushed project is made once.
pytestmark = pytest.mark.xdist_group("share")
BUCKET = "share"
MAKE = ("import json, yaml; n = yaml.safe_load(open('params.yaml'))['n']; "
        "open('out.txt', 'w').write(open('src.txt').read() * n); json.dump({'n': n}, open('m.json', 'w'))")


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=repo, env={**subprocess_env(), **S3_CREDENTIALS}, capture_output=True,
                          text=True, timeout=300, check=False)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    create_bucket(s3_endpoint, BUCKET)
    return s3_endpoint


@pytest.fixture(scope="module")
def origin(bucket, tmp_path_factory) -> Path:
    """A project whose one stage ran, pushed with `fmnist share push` to the prefix `origin` (once per module)."""
    repo = init_repo(tmp_path_factory.mktemp("share") / "origin")
    (repo / "src.txt").write_text("shared\n")
    (repo / "params.yaml").write_text("n: 3\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {
        "cmd": f'python -c "{MAKE}"', "deps": ["src.txt"], "params": ["n"], "outs": ["out.txt"],
        "metrics": [{"m.json": {"cache": False}}]}}}))
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.autostage", "true")
    sh(repo, "dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/origin")
    sh(repo, "dvc", "remote", "modify", "team", "endpointurl", bucket)
    sh(repo, "dvc", "remote", "modify", "team", "verify", "true")
    sh(repo, "dvc", "repro")
    commit_all(repo, "results")
    sh(repo, "fmnist", "share", "push")
    return repo


@pytest.fixture
def pushed(origin, bucket, request) -> tuple[Path, str]:
    """The origin project and a prefix of this test's own holding a copy of what it pushed, to tamper with."""
    s3 = s3_client(bucket)
    prefix = "t" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    for key in (o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="origin/")["Contents"]):
        s3.copy_object(Bucket=BUCKET, Key=prefix + key.removeprefix("origin"),
                       CopySource={"Bucket": BUCKET, "Key": key})
    return origin, prefix


def clone_of(origin: Path, prefix: str, target: Path) -> Path:
    """A teammate's clone, its remote pointed at `prefix` (in the git-ignored .dvc/config.local)."""
    teammate = clone(origin, target)
    # what `dvc remote modify --local team url ...` writes, without a DVC process (seconds each, a dozen here)
    (teammate / ".dvc" / "config.local").write_text(f"['remote \"team\"']\n    url = s3://{BUCKET}/{prefix}\n")
    return teammate


def object_key(prefix: str, content: bytes) -> str:
    md5 = hashlib.md5(content).hexdigest()
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


def run_cache_keys(repo: Path) -> set[str]:
    return {path.name for path in (repo / ".dvc/cache/runs").glob("*/*")}


def test_a_pull_restores_outputs_and_the_stage_from_the_run_cache(pushed, tmp_path):
    repo, prefix = pushed
    teammate = clone_of(repo, prefix, tmp_path / "teammate")
    sh(teammate, "fmnist", "share", "pull")
    assert (teammate / "out.txt").read_text() == "shared\n" * 3
    assert "up to date" in sh(teammate, "dvc", "status").stdout
    assert run_cache_keys(teammate) == run_cache_keys(repo)


def test_a_tampered_object_fails_the_pull_naming_the_output_and_checks_out_nothing(pushed, bucket, tmp_path):
    repo, prefix = pushed
    s3 = s3_client(bucket)
    key = object_key(prefix, (repo / "out.txt").read_bytes())
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"tampered\n" * 3)  # same size class, other bytes
    teammate = clone_of(repo, prefix, tmp_path / "teammate")
    pulled = sh(teammate, "fmnist", "share", "pull", check=False)
    assert pulled.returncode == 1
    assert "out.txt" in pulled.stderr and "do not match its md5 (tampered with or corrupted)" in pulled.stderr
    assert "nothing in the workspace was changed" in pulled.stderr, pulled.stderr
    assert not (teammate / "out.txt").exists() and not run_cache_keys(teammate)
    assert sh(teammate, "dvc", "pull", check=False).returncode != 0  # DVC's own pull refuses it too
    assert not (teammate / "out.txt").exists()


def test_a_remote_without_verify_is_refused_before_any_transfer(pushed, tmp_path):
    repo, prefix = pushed
    teammate = clone_of(repo, prefix, tmp_path / "teammate")
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "verify", "false")
    pulled = sh(teammate, "fmnist", "share", "pull", check=False)
    assert pulled.returncode == 1
    assert "does not verify what it downloads; run `dvc remote modify team verify true`" in pulled.stderr
    assert not (teammate / "out.txt").exists()


@pytest.mark.parametrize("forged", ["../../../../etc/passwd", "0" * 31])
def test_a_run_cache_entry_naming_anything_but_an_md5_is_refused(pushed, bucket, tmp_path, forged):
    repo, prefix = pushed
    s3 = s3_client(bucket)
    (entry_key,) = [k for k in (o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/runs/")
                                ["Contents"])]
    entry = yaml.safe_load(s3.get_object(Bucket=BUCKET, Key=entry_key)["Body"].read())
    (out,) = [out for out in entry["outs"] if out["path"] == "out.txt"]
    out["md5"] = forged
    s3.put_object(Bucket=BUCKET, Key=entry_key, Body=yaml.safe_dump(entry).encode())
    teammate = clone_of(repo, prefix, tmp_path / "teammate")
    pulled = sh(teammate, "fmnist", "share", "pull", check=False)
    assert pulled.returncode == 1
    assert f"{forged!r} is not an md5" in pulled.stderr and "output 'out.txt'" in pulled.stderr, pulled.stderr
    assert not (teammate / "out.txt").exists() and not run_cache_keys(teammate)


def test_a_missing_run_cache_output_stops_the_pull_before_the_checkout(pushed, bucket, tmp_path):
    repo, prefix = pushed
    s3_client(bucket).delete_object(Bucket=BUCKET, Key=object_key(prefix, (repo / "m.json").read_bytes()))
    teammate = clone_of(repo, prefix, tmp_path / "teammate")
    pulled = sh(teammate, "fmnist", "share", "pull", check=False)
    assert pulled.returncode == 1, pulled.stderr
    assert "an output a run-cache entry records" in pulled.stderr and "missing there" in pulled.stderr
    assert not (teammate / "out.txt").exists() and not run_cache_keys(teammate)


def test_only_the_run_cache_of_the_stages_in_this_dvc_lock_is_taken(pushed, bucket, tmp_path):
    repo, prefix = pushed
    s3 = s3_client(bucket)
    # Another pipeline's entry on the remote (as `dvc push --run-cache` of any other run leaves it): its stage key
    # is not one of this dvc.lock's, so a pull must not take it
    (entry_key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/runs/")["Contents"]]
    other = hashlib.sha256(b"another pipeline's stage").hexdigest()
    s3.copy_object(Bucket=BUCKET, Key=f"{prefix}/runs/{other[:2]}/{other}/{entry_key.rsplit('/', 1)[1]}",
                   CopySource={"Bucket": BUCKET, "Key": entry_key})
    assert len(s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/runs/")["Contents"]) == 2
    teammate = clone_of(repo, prefix, tmp_path / "teammate")
    sh(teammate, "fmnist", "share", "pull")
    assert run_cache_keys(teammate) == run_cache_keys(repo)  # the one entry of this dvc.lock's stage
    assert other not in run_cache_keys(teammate)
    assert (teammate / "out.txt").read_text() == "shared\n" * 3


def test_an_md5_in_a_failure_message_is_followed_by_its_output_path(origin, monkeypatch):
    from fmnist.cli.share import Remote

    monkeypatch.chdir(origin)
    md5 = hashlib.md5((origin / "out.txt").read_bytes()).hexdigest()
    unknown = "f" * 32
    named = Remote(None).name_objects(f"missing: {md5}, {unknown}.dir")
    assert named == f"missing: {md5} (out.txt), {unknown}.dir"
