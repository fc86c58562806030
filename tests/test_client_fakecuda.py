"""The CUDA paths of the client (figures, empty_cache, dump_snapshot) against a stand-in torch.

No GPU is needed: ``runtime.cuda_ready`` is pointed at an object with the
torch.cuda functions the client calls, recording what it was asked.
"""

from __future__ import annotations

import types

import pytest

from watchdog.client import commands, runtime


class FakeCuda:
    def __init__(self) -> None:
        self.reserved = 8 << 20
        self.history_calls: list[dict] = []

    def memory_stats(self, index):
        assert index == 1
        return {
            "allocated_bytes.all.current": 5 << 20,
            "reserved_bytes.all.current": self.reserved,
            "allocated_bytes.all.peak": 6 << 20,
            "num_alloc_retries": 2,
            "num_ooms": 0,
        }

    def memory_reserved(self, index):
        return self.reserved

    def empty_cache(self):
        self.reserved = 6 << 20

    def get_device_properties(self, index):
        return types.SimpleNamespace(uuid="5e1c0000-0000-0000-0000-000000000001")


@pytest.fixture
def fake_torch(monkeypatch):
    cuda = FakeCuda()

    def record(**kwargs):
        cuda.history_calls.append(kwargs)

    def dump(path):
        with open(path, "wb") as stream:
            stream.write(b"snapshot-bytes")

    cuda.memory = types.SimpleNamespace(_record_memory_history=record, _dump_snapshot=dump)
    torch = types.SimpleNamespace(cuda=cuda)
    monkeypatch.setattr(runtime, "cuda_ready", lambda: torch)
    monkeypatch.setattr(commands, "cuda_ready", lambda: torch)
    return cuda


def test_allocator_figures_map_memory_stats(fake_torch):
    """Figures come from memory_stats of the process's device, under the protocol's names."""
    assert runtime.allocator_figures("cuda:1") == {
        "allocated_bytes": 5 << 20,
        "reserved_bytes": 8 << 20,
        "peak_allocated_bytes": 6 << 20,
        "alloc_retries": 2,
        "ooms": 0,
    }
    assert runtime.allocator_figures("cpu") == dict.fromkeys(runtime.ALLOCATOR_FIELDS)
    assert runtime.device_uuid("cuda:1") == "GPU-5e1c0000-0000-0000-0000-000000000001"


def test_empty_cache_reports_freed_bytes(fake_torch):
    """empty_cache reports reserved bytes before and after."""
    details = commands.empty_cache("cuda:1")
    assert details["freed_bytes"] == 2 << 20


def test_snapshot_starts_recording_once_and_writes_atomically(fake_torch, tmp_path):
    """The first snapshot starts history recording; the file appears complete under its name."""
    taker = commands.SnapshotTaker(tmp_path, max_entries=1000, min_free_bytes=0)
    first = taker("cuda:1", "snap1")
    second = taker("cuda:1", "snap2")
    assert first["recording_started"] is True
    assert second["recording_started"] is False
    assert fake_torch.history_calls == [{"max_entries": 1000}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap1.pickle", "snap2.pickle"]
    assert (tmp_path / "snap1.pickle").read_bytes() == b"snapshot-bytes"


def test_snapshot_refuses_without_free_space(fake_torch, tmp_path):
    """A snapshot is not written where free space is below the minimum."""
    taker = commands.SnapshotTaker(tmp_path, max_entries=10, min_free_bytes=1 << 62)
    with pytest.raises(commands.CommandError, match="free"):
        taker("cuda:1", "snap")
    assert list(tmp_path.iterdir()) == []
