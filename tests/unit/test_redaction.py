"""Credentials stay out of logs, errors and committed params: redaction, the params check, ~/.netrc."""
import base64

import pytest

from fmnist.data.download import netrc_headers
from fmnist.params import ParamsError, parse_params
from fmnist.redaction import has_credentials, redact
from tests.conftest import real_params


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
    ("store https://user:tok%40en@mlflow.example.com/ failed", "store https://***@mlflow.example.com/ failed"),
    ("http://token@host:5000", "http://***@host:5000"),
    ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),  # an '@' in a path is not user info
    ("https://host/path@v2 and s3://bucket/key", "https://host/path@v2 and s3://bucket/key"),
])
def test_user_info_is_redacted_and_nothing_else(text, shown):
    assert redact(text) == shown


def test_credentials_are_told_apart_from_an_at_in_a_path():
    assert has_credentials("https://u:p@host/x") and has_credentials("https://token@host/x")
    assert not has_credentials("https://host/a@b") and not has_credentials("/srv/data@2024")


def test_a_mirror_with_credentials_is_refused_without_echoing_them():
    params = real_params()
    params["dataset"]["mirrors"][0]["location"] = "https://me:hunter2@mirror.example.com/fashion"
    with pytest.raises(ParamsError) as refused:
        parse_params(params)
    message = str(refused.value)
    assert "dataset.mirrors.0.location" in message and "~/.netrc" in message and "NETRC" in message
    assert "hunter2" not in message and "https://***@mirror.example.com/fashion" in message


def test_netrc_credentials_go_to_their_host_only(tmp_path, monkeypatch):
    (tmp_path / "netrc").write_text("machine mirror.example.com login me password hunter2\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    expected = "Basic " + base64.b64encode(b"me:hunter2").decode()
    assert netrc_headers("https://mirror.example.com/fashion/train-images-idx3-ubyte.gz") == {
        "authorization": expected}
    assert netrc_headers("https://other.example.com/train-images-idx3-ubyte.gz") == {}
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    assert netrc_headers("https://mirror.example.com/x") == {}
