"""URL inputs: the SSRF host policy, and downloads that retry, resume and respect the size cap."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from artifacts.errors import BlockedHostError, FetchError, SizeLimitError
from artifacts.fetch import FetchOptions, fetch_urls
from artifacts.hosts import host_refusal
from tuning_controller.cli import main

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "api.localhost",
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fd00:ec2::254",
        "100.64.0.1",
        "0.0.0.0",
        "metadata.google.internal",
        "224.0.0.1",
        "0177.0.0.1",
        "0x7f.1",
        "2130706433",
    ],
)
def test_private_loopback_and_metadata_hosts_are_refused(host: str) -> None:
    assert host_refusal(host) is not None


@pytest.mark.parametrize("host", ["huggingface.co", "8.8.8.8", "2606:4700::1111", "data.example.com"])
def test_public_hosts_are_allowed(host: str) -> None:
    assert host_refusal(host) is None


def test_loopback_is_allowed_only_with_the_dev_switch() -> None:
    assert host_refusal("127.0.0.1", allow_loopback=True) is None
    assert host_refusal("localhost", allow_loopback=True) is None
    assert host_refusal("169.254.169.254", allow_loopback=True) is not None


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at several paths, each with a way of misbehaving."""

    hits: dict[str, int]
    ranges: list[tuple[str, str | None]]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        count = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        self.ranges.append((self.path, self.headers.get("Range")))
        if self.path == "/flaky.jsonl" and count == 1:
            self.send_error(503)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0] or 0)
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/drops.jsonl" and count == 1:
            self.wfile.write(body[: len(body) // 2])  # connection dies half way
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def requests_seen() -> list[tuple[str, str | None]]:
    return []


@pytest.fixture
def data_server(requests_seen: list[tuple[str, str | None]]) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"hits": {}, "ranges": requests_seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


FAST = FetchOptions(allow_loopback=True, backoff_s=0.05)


def test_downloads_retry_5xx_and_resume_a_dropped_connection(
    data_server: str, requests_seen: list[tuple[str, str | None]], tmp_path: Path
) -> None:
    urls = [f"{data_server}/flaky.jsonl", f"{data_server}/drops.jsonl", f"{data_server}/dir/flaky.jsonl?x=1"]
    written = fetch_urls(urls, tmp_path / "data", FAST)
    assert [p.name for p in written] == ["flaky.jsonl", "drops.jsonl", "2-flaky.jsonl"]
    assert all(p.read_bytes() == PAYLOAD for p in written)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "2-flaky.jsonl",
        "drops.jsonl",
        "flaky.jsonl",
    ]
    assert ("/flaky.jsonl", None) in requests_seen and requests_seen.count(("/flaky.jsonl", None)) == 2
    assert ("/drops.jsonl", f"bytes={len(PAYLOAD) // 2}-") in requests_seen  # resumed, not restarted


def test_loopback_urls_are_refused_without_the_dev_switch(data_server: str, tmp_path: Path) -> None:
    with pytest.raises(BlockedHostError, match="loopback"):
        fetch_urls([f"{data_server}/a.jsonl"], tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing is fetched when any URL is refused


def test_a_redirect_to_the_metadata_service_is_refused(data_server: str, tmp_path: Path) -> None:
    with pytest.raises(BlockedHostError, match=r"169\.254\.169\.254"):
        fetch_urls([f"{data_server}/redirect"], tmp_path / "data", FAST)


def test_size_cap_stops_a_download_and_leaves_no_partial_file(data_server: str, tmp_path: Path) -> None:
    with pytest.raises(SizeLimitError):
        fetch_urls(
            [f"{data_server}/a.jsonl"], tmp_path / "data", FetchOptions(allow_loopback=True, max_bytes=1000)
        )
    assert list((tmp_path / "data").iterdir()) == []


def test_non_http_schemes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="http or https"):
        fetch_urls(["file:///etc/passwd"], tmp_path / "data")


def test_cli_fetch_data_downloads_urls(data_server: str, tmp_path: Path) -> None:
    argv = [
        "fetch-data",
        "--urls",
        f"{data_server}/train.jsonl",
        "--dest",
        str(tmp_path / "d"),
        "--dev-allow-loopback",
    ]
    assert main(argv) == 0
    assert (tmp_path / "d" / "train.jsonl").read_bytes() == PAYLOAD
