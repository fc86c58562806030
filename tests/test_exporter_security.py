"""TLS, mutual TLS and basic auth on /metrics and /healthz, from unit to the real daemon.

Certificates are made at test time with the openssl command line: a CA, a
server certificate for 127.0.0.1 and a client certificate it signed, plus a
second CA whose certificates the server must refuse. Basic auth tests need the
optional ``bcrypt`` package (the ``auth`` extra) and skip without it; the test
that proves the one-line error when it is missing runs everywhere.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PYTHON, descriptors_past_select_limit, free_port, require_tool
from watchdog.config import (
    BasicAuthUser,
    ConfigError,
    MetricsSettings,
    load_config,
    parse_basic_auth,
)
from watchdog.errors import EXIT_USAGE
from watchdog.exporter.http import MetricsServer
from watchdog.exporter.security import BasicAuth, WebSecurity, server_context

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Pki:
    """Files of a small test PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    """A client certificate from another CA."""
    rogue_key: Path
    other_key: Path
    """A key that belongs to no certificate here."""
    encrypted_key: Path
    garbage: Path
    directory: Path

    def new_server_cert(self, name: str) -> Path:
        """Another certificate for the server key, signed by the CA (a rotation)."""
        return _sign(self.directory, name, self.server_key, "IP:127.0.0.1", "serverAuth")


def _openssl(*args: str | Path) -> None:
    subprocess.run(
        [require_tool("openssl"), *map(str, args)], check=True, capture_output=True, timeout=60
    )


def _key(directory: Path, name: str) -> Path:
    path = directory / f"{name}.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key = _key(directory, name)
    cert = directory / f"{name}.pem"
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def _sign(directory: Path, name: str, key: Path, san: str, usage: str, ca: str = "ca") -> Path:
    csr, cert, ext = (directory / f"{name}.{kind}" for kind in ("csr", "pem", "ext"))
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        directory / f"{ca}.pem",
        "-CAkey",
        directory / f"{ca}.key",
        "-set_serial",
        str(time.time_ns()),
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server and a client certificate it signed, and a rogue CA's client."""
    directory = tmp_path_factory.mktemp("pki")
    _ca(directory, "ca")
    _ca(directory, "rogue-ca")
    server_key = _key(directory, "server")
    client_key = _key(directory, "client")
    rogue_key = _key(directory, "rogue")
    encrypted = directory / "encrypted.key"
    _openssl("pkey", "-in", server_key, "-aes256", "-passout", "pass:secret", "-out", encrypted)
    garbage = directory / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return Pki(
        ca=directory / "ca.pem",
        server_cert=_sign(directory, "server", server_key, "IP:127.0.0.1", "serverAuth"),
        server_key=server_key,
        client_cert=_sign(directory, "client", client_key, "DNS:prometheus", "clientAuth"),
        client_key=client_key,
        rogue_cert=_sign(
            directory, "rogue", rogue_key, "DNS:prometheus", "clientAuth", ca="rogue-ca"
        ),
        rogue_key=rogue_key,
        other_key=_key(directory, "other"),
        encrypted_key=encrypted,
        garbage=garbage,
        directory=directory,
    )


@pytest.fixture(scope="module")
def password_hash() -> str:
    """A bcrypt hash of PASSWORD (cost 4: fast tests; the format is what matters)."""
    bcrypt = pytest.importorskip("bcrypt")
    return str(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode())


def _settings(pki: Pki, **changes: Any) -> MetricsSettings:
    base = MetricsSettings(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key))
    return replace(base, **changes)


