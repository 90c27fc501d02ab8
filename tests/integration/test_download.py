"""The download stage against local directories and a real HTTP server on 127.0.0.1."""
import gzip
import http.server
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from fmnist.data.checks import decoded_bounds
from fmnist.data.download import DownloadError, download, fetch_http
from fmnist.params import parse_params


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root` with HTTP Range support; `faults` makes chosen paths misbehave."""
    root: Path
    faults: dict[str, str]
    requests: list[tuple[str, str | None]]
    sent: dict[str, int]

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        self.requests.append((name, self.headers.get("Range")))
        fault = self.faults.get(name)
        if fault == "404" or not (self.root / name).is_file():
            return self.send_error(404)
        if fault == "html":
            body = b"<!DOCTYPE html><html><body>Service moved</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        if fault == "hang":
            time.sleep(3)
            return None
        if fault == "endless":  # no Content-Length, bytes for ever (until the client hangs up)
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
                    self.sent[name] = self.sent.get(name, 0) + 65536
            except OSError:
                return None
        if fault == "trickle":  # a byte now and then: never a read timeout, never done
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                return None
        if fault == "content-encoding":  # the file gzipped again for the transfer
            body = gzip.compress((self.root / name).read_bytes())
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        data = (self.root / name).read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and fault != "no-range" else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if fault in ("drop-once", "no-range") and not start:
            self.faults[name] = "dropped"
            self.wfile.write(data[: len(data) // 2])  # then the connection closes mid-file
            self.wfile.flush()
            self.close_connection = True
            return None
        self.wfile.write(data[start:])


@pytest.fixture
def server(tiny_dataset):
    root = Path(tiny_dataset["mirrors"][0]["location"])
    handler = type("H", (Handler,), {"root": root, "faults": {}, "requests": [], "sent": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def params_for(params_with, mirrors, timeout_s=5.0, retries=3, deadline_s=60.0):
    params = params_with(download={"timeout_s": timeout_s, "retries": retries, "backoff_s": 0.0,
                                   "deadline_s": deadline_s})
    params["dataset"]["mirrors"] = mirrors
    return parse_params(params)


def bounds(dataset):
    return decoded_bounds(dataset.train_count, dataset.test_count, dataset.image_shape)


def download_into(tmp_path, params):
    """The download stage's work: tmp_path/raw from the params' mirrors, partial files in tmp_path/partial."""
    return download(params.dataset.files, params.dataset.mirrors, bounds(params.dataset), params.download,
                    tmp_path / "raw", tmp_path / "partial")


def test_local_directory_mirror(tmp_path, params_with, tiny_dataset):
    params = params_for(params_with, tiny_dataset["mirrors"])
    manifest, failures = download_into(tmp_path, params)
    assert failures == []
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(
        [spec["name"] for spec in tiny_dataset["files"].values()] + ["manifest.json"])
    assert manifest["train_images"]["sha256_checked"] is True
    assert not list(tmp_path.glob(".raw.*"))  # no temp directory left behind


@pytest.mark.fault
def test_http_mirror_and_fallback_from_a_missing_directory(tmp_path, params_with, server):
    url, handler = server
    params = params_for(params_with, [{"location": str(tmp_path / "nowhere"), "original_gz": False},
                                      {"location": url + "/", "original_gz": True}])
    manifest, failures = download_into(tmp_path, params)
    assert manifest["test_labels"]["source"] == f"{url}/t10k-labels-idx1-ubyte.gz"
    assert len(failures) == 4 and "No such file or directory" in failures[0]
    assert (tmp_path / "raw" / "train-images-idx3-ubyte.gz").stat().st_size > 0


@pytest.mark.fault
def test_dropped_connection_resumes_with_a_range_request(tmp_path, params_with, server):
    url, handler = server
    handler.faults["train-images-idx3-ubyte.gz"] = "drop-once"
    params = params_for(params_with, [{"location": url, "original_gz": False}])
    manifest, _ = download_into(tmp_path, params)
    ranges = [rng for name, rng in handler.requests if name == "train-images-idx3-ubyte.gz"]
    assert ranges[0] is None and re.fullmatch(r"bytes=\d+-", ranges[1])
    assert manifest["train_images"]["sha256_checked"]  # the resumed file decodes to the right bytes
    assert list((tmp_path / "partial").iterdir()) == []


@pytest.mark.fault
def test_server_without_range_support_restarts_from_zero(tmp_path, params_with, server):
    url, handler = server
    handler.faults["train-images-idx3-ubyte.gz"] = "no-range"
    params = params_for(params_with, [{"location": url, "original_gz": False}])
    manifest, _ = download_into(tmp_path, params)
    assert manifest["train_images"]["sha256_checked"]


@pytest.mark.fault
def test_html_and_404_fall_through_to_the_next_mirror(tmp_path, params_with, server, tiny_dataset):
    url, handler = server
    handler.faults.update({"train-images-idx3-ubyte.gz": "html", "t10k-images-idx3-ubyte.gz": "404"})
    params = params_for(params_with, [{"location": url, "original_gz": False}, tiny_dataset["mirrors"][0]])
    manifest, failures = download_into(tmp_path, params)
    assert manifest["train_images"]["source"].startswith(tiny_dataset["mirrors"][0]["location"])
    assert any("not a gzip file" in f and "HTML" in f for f in failures)
    assert any("HTTP 404" in f for f in failures)


@pytest.mark.fault
def test_no_working_mirror_is_one_clear_error_and_leaves_no_output(tmp_path, params_with, server):
    url, handler = server
    handler.faults["train-labels-idx1-ubyte.gz"] = "404"
    params = params_for(params_with, [{"location": str(tmp_path / "nowhere"), "original_gz": False},
                                      {"location": url, "original_gz": True}])
    with pytest.raises(DownloadError) as caught:
        download_into(tmp_path, params)
    message = str(caught.value)
    assert "no mirror could provide train-labels-idx1-ubyte.gz" in message
    assert f"{tmp_path / 'nowhere'}: No such file or directory" in message
    assert f"{url}: HTTP 404" in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.mirrors" in message
    assert not (tmp_path / "raw").exists()
    assert not list(tmp_path.glob(".raw.*"))


@pytest.mark.fault
def test_hanging_server_times_out_and_retries(tmp_path, params_with, server):
    url, handler = server
    handler.faults["t10k-labels-idx1-ubyte.gz"] = "hang"
    cfg = params_for(params_with, [{"location": url, "original_gz": False}], timeout_s=0.3, retries=2).download
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"ReadTimeout.*gave up after 2 attempts"):
        fetch_http(f"{url}/t10k-labels-idx1-ubyte.gz", tmp_path / "out", tmp_path / "partial", cfg, 1 << 20)
    assert time.monotonic() - started < 2.5
    assert [name for name, _ in handler.requests].count("t10k-labels-idx1-ubyte.gz") == 2


@pytest.mark.fault
def test_wrong_checksum_from_the_only_mirror_fails(tmp_path, params_with, server):
    url, _ = server
    params_dict = params_with(download={"timeout_s": 5.0, "retries": 1, "backoff_s": 0.0, "deadline_s": 60.0})
    params_dict["dataset"]["mirrors"] = [{"location": url, "original_gz": False}]
    params_dict["dataset"]["files"]["test_labels"]["sha256"] = "f" * 64
    params = parse_params(params_dict)
    with pytest.raises(DownloadError, match=r"decoded SHA-256 mismatch: expected f{64}"):
        download_into(tmp_path, params)


@pytest.mark.fault
def test_an_endless_response_stops_at_the_files_byte_bound_and_keeps_nothing(tmp_path, params_with, server):
    url, handler = server
    name = "t10k-labels-idx1-ubyte.gz"
    handler.faults[name] = "endless"
    params = params_for(params_with, [{"location": url, "original_gz": False}], retries=1)
    with pytest.raises(DownloadError, match=r"more than the \d+ bytes this file can take; stopped there"):
        download_into(tmp_path, params)
    # the tiny dataset's test labels may decode to at most 2 x (8 + count) + 64 KiB: a few hundred KiB
    assert handler.sent[name] < 4 << 20
    assert not list((tmp_path / "partial").glob("*")) and not (tmp_path / "raw").exists()


@pytest.mark.fault
def test_a_trickling_mirror_is_left_at_the_deadline(tmp_path, params_with, server):
    url, handler = server
    handler.faults["t10k-labels-idx1-ubyte.gz"] = "trickle"
    params = params_for(params_with, [{"location": url, "original_gz": False}], retries=1, deadline_s=1.0)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"not complete after download.deadline_s=1 s"):
        download_into(tmp_path, params)
    assert time.monotonic() - started < 10


@pytest.mark.fault
def test_a_transfer_encoding_is_refused_not_decoded(tmp_path, params_with, server):
    url, handler = server
    handler.faults["t10k-labels-idx1-ubyte.gz"] = "content-encoding"
    params = params_for(params_with, [{"location": url, "original_gz": False}], retries=1)
    with pytest.raises(DownloadError, match=r"Content-Encoding: gzip; expected the file's own bytes"):
        download_into(tmp_path, params)
    assert ("t10k-labels-idx1-ubyte.gz", None) in handler.requests


@pytest.mark.fault
def test_a_gzip_bomb_decodes_no_further_than_the_file_may_hold(tmp_path, params_with, tiny_dataset):
    import tracemalloc

    from fmnist.data import idx

    # the test images' own header and pixels, then 48 MB of zeros: within what the file may take on the wire
    mirror = tmp_path / "bomb"
    shutil.copytree(tiny_dataset["mirrors"][0]["location"], mirror)
    name = tiny_dataset["files"]["test_images"]["name"]
    honest = idx.decode(mirror / name)
    with gzip.open(mirror / name, "wb", compresslevel=9) as bomb:
        bomb.write(honest)
        for _ in range(48):
            bomb.write(bytes(1 << 20))
    assert (mirror / name).stat().st_size * 100 < 48 << 20
    params = params_for(params_with, [{"location": str(mirror), "original_gz": False}])
    tracemalloc.start()
    with pytest.raises(DownloadError, match=r"has trailing bytes: header claims dims \[\d+, 28, 28\]"):
        download_into(tmp_path, params)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20  # about the file's own size, not the 48 MB it would decode to
    assert not (tmp_path / "raw").exists()
