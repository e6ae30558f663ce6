"""Fetch an image from a user-supplied URL without opening an SSRF hole.

Plain Python (no Django); all configuration arrives through :class:`FetchPolicy`.

How the guard works, hop by hop:

1. The URL is parsed; only ``http``/``https`` are allowed and credentials
   (``user:pass@``) are refused.
2. The host name is resolved **once** with the injectable ``resolver``
   (``socket.getaddrinfo`` by default).  If *any* resolved address is not a
   public unicast address (loopback, RFC 1918 private, link-local incl. the
   cloud metadata address 169.254.169.254, multicast, reserved, unspecified,
   shared/CGNAT 100.64.0.0/10, documentation/benchmark ranges, IPv6 ULA and
   site-local, IPv4-mapped / NAT64 / 6to4 wrappers of any of those, ...) the
   request is refused before a socket is opened.  Host names listed in
   ``FetchPolicy.allowed_hosts`` skip this check (they are still resolved).
3. The TCP connection goes to the exact vetted IP address - there is no second
   DNS lookup, so DNS rebinding cannot swap the address.  The original host
   name is still sent in the ``Host`` header and, for https, used for SNI and
   certificate hostname verification.
4. Redirects are followed manually and every hop goes through steps 1-3 again.

Every failure is reported as :class:`FetchRejected` with a short message that
names the cause and never embeds a traceback or the resolved internal address.
"""

from __future__ import annotations

import http.client
import ipaddress
import posixpath
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

__all__ = ["FetchRejected", "FetchPolicy", "FetchedFile", "fetch_url"]

ARCHIVE_CONTENT_TYPES = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/x-tar",
        "application/gzip",
        "application/x-gzip",
        "application/x-gtar",
        "application/octet-stream",
    }
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_MAX_URL_LENGTH = 8192
_USER_AGENT = "imagesearch-fetcher/1.0"

# Ranges that the ipaddress module (3.11) still reports as global but which can
# reach internal networks, or which wrap an embedded IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
# IANA special-purpose ranges not (fully) covered by ipaddress.is_global in 3.11.
_SPECIAL_V4 = (ipaddress.IPv4Network("192.0.0.0/24"),)


class FetchRejected(ValueError):
    """The URL could not (or must not) be fetched.  ``str(exc)`` is user-safe."""


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 10.0  # seconds, per connect / per read
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    # Host names (compared case-insensitively, exact match) exempt from the
    # non-public address check, e.g. frozenset({"127.0.0.1"}) in tests.
    allowed_hosts: frozenset[str] = frozenset()
    # Accept archive content types (zip/tar/gzip/octet-stream) besides image/*.
    allow_archives: bool = False
    # Wall-clock budget for a whole fetch (all hops + body), guards against
    # servers that drip one byte just inside ``timeout``.
    total_timeout: float = 120.0


@dataclass(frozen=True)
class FetchedFile:
    url: str  # final URL after redirects (fragment removed)
    name: str  # file name derived from the URL path, "download" as fallback
    content_type: str  # lower-cased media type without parameters
    data: bytes


Resolver = Callable[..., list]


# --------------------------------------------------------------------------
# URL handling
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal without brackets
    port: int
    request_target: str  # path + query, what goes on the request line