def _client_context(
    pki: Pki, cert: Path | None = None, key: Path | None = None, **versions: ssl.TLSVersion
) -> ssl.SSLContext:
    """A client that trusts the test CA and checks the server's name (127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    for name, version in versions.items():
        setattr(context, name, version)
    return context


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: http.client.HTTPMessage
    body: str


def _request(
    port: int,
    path: str = "/metrics",
    *,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    sent = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        sent["Authorization"] = f"Basic {token}"
    try:
        conn.request(method, path, headers=sent)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read().decode())
    finally:
        conn.close()


def _health_stub() -> Callable[[], tuple[bool, str]]:
    return lambda: (False, "unhealthy: nvml_devices: poll stalled")


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    """Start MetricsServers on free ports (a registry with one gauge); all stopped afterwards."""
    servers: list[MetricsServer] = []

    def start(
        security: WebSecurity | None = None, max_concurrent: int = 4, **options: Any
    ) -> MetricsServer:
        registry = CollectorRegistry()
        server = MetricsServer(
            "127.0.0.1:0", registry, _health_stub(), max_concurrent, security, **options
        )
        registry.register(server.collector())
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _rejected(port: int, reason: str, **request: Any) -> float:
    body = _request(port, **request).body
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if (
                sample.name == "gpu_watchdog_http_requests_rejected_total"
                and sample.labels["reason"] == reason
            ):
                return float(sample.value)
    raise AssertionError("gpu_watchdog_http_requests_rejected_total not exported")


def _wait_rejected(port: int, reason: str, expected: float, **request: Any) -> None:
    """The server counts a failed handshake just after closing it: give it a moment."""
    deadline = time.monotonic() + 5
    while (count := _rejected(port, reason, **request)) != expected:
        assert time.monotonic() < deadline, f"{reason}: {count}, expected {expected}"
        time.sleep(0.05)


# --- TLS -------------------------------------------------------------------------------------


def test_https_handshake_serves_metrics_with_the_configured_certificate(
    pki: Pki, serve: Callable[..., MetricsServer]
) -> None:
    """A client trusting the CA completes a TLS 1.2+ handshake for 127.0.0.1 and gets /metrics."""
    server = serve(WebSecurity.from_settings(_settings(pki)))
    context = _client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        served = tls.getpeercert(binary_form=True)
    assert served == ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text())
    reply = _request(server.port, context=context)
    assert reply.status == 200
    assert "gpu_watchdog_http_requests_rejected_total" in reply.body


def test_tls_min_version_is_enforced(pki: Pki, serve: Callable[..., MetricsServer]) -> None:
    """A TLS 1.2-only client is served at min 1.2 and refused at min 1.3."""
    only_12 = _client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    relaxed = serve(WebSecurity.from_settings(_settings(pki)))
    assert _request(relaxed.port, context=only_12).status == 200
    strict = serve(WebSecurity.from_settings(_settings(pki, tls_min_version="1.3")))
    with pytest.raises(ssl.SSLError):
        _request(strict.port, context=only_12)
    assert _request(strict.port, context=_client_context(pki)).status == 200


def test_plain_http_to_the_tls_port_fails_cleanly_and_the_server_keeps_serving(
    pki: Pki, serve: Callable[..., MetricsServer]
) -> None:
    """Plain HTTP gets a 400 saying "use https"; junk and silence are dropped; HTTPS goes on."""
    server = serve(WebSecurity.from_settings(_settings(pki)), max_concurrent=4)
    reply = _request(server.port)
    assert reply.status == 400
    assert "https://" in reply.body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as junk:
        junk.sendall(b"\x16\x03\x01\x00\x04junk")  # a TLS record holding no handshake
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := junk.recv(4096):
                answer += chunk
        assert answer[:1] in (b"", b"\x15"), "closed, at most after a TLS alert record"
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        started = time.monotonic()
        context = _client_context(pki)
        for _ in range(5):
            assert _request(server.port, context=context).status == 200
        assert time.monotonic() - started < 5, "a silent connection held up the others"
        _wait_rejected(server.port, "tls_handshake", 2, context=context)
    finally:
        silent.close()


def _trickle(port: int, stop: threading.Event, every_s: float) -> socket.socket:
    """A slow-loris: a request line sent one byte at a time, each well inside a read timeout."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)

    def run() -> None:
        for byte in itertools.cycle(b"GET /metrics HTTP/1.1"):
            if stop.wait(every_s):
                return
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=run, daemon=True).start()
    return connection


def test_a_trickling_client_is_cut_at_the_connection_deadline(
    serve: Callable[..., MetricsServer],
) -> None:
    """A byte every 0.3 s never trips a 1 s read timeout; the whole connection's 1 s does."""
    server = serve(max_concurrent=1, request_timeout_s=1.0)
    stop = threading.Event()
    loris = _trickle(server.port, stop, every_s=0.3)
    try:
        started = time.monotonic()
        assert _request(server.port).status == 200  # queued behind the one slot it holds
        assert time.monotonic() - started < 4
        loris.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while loris.recv(4096):
                pass
        assert time.monotonic() - started < 4, "the trickler kept its connection"
    finally:
        stop.set()
        loris.close()


