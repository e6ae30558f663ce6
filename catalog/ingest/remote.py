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

Every timeout is a wall-clock deadline over the whole fetch (DNS, connect, TLS,
status line, headers, body, all redirects): ``total_timeout`` bounds it all,
``timeout`` bounds each single wait within it.

Every failure is reported as :class:`FetchRejected` with a short message that
names the cause and never embeds a traceback or the resolved internal address.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import posixpath
import socket
import ssl
import threading
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
    # Wall-clock budget for a whole fetch (DNS, connect, TLS, status line, headers,
    # body, all hops): a server that drips one byte just inside ``timeout`` is cut off.
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


def _resolve(target: _Target, policy: FetchPolicy, resolver: Resolver,
             deadline: "_Deadline") -> list[tuple[int, tuple]]:
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
            infos = _within(deadline, f"resolving {target.host!r}", resolver,
                            target.host, target.port, 0, socket.SOCK_STREAM)
        except _DeadlineExceeded:
            raise
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
    """HTTPConnection whose ``host`` (Host header) differs from the IP dialled, and whose
    socket keeps to the fetch's deadline."""

    def __init__(self, host: str, port: int, sockaddr: tuple, deadline: "_Deadline"):
        super().__init__(host, port, timeout=deadline.op_timeout(f"connecting to {host!r}"))
        self._sockaddr = sockaddr
        self._deadline = deadline

    def connect(self) -> None:
        # create_connection() on a numeric address does no DNS lookup.
        sock = socket.create_connection(self._sockaddr[:2], self._deadline.op_timeout(f"connecting to {self.host!r}"))
        self.sock = _DeadlineSocket(sock, self._deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, sockaddr: tuple, deadline: "_Deadline", context: ssl.SSLContext):
        super().__init__(host, port, timeout=deadline.op_timeout(f"connecting to {host!r}"), context=context)
        self._sockaddr = sockaddr
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection(self._sockaddr[:2], self._deadline.op_timeout(f"connecting to {self.host!r}"))
        try:
            # The handshake is one blocking call: bound it by what is left of the deadline.
            sock.settimeout(self._deadline.op_timeout(f"in the TLS handshake with {self.host!r}"))
            # SNI + certificate verification against the *original* host name.
            tls = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(tls, self._deadline)


def _ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _DeadlineExceeded(TimeoutError):
    """The fetch's wall-clock budget (``FetchPolicy.total_timeout``) ran out."""


class _Deadline:
    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self.end = time.monotonic() + policy.total_timeout

    def left(self) -> float:
        return self.end - time.monotonic()

    def op_timeout(self, what: str) -> float:
        """Timeout for the next single wait: the per-operation one, cut to what is left."""
        left = self.left()
        if left <= 0:
            raise _DeadlineExceeded(what)
        return max(0.001, min(self.policy.timeout, left))


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose every send and receive waits at most
    min(per-operation timeout, time left before the deadline).

    http.client reads the status line and headers with readline() on ``makefile()``, and
    a socket timeout starts afresh for every byte that arrives, so a server dripping one
    byte per second would never time out; re-arming before each call makes the
    deadline hold in every phase."""

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self._sock = sock
        self._deadline = deadline

    def _call(self, what: str, method, *args):
        self._sock.settimeout(self._deadline.op_timeout(what))
        try:
            return method(*args)
        except TimeoutError:
            if self._deadline.left() <= 0:
                raise _DeadlineExceeded(what) from None
            raise

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        return self._call("reading the response", self._sock.recv_into, buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self._call("reading the response", self._sock.recv, bufsize, flags)

    def sendall(self, data, flags: int = 0) -> None:
        self._call("sending the request", self._sock.sendall, data, flags)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        # http.client only reads ("rb"); SocketIO calls back into recv_into above.
        if mode != "rb":
            raise ValueError(f"unsupported makefile mode {mode!r}")
        self._io_refs += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))

    # Same reference counting as socket.socket: HTTPConnection.close() hands the socket
    # over to the response's file, which closes it when done.
    _io_refs = 0
    _closed = False

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._io_refs <= 0:
            self._sock.close()

    def settimeout(self, value) -> None:  # timeouts are ours to set, per call
        pass

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _within(deadline: _Deadline, what: str, fn, *args):
    """Run a blocking call that takes no timeout (getaddrinfo) in a helper thread and give
    up on it when the deadline passes; the thread finishes on its own later."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fetch-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline.left()))
    if thread.is_alive():
        raise _DeadlineExceeded(what)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _open(target: _Target, addresses, deadline: _Deadline):
    """Connect to the first reachable vetted address and send the request."""
    last_error: OSError | None = None
    for _family, sockaddr in addresses:
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(target.host, target.port, sockaddr, deadline, _ssl_context())
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, sockaddr, deadline)
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
            if deadline.left() <= 0:
                raise _DeadlineExceeded(f"connecting to {target.host!r}") from None
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
                "Accept": "image/*, video/*, */*;q=0.1",
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
        )
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
    if media.startswith(("image/", "video/")) and media not in ("image/", "video/"):
        return media  # a video's bytes are sniffed again when decoded (catalog/ingest/video.py)
    if policy.allow_archives and media in ARCHIVE_CONTENT_TYPES:
        return media
    raise FetchRejected(f"unsupported content type {media or '(none)'!r}: expected an image or a video")


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
        conn = response = None
        try:
            addresses = _resolve(target, policy, resolver, deadline)
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
        except TimeoutError as exc:
            if isinstance(exc, _DeadlineExceeded) or deadline.left() <= 0:
                phase = f" (stopped while {exc})" if isinstance(exc, _DeadlineExceeded) else ""
                raise FetchRejected(
                    f"timed out fetching from {target.host!r}: no complete response within the total "
                    f"time limit of {policy.total_timeout:g} s{phase}") from None
            raise FetchRejected(
                f"timed out fetching from {target.host!r}: no data for {policy.timeout:g} s") from None
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
