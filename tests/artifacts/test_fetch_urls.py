"""URL inputs: the SSRF host policy, and downloads that retry, resume and respect the size cap."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from artifacts.errors import BlockedHostError, FetchError, SizeLimitError
from artifacts.fetch import FetchOptions, check_url, fetch_urls
from artifacts.hosts import address_refusal, host_refusal, parse_network
from contract.pod import urls_sha256, urls_text
from tuning_controller.cli import main
from tuning_controller.field_checks import url_problems

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "api.localhost",
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
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


def test_loopback_is_allowed_only_when_its_network_is() -> None:
    assert host_refusal("127.0.0.1", allowed_networks=("127.0.0.0/8",)) is None
    assert host_refusal("localhost", allowed_networks=("127.0.0.0/8",)) is None
    assert host_refusal("169.254.169.254", allowed_networks=("127.0.0.0/8",)) is not None


@pytest.mark.parametrize(
    ("host", "networks"),
    [
        ("10.250.0.1", ("10.250.0.1/32",)),
        ("10.250.0.1", ("10.250.0.1",)),  # a single address
        ("10.250.0.7", ("127.0.0.0/8", "10.250.0.0/24")),
        ("10.250.0.7", ("10.250.0.9/24",)),  # host bits are ignored
        ("::ffff:10.250.0.1", ("10.250.0.0/24",)),
        ("[fd00::5]", ("fd00::/8",)),
        ("localhost", ("127.0.0.1/32",)),
        ("api.localhost", ("127.0.0.0/8",)),
        ("169.254.169.254", ("169.254.169.254/32",)),  # link-local only when listed itself
    ],
)
def test_hosts_inside_an_allowed_network_pass(host: str, networks: tuple[str, ...]) -> None:
    assert host_refusal(host) is not None
    assert host_refusal(host, allowed_networks=networks) is None


@pytest.mark.parametrize(
    ("host", "networks"),
    [
        ("10.250.0.2", ("10.250.0.1/32",)),
        ("10.250.1.1", ("10.250.0.0/24",)),
        ("127.0.0.1", ("10.250.0.0/24",)),
        ("localhost", ("10.0.0.0/8",)),
        ("::1", ("127.0.0.0/8",)),
        ("169.254.169.254", ("127.0.0.0/8",)),
        ("169.254.169.254", ("0.0.0.0/0",)),  # a wide network does not open link-local
        ("fe80::1", ("::/0",)),
        ("metadata.google.internal", ("0.0.0.0/0",)),  # metadata names stay refused always
        ("0177.0.0.1", ("127.0.0.0/8",)),  # non-canonical literals too
        ("100.64.0.1", ("10.0.0.0/8",)),
    ],
)
def test_hosts_outside_the_allowed_networks_are_refused_as_before(
    host: str, networks: tuple[str, ...]
) -> None:
    refusal = host_refusal(host)
    assert refusal is not None
    assert host_refusal(host, allowed_networks=networks) == refusal


@pytest.mark.parametrize(
    ("text", "network"),
    [("10.250.0.1", "10.250.0.1/32"), (" 10.1.2.3/8 ", "10.0.0.0/8"), ("::1", "::1/128")],
)
def test_networks_are_parsed_to_canonical_cidrs(text: str, network: str) -> None:
    assert parse_network(text) == network


@pytest.mark.parametrize("text", ["", "localhost", "10.250.0.0/33", "10.250.0", "http://10.250.0.1/"])
def test_bad_networks_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IP network: write a CIDR"):
        parse_network(text)


def test_every_resolved_address_is_checked_against_the_allowed_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The literal host and each address it resolves to must be public or inside an allowed network."""
    answers = {"data.internal": ["10.250.0.1"], "mixed.internal": ["10.250.0.1", "10.9.9.9"]}
    monkeypatch.setattr(
        "artifacts.fetch.socket.getaddrinfo",
        lambda host, port: [(2, 1, 6, "", (address, port)) for address in answers[host]],
    )
    with pytest.raises(
        BlockedHostError, match=r"data\.internal resolves to 10\.250\.0\.1 is a private address"
    ):
        check_url("http://data.internal/train.parquet")
    check_url("http://data.internal/train.parquet", ("10.250.0.0/24",))
    with pytest.raises(BlockedHostError, match=r"resolves to 10\.9\.9\.9 is a private address"):
        check_url("http://mixed.internal/train.parquet", ("10.250.0.0/24",))
    assert address_refusal("10.9.9.9", allowed_networks=("10.250.0.0/24",)) == "10.9.9.9 is a private address"


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at several paths, each with a way of misbehaving."""

    hits: dict[str, int]
    ranges: list[tuple[str, str | None]]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        count = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        self.ranges.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/gone.parquet"):
            self.send_error(404)
            return
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


FAST = FetchOptions(allowed_networks=("127.0.0.0/8",), backoff_s=0.05)


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


def test_loopback_urls_are_refused_unless_their_network_is_allowed(data_server: str, tmp_path: Path) -> None:
    for options in (None, FetchOptions(allowed_networks=("10.250.0.0/24",))):
        with pytest.raises(BlockedHostError, match="loopback"):
            fetch_urls([f"{data_server}/a.jsonl"], tmp_path / "data", options)
    assert not (tmp_path / "data").exists()  # nothing is fetched when any URL is refused


def test_a_redirect_to_the_metadata_service_is_refused(data_server: str, tmp_path: Path) -> None:
    with pytest.raises(BlockedHostError, match=r"169\.254\.169\.254"):
        fetch_urls([f"{data_server}/redirect"], tmp_path / "data", FAST)


def test_a_host_that_resolves_elsewhere_at_connect_time_is_refused(
    data_server: str,
    requests_seen: list[tuple[str, str | None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the check sees a public address, the connection's own lookup gets loopback. The
    address the socket reached is checked too, so nothing is sent there."""
    real = socket.getaddrinfo
    port = int(data_server.rsplit(":", 1)[1])

    def answer(address: str):
        def resolve(host: str, *args: object, **kwargs: object) -> list:
            return real(address if host == "data.example.com" else host, *args, **kwargs)  # type: ignore[arg-type]

        return resolve

    # the policy's lookups (check_url) see a public address, the connection's own gets loopback
    monkeypatch.setattr(
        "artifacts.fetch.socket",
        SimpleNamespace(getaddrinfo=answer("93.184.216.34"), gaierror=socket.gaierror),
    )
    monkeypatch.setattr(socket, "getaddrinfo", answer("127.0.0.1"))
    options = FetchOptions(retries=1, backoff_s=0.01)
    with pytest.raises(BlockedHostError, match=r"connected to 127\.0\.0\.1 is a loopback address"):
        fetch_urls([f"http://data.example.com:{port}/a.jsonl"], tmp_path / "data", options)
    assert requests_seen == []


