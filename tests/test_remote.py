"""Tests for catalog.ingest.remote (SSRF-safe URL fetching).

Network rule: these tests only ever talk to 127.0.0.1.  Every outgoing
connection goes through a guard that fails the test for any other address,
and SSRF tests use stub resolvers plus a "no socket may be opened" stub.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import time

import pytest

from catalog.ingest import remote
from catalog.ingest.remote import FetchedFile, FetchPolicy, FetchRejected, fetch_url

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
LOCAL = frozenset({"127.0.0.1"})

_real_create_connection = socket.create_connection


@pytest.fixture(autouse=True)
def media_root():
    """Shadow tests/conftest.py's Django-only autouse fixture: no Django needed here."""
    return None


# --------------------------------------------------------------------------
# Local HTTP server
# --------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "TestServer"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status=200, body=b"", content_type="image/png", headers=(), length=True):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _redirect(self, location, status=302):
        self._send(status, b"", content_type="text/plain", headers=[("Location", location)])

    def do_GET(self):  # noqa: C901 - a small router
        srv = self.server
        srv.requests.append({"path": self.path, "host": self.headers.get("Host")})
        port = srv.server_address[1]
        path = self.path
        try:
            if path in ("/img/cat.png", "/"):
                self._send(body=PNG)
            elif path == "/img/with%20space.png?x=1":
                self._send(body=PNG)
            elif path == "/redirect":
                self._redirect("/img/cat.png")
            elif path == "/redirect-abs":
                self._redirect(f"http://127.0.0.1:{port}/img/cat.png", status=301)
            elif path.startswith("/chain/"):
                n = int(path.rsplit("/", 1)[1])
                self._redirect(f"/chain/{n - 1}" if n > 0 else "/img/cat.png", status=307)
            elif path == "/loop-a":
                self._redirect("/loop-b")
            elif path == "/loop-b":
                self._redirect("/loop-a")
            elif path == "/self":
                self._redirect("/self")
            elif path == "/no-location":
                self._send(302, b"", content_type="text/plain")
            elif path == "/to-private":
                self._redirect("http://internal.example/secret")
            elif path == "/to-metadata":
                self._redirect("http://169.254.169.254/latest/meta-data/")
            elif path == "/to-ftp":
                self._redirect(f"ftp://127.0.0.1:{port}/x")
            elif path == "/to-localhost":
                self._redirect(f"http://localhost:{port}/img/cat.png")
            elif path == "/slow-headers":
                time.sleep(srv.slow)
                self._send(body=PNG)
            elif path == "/slow-body":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG[:10])
                self.wfile.flush()
                time.sleep(srv.slow)
                self.wfile.write(PNG[10:])
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path in ("/drip-status", "/drip-headers", "/drip-body"):
                # One byte every 0.2 s: each byte arrives well inside the per-read timeout.
                head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                split = {"/drip-status": 0, "/drip-headers": head.index(b"\r\n") + 2, "/drip-body": len(head)}[path]
                self.close_connection = True
                self.wfile.write(head[:split])
                for byte in head[split:] + b"\x00" * 1000:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            elif path.startswith("/slow-hop/"):
                n = int(path.rsplit("/", 1)[1])
                time.sleep(0.3)
                self._redirect(f"/slow-hop/{n - 1}" if n > 0 else "/img/cat.png", status=302)
            elif path == "/html":
                self._send(body=b"<html></html>", content_type="text/html; charset=utf-8")
            elif path == "/no-type":
                self._send(body=PNG, content_type=None)
            elif path == "/archive.zip":
                self._send(body=b"PK\x03\x04" + b"\x00" * 100, content_type="application/zip")
            elif path == "/octet":
                self._send(body=PNG, content_type="application/octet-stream")
            elif path == "/gzip-encoded":
                self._send(body=PNG, headers=[("Content-Encoding", "gzip")])
            elif path == "/big-declared":
                self._send(body=b"\x00" * 5000)
            elif path == "/big-stream":
                # HTTP/1.0, no Content-Length: body delimited by connection close
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                for _ in range(50):
                    self.wfile.write(b"\xff" * 100)
            elif path == "/big-chunked":
                self.close_connection = True
                out = [b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                       b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"]
                for _ in range(50):
                    out.append(b"64\r\n" + b"\x01" * 100 + b"\r\n")
                out.append(b"0\r\n\r\n")
                self.wfile.write(b"".join(out))
            elif path == "/lying-length":
                # declares a small body but keeps sending
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(b"\x00" * 5000)
            elif path == "/status/404":
                self._send(404, b"nope", content_type="text/plain")
            elif path == "/status/500":
                self._send(500, b"boom", content_type="text/plain")
            elif path == "/empty":
                self._send(body=b"")
            else:
                self._send(404, b"unknown route", content_type="text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # client gave up (timeouts)
        pass


@pytest.fixture(scope="module")
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    srv.slow = 0.6
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def base(server):
    server.requests.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


# --------------------------------------------------------------------------
# Network guards
# --------------------------------------------------------------------------


class ConnectionLog(list):
    pass


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Every test: outgoing connections are allowed to loopback only."""
    log = ConnectionLog()

    def guarded(address, *args, **kwargs):
        log.append(tuple(address[:2]))
        assert ipaddress.ip_address(address[0]).is_loopback, f"test tried to connect to {address!r}"
        return _real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return log


@pytest.fixture
def no_connect(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden)
    monkeypatch.setattr(remote.http.client.HTTPConnection, "connect", forbidden)
    monkeypatch.setattr(remote.http.client.HTTPSConnection, "connect", forbidden)


def stub_resolver(mapping):
    """getaddrinfo look-alike answering from ``mapping`` (host -> list of IPs)."""
    calls = []

    def resolve(host, port, *args, **kwargs):
        calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in mapping[host]:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    resolve.calls = calls
    return resolve


def numeric_only_resolver(host, port, *args, **kwargs):
    """The real getaddrinfo, restricted to numeric hosts (never touches DNS)."""
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)


def policy(**kw):
    kw.setdefault("allowed_hosts", LOCAL)
    kw.setdefault("timeout", 2.0)
    return FetchPolicy(**kw)


# --------------------------------------------------------------------------
# Happy path
# --------------------------------------------------------------------------


def test_fetch_image(base, server):
    result = fetch_url(f"{base}/img/cat.png", policy=policy())
    assert isinstance(result, FetchedFile)
    assert result.data == PNG
    assert result.content_type == "image/png"
    assert result.name == "cat.png"
    assert result.url == f"{base}/img/cat.png"
    assert server.requests[-1]["host"] == f"127.0.0.1:{server.server_address[1]}"


def test_fetch_strips_fragment_and_quotes_path(base, server):
    result = fetch_url(f"{base}/img/with space.png?x=1#frag", policy=policy())
    assert result.data == PNG
    assert result.name == "with space.png"
    assert "#" not in result.url
    assert server.requests[-1]["path"] == "/img/with%20space.png?x=1"


def test_name_fallback(base):
    assert fetch_url(f"{base}/", policy=policy()).name == "download"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://h/a/b/photo.jpg", "photo.jpg"),
        ("http://h/a/b%2F..%2Fetc%2Fpasswd", "passwd"),
        ("http://h/", "download"),
        ("http://h", "download"),
        ("http://h/..", "download"),
        ("http://h/dir/", "download"),
        ("http://h/%E7%8C%AB.png", "\u732b.png"),
    ],
)
def test_name_from_url(url, expected):
    assert remote.name_from_url(url) == expected


def test_connects_to_vetted_ip_with_original_host_header(server, monkeypatch, loopback_only):
    """The name is resolved once; the socket goes to that IP; Host keeps the name."""
    port = server.server_address[1]
    server.requests.clear()
    resolver = stub_resolver({"images.test": ["127.0.0.1"]})

    real_getaddrinfo = socket.getaddrinfo

    def numeric_getaddrinfo(host, *args, **kwargs):
        ipaddress.ip_address(str(host))  # a name here would be a second DNS lookup
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_getaddrinfo)
    result = fetch_url(
        f"http://Images.Test:{port}/img/cat.png",
        policy=policy(allowed_hosts=frozenset({"images.test"})),
        resolver=resolver,
    )
    assert result.data == PNG
    assert resolver.calls == ["images.test"]
    assert loopback_only == [("127.0.0.1", port)]
    assert server.requests[-1]["host"] == f"images.test:{port}"


def test_dns_rebinding_cannot_change_connected_address(monkeypatch):
    """First answer is public, a later lookup would be loopback: we dial the first."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    calls = []

    def rebinding_resolver(host, port, *args, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in next(answers)]

    dialled = []

    def fake_connect(address, *args, **kwargs):
        dialled.append(tuple(address[:2]))
        raise ConnectionRefusedError("stub: no real traffic in tests")

    monkeypatch.setattr(socket, "create_connection", fake_connect)
    with pytest.raises(FetchRejected, match="could not connect"):
        fetch_url("http://rebind.test/x.png", policy=FetchPolicy(timeout=1), resolver=rebinding_resolver)
    assert calls == ["rebind.test"]
    assert dialled == [("93.184.216.34", 80)]


# --------------------------------------------------------------------------
# SSRF guard: rejection before any connection
# --------------------------------------------------------------------------

BLOCKED = [
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.8.9.10",
    "169.254.169.254",
    "169.254.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1",
    "2001::1",
    "2001:db8::1",
    "::127.0.0.1",
]


@pytest.mark.parametrize("ip", BLOCKED)
def test_non_public_addresses_rejected_before_connecting(ip, no_connect):
    resolver = stub_resolver({"evil.example": [ip]})
    with pytest.raises(FetchRejected, match="refusing to fetch") as excinfo:
        fetch_url("http://evil.example/cat.png", policy=FetchPolicy(), resolver=resolver)
    assert resolver.calls == ["evil.example"]
    assert ip not in str(excinfo.value)  # do not leak internal addresses


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:8.8.8.8"])
def test_public_addresses_pass_the_check(ip):
    assert remote._blocked_reason(ipaddress.ip_address(ip)) is None


def test_one_private_address_among_public_ones_is_enough(no_connect):
    resolver = stub_resolver({"mixed.example": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(FetchRejected, match="private"):
        fetch_url("https://mixed.example/a.png", policy=FetchPolicy(), resolver=resolver)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://127.0.0.1:8000/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1%25eth0]/x.png",
        "https://10.1.2.3/x.png",
    ],
)
def test_ip_literals_rejected_without_resolver(url, no_connect):
    def resolver(*args, **kwargs):
        raise AssertionError("IP literals must not be resolved")

    with pytest.raises(FetchRejected, match="refusing to fetch"):
        fetch_url(url, policy=FetchPolicy(), resolver=resolver)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "017700000001", "0x7f000001"])