@pytest.fixture(params=["low", "above_1024"])
def descriptors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run as is, or with over 1,024 descriptors open: the daemon raises its file limit
    for its clients, and select() fails on a descriptor past 1,024."""
    if request.param == "low":
        yield
        return
    with descriptors_past_select_limit():
        yield


@pytest.mark.usefixtures("descriptors")
def test_connections_that_say_nothing_give_their_slots_back_within_seconds(
    serve: Callable[..., MetricsServer],
) -> None:
    """Silent connections holding every slot delay a scrape by the first-byte wait, not 10 s.

    Anyone who can reach the port can open them; the scrape and /healthz (the
    readiness probe) must not wait out the whole connection deadline behind them.
    """
    server = serve(max_concurrent=2, request_timeout_s=10.0, first_byte_timeout_s=1.0)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        time.sleep(0.2)  # both are in their slots
        started = time.monotonic()
        assert _request(server.port).status == 200
        assert time.monotonic() - started < 5, "the silent connections kept their slots"
        for connection in silent:
            connection.settimeout(5)
            assert connection.recv(4096) == b""  # closed by the server
        assert _rejected(server.port, "idle") == 2
    finally:
        for connection in silent:
            connection.close()


def test_connections_waiting_for_a_slot_queue_in_the_kernel_not_in_syn_retries(
    serve: Callable[..., MetricsServer],
) -> None:
    """With every slot busy, 40 more connections are each accepted by the kernel at once.

    A backlog of 5 (socketserver's default) left the rest to TCP's SYN retries
    (1 s, 3 s, 7 s): 100 parallel scrapes took up to 11 s with nothing hung.
    """
    server = serve(max_concurrent=1, request_timeout_s=3.0)
    stop = threading.Event()
    loris = _trickle(server.port, stop, every_s=0.3)
    waiting: list[socket.socket] = []
    try:
        time.sleep(0.3)  # the trickler holds the one slot; the accept loop waits for it
        for _ in range(40):
            waiting.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
    finally:
        stop.set()
        loris.close()
        for connection in waiting:
            connection.close()


def test_out_of_descriptors_a_scrape_goes_without_its_deadline_and_frees_its_slot(
    serve: Callable[..., MetricsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE on the deadline's dup: served all the same, and the one slot is free again."""
    server = serve(max_concurrent=1)

    def no_descriptors(self: socket.socket) -> socket.socket:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(socket.socket, "dup", no_descriptors)
    for _ in range(3):
        assert _request(server.port).status == 200


def test_stop_returns_while_every_slot_is_held(serve: Callable[..., MetricsServer]) -> None:
    """With the slots taken and a connection waiting for one, stop() still returns at once."""
    server = serve(max_concurrent=1, request_timeout_s=60.0)
    stop = threading.Event()
    loris = _trickle(server.port, stop, every_s=0.3)
    waiting = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        time.sleep(0.5)  # the accept loop now waits for the slot the trickler holds
        stopper = threading.Thread(target=server.stop, daemon=True)
        started = time.monotonic()
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() hung on a held slot"
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        loris.close()
        waiting.close()


def test_a_forged_tls_record_is_logged_not_a_traceback(
    pki: Pki, serve: Callable[..., MetricsServer], capfd: pytest.CaptureFixture[str]
) -> None:
    """A forged TLS record after the handshake is logged at debug, not a stderr traceback."""
    server = serve(WebSecurity.from_settings(_settings(pki)))
    context = _client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        # Application data that fails the record MAC: the server's read raises SSLError.
        os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        with contextlib.suppress(OSError):
            tls.recv(1024)  # the server's alert, or the close
    time.sleep(0.5)  # the handler thread fails just after sending its alert
    assert _request(server.port, context=context).status == 200
    assert "Traceback" not in capfd.readouterr().err


# --- mutual TLS ------------------------------------------------------------------------------


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    pki: Pki, serve: Callable[..., MetricsServer]
) -> None:
    """With tls_client_ca_file, no certificate or one from another CA is refused; the CA's works."""
    security = WebSecurity.from_settings(_settings(pki, tls_client_ca_file=str(pki.ca)))
    server = serve(security)
    for context in (_client_context(pki), _client_context(pki, pki.rogue_cert, pki.rogue_key)):
        # TLS 1.3 refuses the client after the client's side of the handshake: the error
        # shows on the first read, as an alert or a reset.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _request(server.port, "/healthz", context=context)
    good = _client_context(pki, pki.client_cert, pki.client_key)
    assert _request(server.port, "/healthz", context=good).status == 503
    _wait_rejected(server.port, "tls_handshake", 2, context=good)


