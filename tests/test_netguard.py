"""The address guard refuses private, loopback, link-local and metadata targets (also behind names, mapped
IPv6 forms and redirects), honours the allowlist, and pins connections to the addresses it checked."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from comfyq.errors import PermanentFailure
from comfyq.netguard import AddressGuard, UnsafeUrl, display_url
from tests.http_servers import ThreadedServer


def fake_resolver(*answers: str) -> Any:
    """A getaddrinfo stand-in answering each call with the next address (the last one repeats)."""
    calls: list[str] = []

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        address = answers[min(len(calls), len(answers) - 1)]
        calls.append(host)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with 200 'ok', or a redirect for /redirect?to=..., and records Host headers."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Host", ""))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    running = ThreadedServer(handler)
    try:
        yield running.address, seen
    finally:
        running.close()


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.8.9.10:8188/x", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.10.20/", "link-local"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not globally routable"),
    ("http://240.0.0.1/", "reserved"),
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://[2002:a00:1::]/", "private"),  # 6to4 of 10.0.0.1
    ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64 of 127.0.0.1
    ("https://localhost:8443/", "loopback"),
    # Other spellings of loopback that resolvers accept: decimal, hexadecimal, octal, short forms, upper case.
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://0/", "unspecified"),
    ("HTTP://127.0.0.1/", "loopback"),
    # The host after userinfo, not before it; a fragment is not the host.
    ("http://8.8.8.8@127.0.0.1/", "loopback"),
    ("http://127.0.0.1#@8.8.8.8/", "loopback"),
    # Special-purpose IPv4 blocks: documentation, benchmarking, IETF protocol assignments, broadcast.
    ("http://192.0.2.1/", "private"),
    ("http://198.51.100.7/", "private"),
    ("http://203.0.113.9/", "private"),
    ("http://198.18.0.1/", "private"),
    ("http://192.0.0.1/", "private"),
    ("http://255.255.255.255/", "reserved"),
    # IPv6: the IPv6 metadata address, metadata behind NAT64, loopback behind 6to4, mapped in hexadecimal,
    # IPv4-compatible (deprecated), Teredo, documentation and discard-only prefixes.
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[0:0:0:0:0:ffff:a00:1]/", "private"),
    ("http://[::127.0.0.1]/", "reserved"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "private"),
    ("http://[2001:db8::1]/", "private"),
    ("http://[100::1]/", "reserved"),
])
def test_non_public_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl) as info:
        AddressGuard("").check(url)
    assert reason in info.value.message
    assert info.value.details["reason"].startswith(reason)
    assert isinstance(info.value, PermanentFailure)
    assert info.value.to_record()["type"] == "unsafe_url" and info.value.retryable is False


def test_the_message_names_the_host_and_its_address() -> None:
    with pytest.raises(UnsafeUrl, match=r"localhost \((127\.0\.0\.1|::1)\): loopback address"):
        AddressGuard("").check("http://localhost/")


@pytest.mark.parametrize("url", ["http://93.184.216.34/", "https://8.8.8.8:8443/x?y=1",
                                 "http://[2606:4700:4700::1111]/", "http://[::ffff:8.8.8.8]/"])
def test_public_addresses_pass(url: str) -> None:
    AddressGuard("").check(url)


def test_every_address_of_a_name_must_be_public() -> None:
    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    with pytest.raises(UnsafeUrl, match=r"images\.example \(10\.0\.0\.7\): private"):
        AddressGuard("", resolver=resolve).check("https://images.example/cat.png")


def test_allowlisted_host_name_and_cidr_are_allowed() -> None:
    AddressGuard("localhost").check("http://localhost:8188/prompt")
    AddressGuard("LocalHost.").check("http://localhost/")
    guard = AddressGuard(" 10.0.0.0/8 , fd00::/8, 127.0.0.1")
    guard.check("http://10.1.2.3/")
    guard.check("http://[fd00::5]/")
    guard.check("http://127.0.0.1:9000/")
    guard.check("http://[::ffff:10.9.9.9]/")
    for refused in ("http://192.168.1.1/", "http://127.0.0.2/", "http://169.254.169.254/"):
        with pytest.raises(UnsafeUrl):
            guard.check(refused)


def test_allowlisted_name_allows_its_private_addresses() -> None:
    guard = AddressGuard("images.internal", resolver=fake_resolver("10.20.30.40"))
    guard.check("http://images.internal/x.png")
    with pytest.raises(UnsafeUrl):
        guard.check("http://other.internal/x.png")


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/x.png", "file:///etc/passwd", "gopher://8.8.8.8/",
                                 "javascript:alert(1)", "93.184.216.34/x.png"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="is not http or https"):
        AddressGuard("").check(url)


@pytest.mark.parametrize("url", ["http:///x.png", "http://", "https://:443/", "http://user@/x"])
def test_urls_without_a_host_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="no host"):
        AddressGuard("").check(url)


def test_a_malformed_port_is_refused() -> None:
    with pytest.raises(UnsafeUrl, match="malformed"):
        AddressGuard("").check("http://8.8.8.8:99999/")


def test_a_name_that_does_not_resolve_is_an_os_error_not_a_refusal() -> None:
    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror):
        AddressGuard("", resolver=resolve).check("http://nowhere.invalid/")


def test_credentials_are_kept_out_of_messages() -> None:
    assert display_url("http://user:secret@10.0.0.1/x?y=1") == "http://10.0.0.1/x?y=1"
    with pytest.raises(UnsafeUrl) as info:
        AddressGuard("").check("http://user:secret@10.0.0.1/x")
    assert "secret" not in str(info.value)


def test_connections_are_pinned_to_the_checked_address(server: tuple[str, list[str]]) -> None:
    """DNS rebinding: the check sees a public address, the connect-time lookup a loopback one. The pinned
    session re-checks at connect time and refuses; nothing reaches the server."""
    address, seen = server
    port = address.split(":")[1]
    resolver = fake_resolver("93.184.216.34", "127.0.0.1")
    guard = AddressGuard("", resolver=resolver)
    with guard.session() as session, pytest.raises(UnsafeUrl, match="loopback"):
        guard.request(session, "GET", f"http://rebind.example:{port}/", timeout=5)
    assert resolver.calls == ["rebind.example", "rebind.example"]
    assert seen == []


def test_a_pinned_connection_keeps_the_host_name(server: tuple[str, list[str]]) -> None:
    address, seen = server
    port = address.split(":")[1]
    guard = AddressGuard("127.0.0.0/8", resolver=fake_resolver("127.0.0.1"))
    with guard.session() as session:
        response = guard.request(session, "GET", f"http://images.test:{port}/cat.png", timeout=5)
    assert response.status_code == 200 and response.content == b"ok"
    assert seen == [f"images.test:{port}"]


def test_a_refused_address_falls_back_to_the_next_checked_one(server: tuple[str, list[str]]) -> None:
    address, seen = server
    port = int(address.split(":")[1])

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.2", "127.0.0.1")]

    guard = AddressGuard("127.0.0.0/8", resolver=resolve)
    with guard.session() as session:
        response = guard.request(session, "GET", f"http://two.test:{port}/", timeout=5)
    assert response.status_code == 200 and seen == [f"two.test:{port}"]


def test_where_url_parsers_disagree_the_connection_is_checked(server: tuple[str, list[str]]) -> None:
    """`http://127.0.0.1:PORT\\@8.8.8.8/`: urllib.parse (the check) reads host 8.8.8.8, urllib3 (the connection)
    127.0.0.1. The check passes, and the pinned connection refuses the address it would really reach."""
    address, seen = server
    url = f"http://{address}\\@8.8.8.8/"
    guard = AddressGuard("")
    guard.check(url)  # urllib.parse sees a public host
    with guard.session() as session, pytest.raises(UnsafeUrl, match="loopback"):
        guard.request(session, "GET", url, timeout=5)
    assert seen == []


def test_redirects_are_checked_hop_by_hop(server: tuple[str, list[str]]) -> None:
    address, _ = server
    guard = AddressGuard("127.0.0.1")
    with guard.session() as session:
        ok = guard.request(session, "GET", f"http://{address}/redirect?to=/final", timeout=5)
        assert ok.status_code == 200 and ok.url.endswith("/final")
        with pytest.raises(UnsafeUrl, match="cloud metadata"):
            guard.request(session, "GET", f"http://{address}/redirect?to=http://169.254.169.254/latest/",
                          timeout=5)
        with pytest.raises(UnsafeUrl, match="is not http or https"):
            guard.request(session, "GET", f"http://{address}/redirect?to=file:///etc/passwd", timeout=5)
        with pytest.raises(UnsafeUrl, match=r"too many redirects \(more than 1\)"):
            guard.request(session, "GET", f"http://{address}/redirect?to=/redirect?to=/redirect?to=/x",
                          max_redirects=1, timeout=5)
        posted = guard.request(session, "POST", f"http://{address}/redirect?to=/final", timeout=5)
    assert posted.status_code == 501  # POST is not followed (and this server has no do_POST)