def test_obfuscated_loopback_rejected(host, no_connect):
    with pytest.raises(FetchRejected, match="refusing to fetch"):
        fetch_url(f"http://{host}/x.png", policy=FetchPolicy(), resolver=numeric_only_resolver)


def test_allowed_hosts_is_an_exact_name_match(no_connect):
    resolver = stub_resolver({"localhost": ["127.0.0.1"]})
    with pytest.raises(FetchRejected, match="loopback"):
        fetch_url("http://localhost/x.png", policy=FetchPolicy(allowed_hosts=LOCAL), resolver=resolver)


@pytest.mark.parametrize(
    "url, message",
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/x.png", "scheme"),
        ("gopher://example.com/x", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("data:image/png;base64,AAAA", "scheme"),
        ("//example.com/x.png", "scheme"),
        ("example.com/x.png", "scheme"),
        ("http://user:pass@example.com/x.png", "credentials"),
        ("http://user@example.com/x.png", "credentials"),
        ("http://", "missing host"),
        ("http:///x.png", "missing host"),
        ("http://[::1/x.png", "invalid URL"),
        ("http://example.com:99999/x.png", "invalid URL"),
        ("http://example.com/x\r\nHost: evil", "control characters"),
        ("", "empty"),
    ],
)
def test_bad_urls_rejected(url, message, no_connect):
    def resolver(*args, **kwargs):
        raise AssertionError("must not resolve")

    with pytest.raises(FetchRejected, match=message):
        fetch_url(url, policy=FetchPolicy(), resolver=resolver)


