"""Refuses outbound requests to private, loopback, link-local and metadata addresses, so a job's URL cannot
make a worker reach the services around it (SSRF)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from comfyq.errors import PermanentFailure

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeUrl(PermanentFailure):
    """A URL the guard refuses: wrong scheme, no host, or a host that resolves to a non-public address."""

    error_type = "unsafe_url"


def display_url(url: str) -> str:
    """The URL without user:password, for logs and stored errors."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv4-mapped, 6to4 or NAT64 IPv6 address."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def unsafe_reason(address: IPAddress) -> str | None:
    """Why an address must not be contacted, or None when it is a public (global unicast) address."""
    inner = _embedded_ipv4(address)
    if inner is not None:
        reason = unsafe_reason(inner)
        return f"{reason} (embedded in {address})" if reason else None
    checks = (
        (address in METADATA_ADDRESSES, "cloud metadata address"),
        (address.is_unspecified, "unspecified address"),
        (address.is_loopback, "loopback address"),
        (address.is_link_local, "link-local address"),
        (address.is_multicast, "multicast address"),
        (address.is_reserved, "reserved address"),
        (address.is_private, "private address"),
        (not address.is_global, "not globally routable address"),
    )
    return next((reason for hit, reason in checks if hit), None)


class AddressGuard:
    """`AddressGuard("images.internal, 10.8.0.0/16")`: hosts named in the allowlist, and addresses inside
    an allowlisted CIDR block (a bare IP is a /32 or /128), may be private; everything else must be global.

    DNS rebinding: a check followed by a separate connect lets a hostile DNS server answer a public address
    to the check and 127.0.0.1 to the connect. session() closes that gap by pinning: every new connection
    of the session resolves the host once, checks every address, and connects to a checked address (the
    Host header, TLS SNI and certificate check still use the name). Redirects are followed by request(),
    which checks each hop before sending it. Proxies from the environment are ignored (a proxy would resolve
    the name itself)."""

    def __init__(self, allowlist: str, *, resolver: Resolver = socket.getaddrinfo) -> None:
        self._resolve = resolver
        hosts: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in (item.strip() for item in allowlist.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        self.allowed_hosts: frozenset[str] = frozenset(hosts)
        self.allowed_networks = tuple(networks)

    def _address_allowed(self, address: IPAddress) -> bool:
        candidates = [address] + ([inner] if (inner := _embedded_ipv4(address)) else [])
        return any(c.version == n.version and c in n for c in candidates for n in self.allowed_networks)

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address of host, checked; raises UnsafeUrl if any is refused, socket.gaierror (an OSError)
        when the name does not resolve. An allowlisted name skips the address checks."""
        lookup = host.strip("[]")
        name = lookup.lower().rstrip(".")
        infos = self._resolve(lookup, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, f"{name} has no addresses")
        if name in self.allowed_hosts:
            return addresses
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = unsafe_reason(address)
            if reason and not self._address_allowed(address):
                shown = name if name == text else f"{name} ({text})"
                raise UnsafeUrl(f"refusing {shown}: {reason}; add it to COMFYQ_URL_ALLOWLIST if this is meant",
                                details={"host": name, "address": text, "reason": reason})
        return addresses

    def check(self, url: str) -> None:
        """Raises UnsafeUrl unless url is http(s) with a host whose every address is allowed; a name that
        does not resolve raises socket.gaierror (the caller's 'cannot connect' path)."""
        shown = display_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeUrl(f"refusing {shown}: malformed URL ({exc})",
                            details={"url": shown, "reason": "malformed"}) from exc
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise UnsafeUrl(f"refusing {shown}: scheme {scheme or '(none)'!r} is not http or https",
                            details={"url": shown, "reason": "scheme"})
        if not parts.hostname:
            raise UnsafeUrl(f"refusing {shown}: the URL has no host", details={"url": shown, "reason": "no host"})
        self.resolve(parts.hostname, port or DEFAULT_PORTS[scheme])

    def session(self) -> requests.Session:
        """A Session whose connections are pinned to checked addresses (see the class docstring)."""
        session = requests.Session()
        session.trust_env = False
        adapter = PinnedAdapter(self)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def request(self, session: requests.Session, method: str, url: str, *, max_redirects: int = 5,
                **kwargs: Any) -> requests.Response:
        """Send a request with redirects checked: every hop's URL passes check() before it is sent. Only
        GET and HEAD follow redirects; other methods get the 3xx back. Too many hops raise UnsafeUrl."""
        kwargs["allow_redirects"] = False
        for _ in range(max_redirects + 1):
            self.check(url)
            response = session.request(method, url, **kwargs)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_CODES or not location or method.upper() not in {"GET", "HEAD"}:
                return response
            response.close()
            url = urllib.parse.urljoin(url, location)
            log.debug("following redirect to %s", display_url(url), extra={"action": "redirect"})
        raise UnsafeUrl(f"refusing {display_url(url)}: too many redirects (more than {max_redirects})",
                        details={"url": display_url(url), "reason": "too many redirects"})


class _PinnedConnectionMixin:
    """Connects to an address the guard has just checked, never to a fresh, unchecked resolution."""

    guard: AddressGuard
    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        try:
            addresses = self.guard.resolve(name, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(name, self, exc) from exc  # type: ignore[arg-type]
        for address in addresses[:-1]:
            try:
                return self._connect_to(address, name)
            except (NewConnectionError, ConnectTimeoutError):
                continue  # try the next checked address, as socket.create_connection would
        return self._connect_to(addresses[-1], name)

    def _connect_to(self, address: str, name: str) -> socket.socket:
        # urllib3 connects to _dns_host; `host` (Host header, SNI, certificate) is read after it is restored.
        self._dns_host = address
        try:
            sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            return sock
        finally:
            self._dns_host = name


class _PinnedHTTPConnection(_PinnedConnectionMixin, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedConnectionMixin, HTTPSConnection):
    pass


class PinnedAdapter(HTTPAdapter):
    """A requests adapter whose pools build pinned connections for one guard."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        self.guard = guard  # set before super().__init__, which builds the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)
        http_conn = type("GuardedHTTPConnection", (_PinnedHTTPConnection,), {"guard": self.guard})
        https_conn = type("GuardedHTTPSConnection", (_PinnedHTTPSConnection,), {"guard": self.guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }
