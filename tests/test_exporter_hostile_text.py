"""Text from outside the daemon that UTF-8 cannot encode never costs a scrape.

psutil decodes a process name's undecodable bytes to lone surrogates
(``"train\\udcff"``), and JSON carries a lone surrogate as ``"\\ud800"``; a
label holding one made prometheus-client raise for the whole exposition, and
the endpoint dropped the connection (``up == 0`` for the node). Labels are
escaped now, the control protocol refuses such names, and a scrape that fails
to render anyway gets a 500.
"""

from __future__ import annotations

import http.client
import json
import os
import struct
from collections.abc import Callable, Iterator

import pytest
from control_helpers import RawPeer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from structlog.testing import capture_logs

from watchdog.control import ControlServer
from watchdog.control.protocol import ProtocolError, opt_names, opt_text
from watchdog.daemon.state import DaemonState
from watchdog.exporter.collector import StateCollector, label_value
from watchdog.exporter.http import MetricsServer
from watchdog.samples import DeviceSample, GpuProcessSample, HostProcessSample, Owner, Reading

pytest_plugins = ["control_fixtures"]

GIB = 1 << 30
ODD_COMMAND = "train\udcff"
"""What psutil reads for a process named ``b"train\\xff"``."""


def _odd_state() -> DaemonState:
    """A snapshot whose process, user, cgroup and GPU names hold what UTF-8 cannot encode."""
    state = DaemonState(monotonic=lambda: 1000.0, wall=lambda: 1.7e9)
    state.add_collector("nvml_devices", 1.0)
    state.poll_started("nvml_devices")
    state.apply(
        Reading(
            t=0,
            devices=[DeviceSample(0, "GPU-\ud800", "A100\udcfe", 80 * GIB, 10 * GIB)],
            processes=[GpuProcessSample(0, 4242, 8 * GIB)],
            host_processes=[
                HostProcessSample(
                    4242,
                    ODD_COMMAND,
                    "b\udce9b",
                    GIB,
                    0,
                    Owner(systemd_unit="odd-\udcff.service"),
                )
            ],
        )
    )
    state.poll_finished("nvml_devices", 0.002)
    return state


def _labels(text: str, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("python", "python"),
        ("cuda:0 é ✓", "cuda:0 é ✓"),
        (ODD_COMMAND, "train\\xff"),  # an undecodable byte: shown as the byte it was
        ("train-\ud800", "train-\\ud800"),  # a lone surrogate no decoder made
        ("a\udcff\ud800", "a\\udcff\\ud800"),
    ],
)
def test_label_value_escapes_what_utf8_cannot_encode(text: str, label: str) -> None:
    """Text that encodes is kept; an undecodable byte or a lone surrogate becomes an escape."""
    assert label_value(text) == label
    label.encode("utf-8")


def test_a_process_with_an_undecodable_name_still_renders() -> None:
    """Every outside name is exported escaped; the rest of the exposition is untouched."""
    registry = CollectorRegistry()
    registry.register(StateCollector(_odd_state().snapshot, stall_after_s=10))
    text = generate_latest(registry).decode()
    (info,) = _labels(text, "gpu_watchdog_process_info")
    assert info["command"] == "train\\xff"
    assert info["user"] == "b\\xe9b"
    assert info["systemd_unit"] == "odd-\\xff.service"
    (gpu,) = _labels(text, "gpu_watchdog_gpu_info")
    assert (gpu["uuid"], gpu["name"]) == ("GPU-\\ud800", "A100\\xfe")
    (memory,) = _labels(text, "gpu_watchdog_process_gpu_memory_bytes")
    assert memory["pid"] == "4242"