def test_unresolvable_host(no_connect):
    with pytest.raises(FetchRejected, match="could not resolve"):
        fetch_url("http://nope.invalid/x.png", policy=FetchPolicy(), resolver=stub_resolver({}))
    with pytest.raises(FetchRejected, match="could not resolve"):
        fetch_url("http://empty.test/x.png", policy=FetchPolicy(), resolver=stub_resolver({"empty.test": []}))


# --------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------


def test_relative_redirect_followed(base):
    result = fetch_url(f"{base}/redirect", policy=policy())
    assert result.data == PNG
    assert result.url == f"{base}/img/cat.png"
    assert result.name == "cat.png"


def test_absolute_redirect_followed(base):
    assert fetch_url(f"{base}/redirect-abs", policy=policy()).url == f"{base}/img/cat.png"


def test_redirect_chain_up_to_limit(base):
    # /chain/4 -> 3 -> 2 -> 1 -> 0 -> /img/cat.png : five redirects
    assert fetch_url(f"{base}/chain/4", policy=policy(max_redirects=5)).data == PNG


def test_too_many_redirects(base, server):
    with pytest.raises(FetchRejected, match="too many redirects"):
        fetch_url(f"{base}/chain/5", policy=policy(max_redirects=5))
    assert len(server.requests) == 6  # never requested a 7th URL