def _parse_url(url: str) -> _Target:
    if not isinstance(url, str) or not url.strip():
        raise FetchRejected("invalid URL: empty")
    url = url.strip()
    if len(url) > _MAX_URL_LENGTH:
        raise FetchRejected("invalid URL: too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise FetchRejected("invalid URL: control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchRejected("invalid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchRejected(f"unsupported URL scheme {scheme or '(none)'!r}: only http and https are allowed")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FetchRejected("URLs with credentials are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchRejected("invalid URL: missing host")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        is_literal = True
    except ValueError:
        is_literal = False
    if not is_literal:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise FetchRejected("invalid URL: bad host name") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    if not 0 < port < 65536:
        raise FetchRejected("invalid URL: bad port")
    try:
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        query = quote(parts.query, safe="/?%:@!$&'()*+,;=-._~")
    except UnicodeError:
        raise FetchRejected("invalid URL: bad path") from None
    if not path.startswith("/"):
        path = "/" + path
    request_target = path + ("?" + query if query else "")
    clean_url = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
    return _Target(clean_url, scheme, host, port, request_target)


def name_from_url(url: str, fallback: str = "download") -> str:
    """A safe file name for what ``url`` points at: its last path segment, else ``fallback``."""
    path = unquote(urlsplit(url).path)
    name = posixpath.basename(path.replace("\\", "/"))
    name = "".join(c for c in name if c.isprintable() and c not in '/\\:*?"<>|')
    name = name.strip(" .")
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 200 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 16 else name[:200]
    return name or fallback


# --------------------------------------------------------------------------
# Address vetting
# --------------------------------------------------------------------------


def _blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Return why ``ip`` must not be contacted, or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = ip.ipv4_mapped
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.sixtofour is not None:
            embedded = ip.sixtofour
        if embedded is not None:
            reason = _blocked_reason(embedded)
            return f"{reason} (IPv6-wrapped)" if reason else None
        if ip.teredo is not None or ip in _NAT64_LOCAL:
            return "tunnelled"
        if ip.is_site_local:
            return "site-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _SHARED:
            return "shared/CGNAT"
        if any(ip in net for net in _SPECIAL_V4):
            return "special-purpose"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def _resolve(target: _Target, policy: FetchPolicy, resolver: Resolver) -> list[tuple[int, tuple]]:
    """Resolve ``target.host`` once and vet every address.

    Returns ``(family, sockaddr)`` pairs to connect to, in resolver order.
    """
    try:
        literal = ipaddress.ip_address(target.host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        # An IP literal needs no lookup; never hand it to the resolver.
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        infos = [(family, socket.SOCK_STREAM, 0, "", (target.host, target.port))]
    else:
        try:
            infos = resolver(target.host, target.port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):
            raise FetchRejected(f"could not resolve host {target.host!r}") from None
    skip_check = target.host.lower() in _allowed(policy)
    addresses: list[tuple[int, tuple]] = []
    seen: set[str] = set()
    for info in infos or ():
        try:
            family, sockaddr = info[0], info[4]
            ip_text = str(sockaddr[0])
            ip = ipaddress.ip_address(ip_text)
        except (ValueError, IndexError, TypeError):
            raise FetchRejected(f"could not resolve host {target.host!r}") from None
        if ip_text not in seen:
            seen.add(ip_text)
            addresses.append((family, (ip_text, target.port) + tuple(sockaddr[2:])))
        if skip_check:
            continue
        reason = _blocked_reason(ip)
        if reason:
            raise FetchRejected(
                f"refusing to fetch from {target.host!r}: it resolves to a non-public address ({reason})"
            )
    if not addresses:
        raise FetchRejected(f"could not resolve host {target.host!r}")
    return addresses


def _allowed(policy: FetchPolicy) -> frozenset[str]:
    return frozenset(h.lower().rstrip(".").strip("[]") for h in policy.allowed_hosts)


# --------------------------------------------------------------------------
# Connections pinned to a vetted address
# --------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection whose ``host`` (Host header) differs from the IP dialled."""

    def __init__(self, host: str, port: int, sockaddr: tuple, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._sockaddr = sockaddr
        self.raw_sock: socket.socket | None = None

    def connect(self) -> None:
        # create_connection() on a numeric address does no DNS lookup.
        self.sock = socket.create_connection(self._sockaddr[:2], self.timeout)
        self.raw_sock = self.sock


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, sockaddr: tuple, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._sockaddr = sockaddr
        self.raw_sock: socket.socket | None = None

    def connect(self) -> None:
        sock = socket.create_connection(self._sockaddr[:2], self.timeout)
        try:
            # SNI + certificate verification against the *original* host name.
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.raw_sock = self.sock


def _ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Deadline:
    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self.end = time.monotonic() + policy.total_timeout

    def op_timeout(self, what: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise FetchRejected(f"timed out {what} (total time limit exceeded)")
        return max(0.001, min(self.policy.timeout, left))


def _open(target: _Target, addresses, deadline: _Deadline):
    """Connect to the first reachable vetted address and send the request."""
    last_error: OSError | None = None
    for _family, sockaddr in addresses:
        timeout = deadline.op_timeout("connecting")
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(target.host, target.port, sockaddr, timeout, _ssl_context())
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, sockaddr, timeout)
        try:
            conn.connect()
        except ssl.CertificateError:
            conn.close()
            raise FetchRejected(f"TLS certificate for {target.host!r} could not be verified") from None
        except ssl.SSLError as exc:
            conn.close()
            raise FetchRejected(f"TLS error talking to {target.host!r}: {exc.reason or 'handshake failed'}") from None
        except TimeoutError:
            conn.close()
            raise FetchRejected(f"timed out connecting to {target.host!r}") from None
        except OSError as exc:
            conn.close()
            last_error = exc
            continue
        break
    else:
        detail = type(last_error).__name__ if last_error else "no address"
        raise FetchRejected(f"could not connect to {target.host!r} ({detail})")

    try:
        conn.request(
            "GET",
            target.request_target,
            headers={
                "User-Agent": _USER_AGENT,
                "Accept": "image/*, */*;q=0.1",
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
        )
        conn.raw_sock.settimeout(deadline.op_timeout("waiting for response"))
        response = conn.getresponse()
    except BaseException:
        conn.close()
        raise
    return conn, response


def _read_body(conn, response, target: _Target, policy: FetchPolicy, deadline: _Deadline) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None:
        try:
            declared = int(length.strip())
        except ValueError:
            declared = None
        if declared is not None and declared > policy.max_bytes:
            raise FetchRejected(f"response too large: {declared} bytes exceeds limit of {policy.max_bytes}")
    chunks: list[bytes] = []
    received = 0
    while True:
        conn.raw_sock.settimeout(deadline.op_timeout("reading response body"))
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        received += len(chunk)
        if received > policy.max_bytes:
            raise FetchRejected(f"response too large: more than {policy.max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_content_type(raw: str | None, policy: FetchPolicy) -> str:
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media.startswith("image/") and len(media) > len("image/"):
        return media
    if policy.allow_archives and media in ARCHIVE_CONTENT_TYPES:
        return media
    raise FetchRejected(f"unsupported content type {media or '(none)'!r}: expected an image")


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def fetch_url(url: str, *, policy: FetchPolicy, resolver: Resolver = socket.getaddrinfo) -> FetchedFile:
    """Download ``url`` under ``policy``; raise :class:`FetchRejected` on any problem."""
    deadline = _Deadline(policy)
    seen: set[str] = set()
    redirects = 0
    while True:
        target = _parse_url(url)
        seen.add(target.url)
        addresses = _resolve(target, policy, resolver)
        conn = response = None
        try:
            conn, response = _open(target, addresses, deadline)
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise FetchRejected(f"HTTP {status} redirect without a Location header")
                next_url = urljoin(target.url, location.strip())
                try:
                    next_key = _parse_url(next_url).url
                except FetchRejected as exc:
                    raise FetchRejected(f"redirect rejected: {exc}") from None
                if next_key in seen:
                    raise FetchRejected("too many redirects (redirect loop)")
                redirects += 1
                if redirects > policy.max_redirects:
                    raise FetchRejected(f"too many redirects (limit {policy.max_redirects})")
                url = next_url
                continue
            if not 200 <= status < 300:
                raise FetchRejected(f"server answered HTTP {status} {response.reason}".rstrip())
            content_type = _check_content_type(response.getheader("Content-Type"), policy)
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchRejected(f"unsupported content encoding {encoding!r}")
            data = _read_body(conn, response, target, policy, deadline)
            if not data:
                raise FetchRejected("empty response body")
            return FetchedFile(url=target.url, name=name_from_url(target.url), content_type=content_type, data=data)
        except TimeoutError:
            raise FetchRejected(f"timed out fetching from {target.host!r}") from None
        except http.client.IncompleteRead:
            raise FetchRejected(f"incomplete response from {target.host!r}") from None
        except (http.client.HTTPException, ssl.SSLError, ssl.CertificateError) as exc:
            raise FetchRejected(f"bad HTTP response from {target.host!r} ({type(exc).__name__})") from None
        except OSError as exc:
            raise FetchRejected(f"network error fetching from {target.host!r} ({type(exc).__name__})") from None
        finally:
            if response is not None:
                response.close()
            if conn is not None:
                conn.close()