def test_size_cap_stops_a_download_and_leaves_no_partial_file(data_server: str, tmp_path: Path) -> None:
    with pytest.raises(SizeLimitError):
        fetch_urls(
            [f"{data_server}/a.jsonl"],
            tmp_path / "data",
            FetchOptions(allowed_networks=("127.0.0.0/8",), max_bytes=1000),
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
        "--allow-network",
        "10.250.0.0/24",
        "--allow-network",
        "127.0.0.1",
    ]
    assert main(argv) == 0
    assert (tmp_path / "d" / "train.jsonl").read_bytes() == PAYLOAD


def test_cli_fetch_data_reads_urls_from_a_file_and_checks_its_digest(
    data_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The controller hands the URLs over in a Secret it may create but not read: fetch-data refuses a
    list whose sha256 is not the one rendered beside it (a namesake someone else made), fetching
    nothing."""
    urls = [f"{data_server}/train.jsonl"]
    listed = tmp_path / "urls"
    listed.write_text(urls_text(urls))
    argv = ["fetch-data", "--urls-file", str(listed), "--allow-network", "127.0.0.1"]
    assert main([*argv, "--dest", str(tmp_path / "d"), "--expect-urls-sha256", urls_sha256(urls)]) == 0
    assert (tmp_path / "d" / "train.jsonl").read_bytes() == PAYLOAD

    listed.write_text(urls_text([f"{data_server}/other.jsonl"]))
    assert main([*argv, "--dest", str(tmp_path / "e"), "--expect-urls-sha256", urls_sha256(urls)]) == 1
    err = capsys.readouterr().err
    assert f"{listed} does not hold this Workspace's input URLs" in err and urls_sha256(urls) in err
    assert not (tmp_path / "e").exists()
    assert main([*argv, "--urls", urls[0], "--dest", str(tmp_path / "f")]) == 1
    assert "exactly one of --urls, --urls-file and --image" in capsys.readouterr().err


def test_cli_fetch_data_refuses_loopback_without_its_network_and_a_bad_network(
    data_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fetch-data", "--urls", f"{data_server}/train.jsonl", "--dest", str(tmp_path / "d")]
    assert main([*argv, "--allow-network", "10.250.0.0/24"]) == 1
    assert "is a loopback address" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--allow-network", "10.250.0.0/33"])
    assert exit_.value.code == 2
    assert "'10.250.0.0/33' is not an IP network" in capsys.readouterr().err


def test_signed_url_tokens_and_credentials_stay_out_of_messages(data_server: str, tmp_path: Path) -> None:
    """Errors are copied into the Workspace status and Events: a signed URL's query token and userinfo
    never appear there (one redact_url for every message)."""
    signed = f"{data_server}/gone.parquet?sv=2024&sig=SECRETSIGNATURE"
    with pytest.raises(FetchError) as refused:
        fetch_urls([signed], tmp_path / "data", FAST)
    assert "SECRETSIGNATURE" not in str(refused.value) and "gone.parquet" in str(refused.value)
    problems = url_problems(
        "tuning.input.urls[0]", "http://user:SECRETPASS@127.0.0.1/a.parquet?sig=SECRETSIG"
    )
    assert problems and all("SECRET" not in f"{p} {p.value}" for p in problems)