def test_no_redirects_allowed(base):
    with pytest.raises(FetchRejected, match="too many redirects"):
        fetch_url(f"{base}/redirect", policy=policy(max_redirects=0))


@pytest.mark.parametrize("path", ["/loop-a", "/self"])
def test_redirect_loop(base, path, server):
    with pytest.raises(FetchRejected, match="too many redirects"):
        fetch_url(f"{base}{path}", policy=policy(max_redirects=50))
    assert len(server.requests) <= 2


def test_redirect_without_location(base):
    with pytest.raises(FetchRejected, match="Location"):
        fetch_url(f"{base}/no-location", policy=policy())


def test_redirect_to_private_address_refused_before_connecting(base, server, loopback_only):
    resolver = stub_resolver({"internal.example": ["10.0.0.5"]})
    with pytest.raises(FetchRejected, match="refusing to fetch from 'internal.example'.*private"):
        fetch_url(f"{base}/to-private", policy=policy(), resolver=resolver)
    assert resolver.calls == ["internal.example"]
    assert loopback_only == [("127.0.0.1", server.server_address[1])]  # only the first hop


def test_redirect_to_metadata_ip_refused_before_connecting(base, server, loopback_only):
    with pytest.raises(FetchRejected, match="link-local"):
        fetch_url(f"{base}/to-metadata", policy=policy(), resolver=stub_resolver({}))
    assert loopback_only == [("127.0.0.1", server.server_address[1])]


def test_redirect_to_unlisted_loopback_name_refused(base, loopback_only):
    resolver = stub_resolver({"localhost": ["127.0.0.1"]})
    with pytest.raises(FetchRejected, match="loopback"):
        fetch_url(f"{base}/to-localhost", policy=policy(), resolver=resolver)
    assert len(loopback_only) == 1


def test_redirect_to_other_scheme_refused(base, loopback_only):
    with pytest.raises(FetchRejected, match="redirect rejected: unsupported URL scheme 'ftp'"):
        fetch_url(f"{base}/to-ftp", policy=policy())
    assert len(loopback_only) == 1