# --- basic auth ------------------------------------------------------------------------------


@pytest.fixture
def auth_server(
    pki: Pki, password_hash: str, serve: Callable[..., MetricsServer]
) -> tuple[MetricsServer, ssl.SSLContext]:
    """An HTTPS server with one basic auth user, "prometheus"."""
    users = (BasicAuthUser("prometheus", password_hash),)
    server = serve(WebSecurity.from_settings(_settings(pki, basic_auth=users)))
    return server, _client_context(pki)


def test_no_credentials_get_401_with_www_authenticate(
    auth_server: tuple[MetricsServer, ssl.SSLContext],
) -> None:
    """Without credentials /metrics, / and unknown paths answer 401 and ask for basic auth."""
    server, context = auth_server
    for path in ("/metrics", "/", "/nope"):
        reply = _request(server.port, path, context=context)
        assert reply.status == 401, path
        assert reply.headers["WWW-Authenticate"].startswith('Basic realm="gpu-watchdog"')
        assert "gpu_watchdog_" not in reply.body
    good = ("prometheus", PASSWORD)
    assert _rejected(server.port, "no_credentials", context=context, auth=good) == 3


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"prometheus:wrong").decode(),
        "Basic " + base64.b64encode(b"nobody:" + PASSWORD.encode()).decode(),
        "Basic " + base64.b64encode(b"prometheus:" + PASSWORD.encode() + b"x" * 80).decode(),
        "Basic " + base64.b64encode(PASSWORD.encode()).decode(),  # no colon
        "Basic !!!not-base64!!!",
        "Bearer " + base64.b64encode(b"prometheus:" + PASSWORD.encode()).decode(),
    ],
    ids=["wrong-password", "unknown-user", "too-long", "no-colon", "bad-base64", "not-basic"],
)
def test_wrong_or_malformed_credentials_get_401(
    auth_server: tuple[MetricsServer, ssl.SSLContext], header: str
) -> None:
    """Wrong passwords, unknown users and malformed headers are refused and counted."""
    server, context = auth_server
    reply = _request(server.port, context=context, headers={"Authorization": header})
    assert reply.status == 401
    assert "WWW-Authenticate" in reply.headers
    good = ("prometheus", PASSWORD)
    assert _rejected(server.port, "bad_credentials", context=context, auth=good) == 1


def test_right_credentials_are_served_and_healthz_hides_its_reason_from_strangers(
    auth_server: tuple[MetricsServer, ssl.SSLContext],
) -> None:
    """The right user gets /metrics; /healthz answers probes without credentials, reason hidden."""
    server, context = auth_server
    good = ("prometheus", PASSWORD)
    for _ in range(3):  # the cached verdict answers the same as the first check
        assert _request(server.port, context=context, auth=good).status == 200
    anonymous = _request(server.port, "/healthz", context=context)
    assert (anonymous.status, anonymous.body) == (503, "unhealthy\n")
    known = _request(server.port, "/healthz", context=context, auth=good)
    assert (known.status, known.body) == (503, "unhealthy: nvml_devices: poll stalled\n")


def test_basic_auth_checks_bcrypt_and_caches_verdicts(password_hash: str) -> None:
    """Right passwords pass and wrong ones fail; a repeated login costs no second bcrypt run."""
    bcrypt = pytest.importorskip("bcrypt")
    calls: list[bytes] = []

    class Counting:
        gensalt = staticmethod(bcrypt.gensalt)
        hashpw = staticmethod(bcrypt.hashpw)

        @staticmethod
        def checkpw(password: bytes, hashed: bytes) -> bool:
            calls.append(password)
            return bool(bcrypt.checkpw(password, hashed))

    auth = BasicAuth((BasicAuthUser("prometheus", password_hash),), bcrypt=Counting)
    header = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert auth.check(header)
    assert auth.check(header)
    assert len(calls) == 1
    assert not auth.check("Basic " + base64.b64encode(b"prometheus:nope").decode())
    # An unknown user still costs a bcrypt check (against a dummy hash): timing hides who exists.
    assert not auth.check("Basic " + base64.b64encode(f"ghost:{PASSWORD}".encode()).decode())
    assert len(calls) == 3
    assert not auth.check(None)
    assert len(calls) == 3


