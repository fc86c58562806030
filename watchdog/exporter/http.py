"""The HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes.

Scrapes are served from the daemon's last snapshot (collectors never call
NVML), on a bounded number of threads with a per-connection timeout, so a
hung driver or a flood of scrapers cannot take the daemon down.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from watchdog.config import parse_listen

log = structlog.get_logger("watchdog.exporter.http")

HealthCheck = Callable[[], tuple[bool, str]]
"""Returns (healthy, one-line reason)."""

REQUEST_TIMEOUT_S = 10.0


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    # Allow fast restarts of the daemon on the same port.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        slots: int,
        family: socket.AddressFamily,
    ) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(slots)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Waiting here keeps extra connections in the kernel's backlog instead of
        # starting a thread per connection.
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves ``registry`` on ``/metrics`` and ``health`` on ``/healthz``.

    Args:
        listen: ``HOST:PORT``; port 0 picks a free port (see ``port``).
        registry: The daemon's own registry (never the global one).
        health: Called for ``/healthz``.
        max_concurrent: Requests handled at once.
    """

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        health: HealthCheck,
        max_concurrent: int = 8,
    ) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = _make_handler(registry, health)
        self._server = _BoundedServer((host, port), handler, max_concurrent, family)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (if started) and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _make_handler(registry: CollectorRegistry, health: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "gpu-watchdog"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(registry))
            elif path == "/healthz":
                ok, reason = health()
                self._reply(
                    200 if ok else 503, "text/plain; charset=utf-8", (reason + "\n").encode()
                )
            elif path == "/":
                body = b"gpu-watchdog: see /metrics and /healthz\n"
                self._reply(200, "text/plain; charset=utf-8", body)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http_request", client=self.client_address[0], line=format % args)

    return Handler