# --------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------


def test_timeout_waiting_for_headers(base):
    start = time.monotonic()
    with pytest.raises(FetchRejected, match="timed out"):
        fetch_url(f"{base}/slow-headers", policy=policy(timeout=0.2))
    assert time.monotonic() - start < 0.55


def test_timeout_during_body(base):
    start = time.monotonic()
    with pytest.raises(FetchRejected, match="timed out"):
        fetch_url(f"{base}/slow-body", policy=policy(timeout=0.2))
    assert time.monotonic() - start < 0.55


def test_total_timeout_stops_slow_drip(base):
    start = time.monotonic()
    with pytest.raises(FetchRejected, match="timed out"):
        fetch_url(f"{base}/drip", policy=policy(timeout=0.5, total_timeout=0.3))
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("phase", ["status", "headers", "body"])
def test_total_timeout_is_a_wall_clock_deadline_for_a_byte_dripping_server(base, phase):
    # Each byte comes 0.2 s after the last, far inside the 5 s per-read timeout: only the
    # 1 s deadline over the whole fetch can stop it (it used to run for minutes).
    start = time.monotonic()
    with pytest.raises(FetchRejected) as caught:
        fetch_url(f"{base}/drip-{phase}", policy=policy(timeout=5.0, total_timeout=1.0))
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.5, elapsed
    assert "no complete response within the total time limit of 1 s" in str(caught.value)
    assert "reading the response" in str(caught.value)


def test_total_timeout_spans_redirect_hops(base):
    # Five hops of 0.3 s each: every hop is quick, their sum is not.
    start = time.monotonic()
    with pytest.raises(FetchRejected, match="total time limit of 1 s"):
        fetch_url(f"{base}/slow-hop/5", policy=policy(timeout=5.0, total_timeout=1.0, max_redirects=10))
    assert time.monotonic() - start < 1.5


def test_total_timeout_bounds_a_silent_tls_handshake(loopback_only):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts (in the kernel) and then never says a word
    try:
        start = time.monotonic()
        with pytest.raises(FetchRejected, match="total time limit of 1 s"):
            fetch_url(f"https://127.0.0.1:{listener.getsockname()[1]}/x.png",
                      policy=policy(timeout=5.0, total_timeout=1.0))
        assert time.monotonic() - start < 1.5
    finally:
        listener.close()


def test_total_timeout_bounds_a_hanging_name_lookup(no_connect):
    def hanging_resolver(host, port, *args):
        time.sleep(3)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    start = time.monotonic()
    with pytest.raises(FetchRejected, match=r"total time limit of 1 s \(stopped while resolving 'slow\.example'\)"):
        fetch_url("http://slow.example/x.png", policy=FetchPolicy(timeout=5.0, total_timeout=1.0),
                  resolver=hanging_resolver)
    assert time.monotonic() - start < 1.5


def test_connection_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(FetchRejected, match="could not connect"):
        fetch_url(f"http://127.0.0.1:{port}/x.png", policy=policy())


# --------------------------------------------------------------------------
# Response validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, shown", [("/html", "text/html"), ("/no-type", "(none)"), ("/octet", "application/octet-stream")]
)
def test_non_image_content_type_rejected(base, path, shown):
    with pytest.raises(FetchRejected, match="unsupported content type") as excinfo:
        fetch_url(f"{base}{path}", policy=policy())
    assert shown in str(excinfo.value)


def test_archive_content_types_need_the_flag(base):
    with pytest.raises(FetchRejected, match="application/zip"):
        fetch_url(f"{base}/archive.zip", policy=policy())
    result = fetch_url(f"{base}/archive.zip", policy=policy(allow_archives=True))
    assert result.content_type == "application/zip"
    assert result.name == "archive.zip"
    assert fetch_url(f"{base}/octet", policy=policy(allow_archives=True)).content_type == "application/octet-stream"
    with pytest.raises(FetchRejected, match="text/html"):
        fetch_url(f"{base}/html", policy=policy(allow_archives=True))