class _Raising(Collector):
    """A collector that fails the way a broken one would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def collect(self) -> Iterator[Metric]:
        raise self.error


class _OddJob(Collector):
    """A collector other than StateCollector that exports a label UTF-8 cannot hold."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("odd_job", "A job name from outside.", labels=["job"])
        family.add_metric(["train-\ud800"], 1)
        yield family


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    """Start MetricsServers of the given collectors on free ports; all stopped afterwards."""
    servers: list[MetricsServer] = []

    def start(*collectors: Collector) -> MetricsServer:
        registry = CollectorRegistry()
        for collector in collectors:
            registry.register(collector)
        server = MetricsServer("127.0.0.1:0", registry, lambda: (True, "ok"), 2)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _get(port: int, path: str = "/metrics") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_a_scrape_with_an_undecodable_process_name_is_served(
    serve: Callable[..., MetricsServer],
) -> None:
    """/metrics answers 200 with the name escaped, where the connection used to be dropped."""
    server = serve(StateCollector(_odd_state().snapshot, stall_after_s=10))
    status, body = _get(server.port)
    assert status == 200
    (info,) = _labels(body, "gpu_watchdog_process_info")
    assert info["command"] == "train\\xff"
    assert 'command="train\\\\xff"' in body  # the exposition escapes the backslash


def test_another_collectors_unencodable_label_is_escaped_not_fatal(
    serve: Callable[..., MetricsServer],
) -> None:
    """A label no collector escaped is escaped at render time, with a warning, not a 500."""
    server = serve(_OddJob())
    with capture_logs() as logs:
        status, body = _get(server.port)
    assert status == 200
    assert _labels(body, "odd_job") == [{"job": "train-\\ud800"}]
    warnings = [entry for entry in logs if entry["event"] == "metrics_label_unencodable"]
    assert [entry["log_level"] for entry in warnings] == ["warning"]


def test_a_collector_that_raises_gets_500_and_the_server_serves_on(
    serve: Callable[..., MetricsServer],
) -> None:
    """A render that fails answers 500 (logged), never a dropped connection; /healthz still 200."""
    server = serve(_Raising(RuntimeError("collector broke")))
    with capture_logs() as logs:
        status, body = _get(server.port)
    assert status == 500
    assert body == "metrics could not be rendered: see the daemon's log\n"
    (failure,) = [entry for entry in logs if entry["event"] == "http_handler_failed"]
    assert failure["path"] == "/metrics"
    assert _get(server.port, "/healthz") == (200, "ok\n")


# --- the control protocol ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["train-\ud800", "\udcff", "ok\udfffok"])
@pytest.mark.parametrize("one_line", [False, True])
def test_text_refuses_lone_surrogates(bad: str, one_line: bool) -> None:
    """Names and free text alike: one line naming the field, the surrogate escaped in it."""
    with pytest.raises(ProtocolError, match="no lone surrogates") as caught:
        opt_text({"job": bad}, "job", one_line=one_line)
    message = str(caught.value)
    assert message.startswith("job ")
    assert "\n" not in message
    message.encode("utf-8")
    with pytest.raises(ProtocolError):
        opt_names({"commands": ["empty_cache", bad]}, "commands")
    # A surrogate pair, as json.dumps writes an emoji, decodes to one character: fine.
    pair = json.loads('"\\ud83d\\ude00"')
    assert opt_text({"job": pair}, "job", one_line=one_line) == "\U0001f600"


def _send_raw(peer: RawPeer, message: dict[str, object]) -> None:
    """Send a frame the way a non-Python client may: json.dumps escapes the surrogate."""
    body = json.dumps({"v": 1, **message}).encode("ascii")
    peer.sock.sendall(struct.pack(">I", len(body)) + body)


def test_register_with_a_lone_surrogate_job_is_malformed(
    server_factory: Callable[..., ControlServer],
) -> None:
    """ "train-\\ud800" is valid JSON, but the registration is refused, never registered."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    _send_raw(peer, {"type": "register", "pid": os.getpid(), "job": "train-\ud800"})
    assert peer.closed_by_server()
    assert server.clients() == []
    assert server.stats()[1] == {"malformed": 1}


def test_a_report_with_a_lone_surrogate_device_is_malformed(
    server_factory: Callable[..., ControlServer],
) -> None:
    """A heartbeat cannot rename the device to something no label or log line can hold."""
    server = server_factory()
    peer = RawPeer(server.socket_path)
    assert peer.register()["type"] == "registered"
    _send_raw(peer, {"type": "report", "step": 1, "device": "cuda:\udc80"})
    assert peer.closed_by_server()
    assert server.stats()[1] == {"malformed": 1}