def test_missing_bcrypt_is_one_line_exit_2(
    pki: Pki, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Users configured but bcrypt not installed: check-config says how to install it, exit 2."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[metrics.basic_auth]]\nuser = "prometheus"\npassword_hash = "$2b$04${"a" * 53}"\n'
    )
    no_bcrypt = (
        "import sys; sys.modules['bcrypt'] = None; "
        "from watchdog.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [PYTHON, "-c", no_bcrypt, "check-config", str(config)],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=60,
    )
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "metrics.basic_auth needs the bcrypt package" in result.stderr
    assert "gpu-job-watchdog[auth]" in result.stderr


# --- nothing but reads -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/", "/reload"])
def test_only_get_and_head_are_served(
    serve: Callable[..., MetricsServer], method: str, path: str
) -> None:
    """Every other method gets 405 with Allow: GET, HEAD, on every path: no action over HTTP."""
    server = serve()
    reply = _request(server.port, path, method=method, headers={"Content-Length": "0"})
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"


def test_unknown_methods_and_paths_serve_nothing(serve: Callable[..., MetricsServer]) -> None:
    """Unknown paths get 404, HEAD no body; the Server header hides Python."""
    server = serve()
    for path in ("/metrics/", "/debug/pprof", "/../etc/passwd", "/api/v1/send"):
        assert _request(server.port, path).status == 404, path
    head = _request(server.port, method="HEAD")
    assert (head.status, head.body) == (200, "")
    assert int(head.headers["Content-Length"]) > 0
    assert head.headers["Server"] == "gpu-watchdog"
    assert _rejected(server.port, "method_not_allowed") == 0


@pytest.mark.parametrize("method", ["FROBNICATE", "PROPFIND", "MKCOL", "FOO", "get", "head"])
def test_unknown_methods_get_405_and_are_counted(
    serve: Callable[..., MetricsServer], method: str
) -> None:
    """A method HTTP does not define, or a lowercase one, is refused like POST: 405, counted.

    The standard library's own answer was an uncounted 501 without Allow; methods
    are case-sensitive, so "get" is not GET.
    """
    server = serve()
    reply = _request(server.port, method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"
    assert reply.body == "method not allowed\n"
    assert _rejected(server.port, "method_not_allowed") == 1


def test_secure_swaps_security_for_new_connections(
    pki: Pki, password_hash: str, serve: Callable[..., MetricsServer]
) -> None:
    """MetricsServer.secure (what SIGHUP calls) turns auth on for the next request."""
    server = serve(WebSecurity.from_settings(_settings(pki)))
    context = _client_context(pki)
    assert _request(server.port, context=context).status == 200
    users = (BasicAuthUser("prometheus", password_hash),)
    server.secure(WebSecurity.from_settings(_settings(pki, basic_auth=users)))
    assert _request(server.port, context=context).status == 401
    assert _request(server.port, context=context, auth=("prometheus", PASSWORD)).status == 200


# --- configuration errors --------------------------------------------------------------------


def _error(settings: MetricsSettings) -> str:
    with pytest.raises(ConfigError) as caught:
        server_context(settings)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code == EXIT_USAGE
    return message


def test_tls_file_errors_name_the_setting_and_the_file(pki: Pki) -> None:
    """Each broken TLS file is one line naming its setting, the file and what is wrong."""
    missing = pki.directory / "missing.pem"
    cases = [
        (
            _settings(pki, tls_cert_file=str(missing)),
            f"metrics.tls_cert_file {missing}: cannot read: No such file or directory",
        ),
        (
            _settings(pki, tls_key_file=str(pki.directory)),
            f"metrics.tls_key_file {pki.directory}: cannot read: Is a directory",
        ),
        (
            _settings(pki, tls_cert_file=str(pki.garbage)),
            f"metrics.tls_cert_file {pki.garbage}: no PEM certificate in it",
        ),
        (
            _settings(pki, tls_cert_file=str(pki.server_key)),
            f"metrics.tls_cert_file {pki.server_key}: no PEM certificate in it",
        ),
        (
            _settings(pki, tls_key_file=str(pki.garbage)),
            f"metrics.tls_key_file {pki.garbage}: no PEM private key in it",
        ),
        (
            _settings(pki, tls_key_file=str(pki.other_key)),
            f"metrics.tls_key_file {pki.other_key}: does not match the certificate in "
            f"metrics.tls_cert_file {pki.server_cert}",
        ),
        (
            _settings(pki, tls_key_file=str(pki.encrypted_key)),
            f"metrics.tls_key_file {pki.encrypted_key}: the key is encrypted",
        ),
        (
            _settings(pki, tls_client_ca_file=str(pki.garbage)),
            f"metrics.tls_client_ca_file {pki.garbage}: no PEM CA certificate in it",
        ),
        (
            _settings(pki, tls_client_ca_file=str(missing)),
            f"metrics.tls_client_ca_file {missing}: cannot read",
        ),
        (_settings(pki, tls_key_file=""), "metrics.tls_key_file is empty"),
        (MetricsSettings(tls_client_ca_file=str(pki.ca)), "metrics.tls_cert_file is empty"),
    ]
    for settings, expected in cases:
        assert expected in _error(settings)
    assert server_context(MetricsSettings()) is None


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"user": "p", "password_hash": "plaintext"}, "password_hash is not a bcrypt hash"),
        ({"user": "p", "password_hash": "$2b$31$" + "a" * 53}, "cost 04-16"),
        ({"user": "a:b", "password_hash": "$2b$10$" + "a" * 53}, "without ':'"),
        ({"user": "p"}, "needs exactly the keys user and password_hash"),
        ({"user": "p", "password": "x", "password_hash": "$2b$10$" + "a" * 53}, "exactly"),
    ],
)
def test_bad_users_are_config_errors(entry: dict[str, str], expected: str) -> None:
    """A plaintext password, an absurd cost or a malformed entry is refused when loading."""
    with pytest.raises(ValueError, match="entry 1") as caught:
        parse_basic_auth([entry])
    assert expected in str(caught.value)