def test_content_encoding_rejected(base):
    with pytest.raises(FetchRejected, match="content encoding"):
        fetch_url(f"{base}/gzip-encoded", policy=policy())


@pytest.mark.parametrize("path, status", [("/status/404", "404"), ("/status/500", "500"), ("/nowhere", "404")])
def test_non_2xx_rejected(base, path, status):
    with pytest.raises(FetchRejected, match=f"HTTP {status}"):
        fetch_url(f"{base}{path}", policy=policy())


def test_empty_body_rejected(base):
    with pytest.raises(FetchRejected, match="empty"):
        fetch_url(f"{base}/empty", policy=policy())


def test_oversized_with_content_length(base):
    with pytest.raises(FetchRejected, match="too large: 5000 bytes"):
        fetch_url(f"{base}/big-declared", policy=policy(max_bytes=1000))


@pytest.mark.parametrize("path", ["/big-stream", "/big-chunked", "/lying-length"])
def test_oversized_without_content_length(base, path):
    with pytest.raises(FetchRejected, match="too large: more than 1000 bytes"):
        fetch_url(f"{base}{path}", policy=policy(max_bytes=1000))


@pytest.mark.parametrize("path, size", [("/big-stream", 5000), ("/big-chunked", 5000), ("/big-declared", 5000)])
def test_body_exactly_at_limit_is_fine(base, path, size):
    assert len(fetch_url(f"{base}{path}", policy=policy(max_bytes=size)).data) == size


def test_rejections_are_value_errors_without_chained_tracebacks(base):
    with pytest.raises(ValueError) as excinfo:
        fetch_url(f"{base}/slow-headers", policy=policy(timeout=0.1))
    exc = excinfo.value
    assert isinstance(exc, FetchRejected)
    assert exc.__cause__ is None and exc.__suppress_context__
    assert "Traceback" not in str(exc) and "\n" not in str(exc)


# --------------------------------------------------------------------------
# HTTPS: SNI + certificate verification against the original host name
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not available to create a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    srv.slow = 0.6
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.cert_path = str(cert)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def trust_test_cert(tls_server, monkeypatch):
    import ssl

    def context():
        ctx = ssl.create_default_context(cafile=tls_server.cert_path)
        return ctx

    monkeypatch.setattr(remote, "_ssl_context", context)


def test_https_uses_sni_and_verifies_original_host_name(tls_server, trust_test_cert, loopback_only):
    port = tls_server.server_address[1]
    resolver = stub_resolver({"images.test": ["127.0.0.1"]})
    result = fetch_url(
        f"https://images.test:{port}/img/cat.png",
        policy=policy(allowed_hosts=frozenset({"images.test"})),
        resolver=resolver,
    )
    assert result.data == PNG
    assert loopback_only == [("127.0.0.1", port)]
    assert tls_server.requests[-1]["host"] == f"images.test:{port}"


def test_https_certificate_for_another_name_rejected(tls_server, trust_test_cert):
    port = tls_server.server_address[1]
    resolver = stub_resolver({"other.test": ["127.0.0.1"]})
    with pytest.raises(FetchRejected, match="certificate"):
        fetch_url(
            f"https://other.test:{port}/img/cat.png",
            policy=policy(allowed_hosts=frozenset({"other.test"})),
            resolver=resolver,
        )


def test_https_untrusted_certificate_rejected(tls_server):
    port = tls_server.server_address[1]
    resolver = stub_resolver({"images.test": ["127.0.0.1"]})
    with pytest.raises(FetchRejected, match="certificate"):
        fetch_url(
            f"https://images.test:{port}/img/cat.png",
            policy=policy(allowed_hosts=frozenset({"images.test"})),
            resolver=resolver,
        )


def test_https_against_plain_http_server_fails_cleanly(base):
    with pytest.raises(FetchRejected, match="TLS error"):
        fetch_url(base.replace("http://", "https://") + "/img/cat.png", policy=policy())
