"""The HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes.

Scrapes are served from the daemon's last snapshot (collectors never call
NVML), on a bounded number of threads with a per-connection timeout, so a
hung driver or a flood of scrapers cannot take the daemon down.

Only GET and HEAD of those two paths (and ``/``) are served: nothing over
HTTP changes the daemon; every other method, known to HTTP or not, gets 405.
A scrape that cannot be rendered gets 500, never a dropped connection. With
TLS configured the handshake runs on the connection's own thread, never the
accepting one. Every connection, TLS handshake included, is cut
``REQUEST_TIMEOUT_S`` after it was accepted, however it trickles bytes, so a
client that sends a byte every few seconds holds one slot for at most that
long; one that connects and says nothing is closed after
``FIRST_BYTE_TIMEOUT_S`` (Prometheus sends its request at once).
Connections waiting for a slot wait in the kernel's accept queue.
docs/security.md has the threat model.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from watchdog.config import parse_listen
from watchdog.exporter.collector import encodable
from watchdog.exporter.security import WebSecurity

log = structlog.get_logger("watchdog.exporter.http")

HealthCheck = Callable[[], tuple[bool, str]]
"""Returns (healthy, one-line reason)."""

REQUEST_TIMEOUT_S = 10.0
"""The longest one connection may take, from accept to its last byte sent."""
FIRST_BYTE_TIMEOUT_S = 2.0
"""How long a connection may hold a slot before its first byte arrives."""
_SLOT_POLL_S = 0.5
REJECTIONS = ("tls_handshake", "no_credentials", "bad_credentials", "method_not_allowed", "idle")
"""Why a request was refused; the label values of ``gpu_watchdog_http_requests_rejected_total``."""
ALLOWED_METHODS = "GET, HEAD"
_SERVED_METHODS = frozenset(ALLOWED_METHODS.split(", "))
_PLAIN_HTTP_REPLY = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nThis endpoint speaks HTTPS: use https://\n"
)


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    # Allow fast restarts of the daemon on the same port.
    allow_reuse_address = True
    # Connections waiting for a slot wait here; socketserver's 5 left the rest to SYN
    # retries (1 s, 3 s, 7 s) whenever the slots were busy.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        slots: int,
        family: socket.AddressFamily,
        security: WebSecurity,
        request_timeout_s: float,
        first_byte_timeout_s: float,
    ) -> None:
        self.address_family = family
        self.security = security
        self.request_timeout_s = request_timeout_s
        self.first_byte_timeout_s = first_byte_timeout_s
        self.stopping = threading.Event()
        self._rejected: Counter[str] = Counter(dict.fromkeys(REJECTIONS, 0))
        self._slots = threading.BoundedSemaphore(slots)
        self._count_lock = threading.Lock()
        super().__init__(address, handler)

    def reject(self, reason: str) -> None:
        """Count a refused request."""
        with self._count_lock:
            self._rejected[reason] += 1

    def rejections(self) -> dict[str, int]:
        """Refused requests so far, by reason (every reason, zeros included)."""
        with self._count_lock:
            return dict(self._rejected)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Waiting here keeps extra connections in the kernel's backlog instead of
        # starting a thread per connection; in short waits, so that stop() is heard.
        while not self._slots.acquire(timeout=_SLOT_POLL_S):
            if self.stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # A socket timeout bounds each read, not the connection: a client sending a
        # byte every few seconds would hold its slot forever. The deadline cuts it
        # through a duplicate of the socket, which stays valid after the handler
        # closes its own (no descriptor reused meanwhile is ever touched), and
        # reaches a TLS connection too, whose socket replaced ``request``.
        guard: socket.socket | None = None
        deadline: threading.Timer | None = None
        try:
            try:
                guard = request.dup()
            except OSError:  # out of descriptors: this one has only the per-read timeout
                pass
            else:
                deadline = threading.Timer(self.request_timeout_s, _cut, (guard,))
                deadline.daemon = True
                deadline.start()
            if not self._first_byte_arrives(request):
                self.reject("idle")
                log.debug("http_connection_idle", client=client_address[0])
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            if deadline is not None:
                deadline.cancel()
                deadline.join()
            if guard is not None:
                guard.close()
            self._slots.release()

    def _first_byte_arrives(self, request: socket.socket) -> bool:
        """Whether the client starts talking (or hangs up) before its first-byte wait ends."""
        # poll, not select: the daemon raises its file limit past select's 1024.
        waiter = select.poll()
        try:
            waiter.register(request, select.POLLIN)
            return bool(waiter.poll(self.first_byte_timeout_s * 1000))
        except (OSError, ValueError):  # closed meanwhile: let the handler fail as it would
            return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr for a client that hung up or sent
        # a bad TLS record mid-request: that is the client's problem, not the daemon's.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("http_connection_failed", client=client_address[0], error=str(error))
        else:
            log.exception("http_handler_failed", client=client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Read once: a SIGHUP that swaps the context mid-connection never mixes configs.
        context = self.security.tls
        if context is None:
            super().finish_request(request, client_address)
            return
        secured = self._handshake(context, request, client_address)
        if secured is None:
            return
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

    def _handshake(
        self, context: ssl.SSLContext, request: socket.socket, client_address: Any
    ) -> ssl.SSLSocket | None:
        """The TLS connection, or None (counted, logged at debug) when there is none."""
        request.settimeout(self.request_timeout_s)
        try:
            if request.recv(1, socket.MSG_PEEK).isalpha():  # "GET ...": forgot https://
                request.sendall(_PLAIN_HTTP_REPLY)
                error = "plain HTTP sent to the TLS port"
            else:
                return context.wrap_socket(request, server_side=True)
        except OSError as exc:  # SSLError, timeouts and resets are all OSErrors
            error = str(exc)
        self.reject("tls_handshake")
        log.debug("tls_handshake_failed", client=client_address[0], error=error)
        return None


def _cut(connection: socket.socket) -> None:
    """End a connection past its deadline: its handler's next read or write fails at once."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class MetricsServer:
    """Serves ``registry`` on ``/metrics`` and ``health`` on ``/healthz``.

    Args:
        listen: ``HOST:PORT``; port 0 picks a free port (see ``port``).
        registry: The daemon's own registry (never the global one).
        health: Called for ``/healthz``.
        max_concurrent: Requests handled at once.
        security: TLS and basic auth; plain, open HTTP when None.
        request_timeout_s: The longest one connection may take.
    """

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        health: HealthCheck,
        max_concurrent: int = 8,
        security: WebSecurity | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        first_byte_timeout_s: float = FIRST_BYTE_TIMEOUT_S,
    ) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = _make_handler(registry, health, request_timeout_s)
        self._server = _BoundedServer(
            (host, port),
            handler,
            max_concurrent,
            family,
            security or WebSecurity(),
            request_timeout_s,
            first_byte_timeout_s,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    @property
    def security(self) -> WebSecurity:
        """The TLS and auth settings in force."""
        return self._server.security

    def secure(self, security: WebSecurity) -> None:
        """Use ``security`` from the next connection on (SIGHUP: new certificates or users)."""
        self._server.security = security

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (if started) and close the socket."""
        self._server.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def collector(self) -> _RejectionCollector:
        """A collector of ``gpu_watchdog_http_requests_rejected_total``."""
        return _RejectionCollector(self._server)


class _RejectionCollector:
    def __init__(self, server: _BoundedServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "gpu_watchdog_http_requests_rejected",
            "Requests to /metrics and /healthz refused, by reason.",
            labels=["reason"],
        )
        counts = self._server.rejections()
        for reason in REJECTIONS:
            family.add_metric([reason], counts[reason])
        yield family


class _EncodableView(Collector):
    """``registry``'s metrics with every label value made encodable (``encodable``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """Yield the registry's families, label values escaped where UTF-8 cannot hold them."""
        for family in self._registry.collect():
            yield encodable(family)


def _render(encoder: Callable[[Collector], bytes], registry: CollectorRegistry) -> bytes:
    """The exposition of ``registry``, rendered again with labels escaped if one cannot encode."""
    try:
        return encoder(registry)
    except UnicodeEncodeError as exc:
        # StateCollector escapes the text it exports; this keeps the node scraped when
        # another collector lets through a label UTF-8 cannot hold (a lone surrogate).
        log.warning("metrics_label_unencodable", error=str(exc))
        return encoder(_EncodableView(registry))


def _make_handler(
    registry: CollectorRegistry, health: HealthCheck, timeout_s: float
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s
        server_version = "gpu-watchdog"
        server: _BoundedServer

        def version_string(self) -> str:
            # Not the default "gpu-watchdog Python/3.x": the interpreter is nobody's business.
            return self.server_version

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def parse_request(self) -> bool:
            # Refused here, before the standard library looks for a do_<METHOD>: it
            # answers a method it finds none for (PROPFIND, FOO, a lowercase get) with
            # an uncounted 501. Methods are case-sensitive (RFC 9110), so "get" is not GET.
            if not super().parse_request():
                return False  # a malformed request line: already answered (400 and such)
            if self.command in _SERVED_METHODS:
                return True
            self.server.reject("method_not_allowed")
            self._reply(
                405,
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                headers={"Allow": ALLOWED_METHODS},
            )
            return False

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            auth = self.server.security.auth
            header = self.headers.get("Authorization")
            authorized = auth is None or auth.check(header)
            if path == "/healthz":
                # Probes (kubelet, load balancers) carry no credentials: they get the
                # verdict; only an authorized caller gets the reason, which names sources.
                ok, reason = health()
                text = reason if authorized else reason.split(":", 1)[0]
                self._reply(
                    200 if ok else 503, "text/plain; charset=utf-8", (text + "\n").encode(), body
                )
            elif not authorized:
                self.server.reject("no_credentials" if header is None else "bad_credentials")
                self._reply(
                    401,
                    "text/plain; charset=utf-8",
                    b"unauthorized\n",
                    body,
                    {"WWW-Authenticate": 'Basic realm="gpu-watchdog", charset="UTF-8"'},
                )
            elif path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                try:
                    payload = _render(encoder, registry)
                except Exception:
                    # A dropped connection reads as a dead node to Prometheus and says
                    # nothing; a 500 says the daemon is up but could not render. Logged
                    # as handle_error logged it before this answered anything.
                    log.exception("http_handler_failed", client=self.client_address[0], path=path)
                    message = b"metrics could not be rendered: see the daemon's log\n"
                    self._reply(500, "text/plain; charset=utf-8", message, body)
                    return
                self._reply(200, content_type, payload, body)
            elif path == "/":
                index = b"gpu-watchdog: see /metrics and /healthz\n"
                self._reply(200, "text/plain; charset=utf-8", index, body)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n", body)

        def _reply(
            self,
            status: int,
            content_type: str,
            payload: bytes,
            body: bool = True,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                with contextlib.suppress(ConnectionError):  # the client left: nothing to do
                    self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http_request", client=self.client_address[0], line=format % args)

    return Handler