def test_bad_hash_in_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    """load_config reports a bad hash as one line naming the file and metrics.basic_auth."""
    path = tmp_path / "config.toml"
    path.write_text('[[metrics.basic_auth]]\nuser = "p"\npassword_hash = "hunter2"\n')
    with pytest.raises(ConfigError, match=rf"{path}: metrics.basic_auth entry 1 .*bcrypt"):
        load_config(path, env={})


def test_basic_auth_cannot_come_from_the_environment(tmp_path: Path) -> None:
    """Users are a list of tables: the environment cannot set them, and says so."""
    with pytest.raises(ConfigError, match="GPU_WATCHDOG_METRICS_BASIC_AUTH"):
        load_config(None, env={"GPU_WATCHDOG_METRICS_BASIC_AUTH": "x"})


# --- the CLI and the daemon ------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "watchdog", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_check_config_and_run_refuse_a_broken_key_with_exit_2(
    pki: Pki, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """check-config and run (before NVML: else exit 3) print one line naming the key file."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[metrics]\ntls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.other_key}"\n'
    )
    for args in (
        ("check-config", str(config)),
        ("run", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"),
    ):
        result = _cli(*args, env=cli_env)
        assert result.returncode == EXIT_USAGE, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert f"metrics.tls_key_file {pki.other_key}: does not match" in result.stderr
    config.write_text(
        f'[metrics]\ntls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n'
    )
    assert _cli("check-config", str(config), env=cli_env).returncode == 0


def _wait_for_https(port: int, context: ssl.SSLContext, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.communicate()[1]
        try:
            if _request(port, "/healthz", context=context).status in (200, 503):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the daemon did not serve HTTPS within 30 s"
        time.sleep(0.1)


def _served_cert(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def _wait_for_log(path: Path, event: str) -> str:
    """The first line of the daemon's JSON log for ``event``."""
    deadline = time.monotonic() + 15
    while True:
        found = [line for line in path.read_text().splitlines() if f'"event": "{event}"' in line]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {event} in the daemon's log"
        time.sleep(0.05)


def _daemon_config(
    path: Path, port: int, pki: Pki, password_hash: str, cert: Path, key: Path
) -> None:
    """HTTPS with the test CA's server certificate, mutual TLS and one user."""
    path.write_text(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        f'tls_client_ca_file = "{pki.ca}"\n'
        f'[[metrics.basic_auth]]\nuser = "prometheus"\npassword_hash = "{password_hash}"\n'
    )


@contextlib.contextmanager
def _daemon(config: Path, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``gpu-watchdog run --simulate healthy``; JSON log to ``log``; must exit 0 on SIGTERM."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "watchdog", "run", "--config", str(config), "--simulate", "healthy"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "metrics on https://127.0.0.1:" in stderr


@pytest.mark.slow
def test_daemon_serves_mtls_and_basic_auth_and_survives_a_broken_reload(
    pki: Pki, password_hash: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The real daemon: mTLS + auth; SIGHUP with a broken key keeps TLS; a new cert is loaded."""
    port = free_port()
    config, log = tmp_path / "config.toml", tmp_path / "daemon.log"
    _daemon_config(config, port, pki, password_hash, pki.server_cert, pki.server_key)
    context = _client_context(pki, pki.client_cert, pki.client_key)
    good = ("prometheus", PASSWORD)
    with _daemon(config, log, cli_env) as process:
        _wait_for_https(port, context, process)
        reply = _request(port, context=context, auth=good)
        assert reply.status == 200
        assert 'gpu_watchdog_gpu_memory_used_bytes{gpu="0",source="simulated"}' in reply.body
        assert _request(port, context=context).status == 401
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _request(port, "/healthz", context=_client_context(pki))
        before = _served_cert(port, context)

        _daemon_config(config, port, pki, password_hash, pki.server_cert, pki.garbage)
        process.send_signal(signal.SIGHUP)
        assert "metrics.tls_key_file" in _wait_for_log(log, "config_reload_rejected")
        assert _request(port, context=context, auth=good).status == 200
        assert _served_cert(port, context) == before

        rotated = pki.new_server_cert("rotated")
        _daemon_config(config, port, pki, password_hash, rotated, pki.server_key)
        process.send_signal(signal.SIGHUP)
        _wait_for_log(log, "config_reloaded")
        assert _served_cert(port, context) == ssl.PEM_cert_to_DER_cert(rotated.read_text())
        assert _request(port, context=context, auth=good).status == 200


def _targets(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(url + "/api/v1/targets", timeout=5) as reply:
        data = json.load(reply)
    return {t["labels"]["job"]: t for t in data["data"]["activeTargets"]}


@pytest.mark.slow
def test_real_prometheus_scrapes_with_the_documented_config(
    pki: Pki, password_hash: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Prometheus with scheme https, tls_config and basic_auth (docs/metrics.md) scrapes: up."""
    binary = require_tool("prometheus")
    port, prometheus_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    _daemon_config(config, port, pki, password_hash, pki.server_cert, pki.server_key)
    (tmp_path / "good.password").write_text(PASSWORD + "\n")
    (tmp_path / "bad.password").write_text("guess\n")
    jobs = "".join(
        f"  - job_name: {job}\n    scheme: https\n"
        f"    tls_config: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, "
        f"key_file: {pki.client_key}}}\n"
        f"    basic_auth: {{username: prometheus, password_file: {tmp_path / password}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        for job, password in (("gpu-watchdog", "good.password"), ("guesser", "bad.password"))
    )
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n{jobs}")
    context = _client_context(pki, pki.client_cert, pki.client_key)
    with (
        _daemon(config, tmp_path / "daemon.log", cli_env) as process,
        (tmp_path / "prometheus.log").open("w") as out,
    ):
        _wait_for_https(port, context, process)
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={scrape}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{prometheus_port}"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError, KeyError, ValueError):
                    targets = _targets(url)
                    if (
                        {t["health"] for t in targets.values()} <= {"up", "down"}
                        and all(t["lastScrape"] != "0001-01-01T00:00:00Z" for t in targets.values())
                        and len(targets) == 2
                    ):
                        break
                assert time.monotonic() < deadline, "Prometheus scraped nothing in 60 s"
                time.sleep(0.5)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
    assert targets["gpu-watchdog"]["health"] == "up", targets["gpu-watchdog"]["lastError"]
    assert targets["guesser"]["health"] == "down"
    assert "401" in targets["guesser"]["lastError"]


def test_default_binding_is_loopback() -> None:
    """metrics.listen defaults to 127.0.0.1: exposing the endpoint is a deliberate change."""
    assert MetricsSettings().listen.startswith("127.0.0.1:")
