"""The orphan detector: zombie, reparented and unattributed GPU memory from readings and time."""

from __future__ import annotations

from watchdog.detectors.orphans import REPARENTED, UNATTRIBUTED, ZOMBIE, OrphanDetector
from watchdog.samples import DeviceSample, GpuProcessSample, HostProcessSample

GIB = 1 << 30


def device(used: int | None, gpu: int = 0, lost: bool = False) -> DeviceSample:
    """A GPU of 80 GiB with ``used`` bytes in use."""
    return DeviceSample(gpu=gpu, total_bytes=80 * GIB, used_bytes=used, lost=lost)


def host(pid: int, ppid: int, state: str = "sleeping", started: int = 1000) -> HostProcessSample:
    """Host facts of ``pid``."""
    return HostProcessSample(pid=pid, ppid=ppid, state=state, started=started)


def judge(
    detector: OrphanDetector,
    t: float,
    procs: list[GpuProcessSample],
    facts: list[HostProcessSample] | None,
    used: int | None = None,
    live: tuple[int, ...] = (),
) -> list[tuple[str, str, int | None]]:
    """One observation; (state, reason, pid) of each event."""
    total = sum(p.used_bytes or 0 for p in procs) if used is None else used
    events = detector.observe(t, [device(total)], procs, facts, live)
    return [(e.state, e.reason, e.pid) for e in events]


def test_reparented_process_raised_after_min_age_and_cleared_when_it_leaves_the_gpu():
    """A process whose parent exited is an orphan once that has lasted min_age_s."""
    detector = OrphanDetector(min_age_s=60)
    procs = [GpuProcessSample(gpu=0, pid=50, used_bytes=3 * GIB)]
    assert judge(detector, 0, procs, [host(50, ppid=40)]) == []
    assert judge(detector, 10, procs, [host(50, ppid=1)]) == []  # parent gone: candidate
    assert judge(detector, 69, procs, [host(50, ppid=1)]) == []
    events = detector.observe(70, [device(3 * GIB)], procs, [host(50, ppid=1)])
    assert [(e.state, e.reason, e.pid, e.used_bytes, e.parent) for e in events] == [
        ("raised", REPARENTED, 50, 3 * GIB, 40)
    ]
    assert "its parent (pid 40) has exited" in events[0].message
    assert [(o.gpu, o.pid, o.reason) for o in detector.active()] == [(0, 50, REPARENTED)]
    assert judge(detector, 80, [], [], used=0) == [("cleared", REPARENTED, 50)]
    assert detector.active() == []


def test_first_seen_under_init_proves_nothing():
    """A process whose first known parent is pid 1 (a service, a container's main) is fine."""
    detector = OrphanDetector(min_age_s=0)
    procs = [GpuProcessSample(gpu=0, pid=50, used_bytes=GIB)]
    assert judge(detector, 0, procs, [host(50, ppid=1)]) == []
    assert judge(detector, 100, procs, [host(50, ppid=1)]) == []


def test_a_reused_pid_is_a_new_process_with_its_own_first_parent():
    """Same pid, another start time: its parent is not compared with the old process's."""
    detector = OrphanDetector(min_age_s=0)
    procs = [GpuProcessSample(gpu=0, pid=50, used_bytes=GIB)]
    judge(detector, 0, procs, [host(50, ppid=40, started=1)])
    assert judge(detector, 5, procs, [host(50, ppid=41, started=2)]) == []


def test_zombie_on_the_process_list_is_an_orphan():
    """A zombie still listed by the driver is reported with its memory."""
    detector = OrphanDetector(min_age_s=5)
    procs = [GpuProcessSample(gpu=0, pid=60, used_bytes=GIB)]
    assert judge(detector, 0, procs, [host(60, ppid=40, state="zombie")]) == []
    assert judge(detector, 5, procs, [host(60, ppid=40, state="zombie")]) == [
        ("raised", ZOMBIE, 60)
    ]


def test_registered_clients_and_invisible_pids_are_never_orphans():
    """A live job (registered) and a pid without host facts are left alone."""
    detector = OrphanDetector(min_age_s=0)
    procs = [
        GpuProcessSample(gpu=0, pid=50, used_bytes=GIB),
        GpuProcessSample(gpu=0, pid=70, used_bytes=GIB),
    ]
    judge(detector, 0, procs, [host(50, ppid=40), host(70, ppid=40)], live=(50,))
    facts = [host(50, ppid=1, state="zombie")]  # 70: not visible any more
    assert judge(detector, 10, procs, facts, used=2 * GIB, live=(50,)) == []


def test_a_transient_condition_shorter_than_min_age_is_not_raised():
    """A zombie reaped within min_age_s (a job tearing down) is never reported."""
    detector = OrphanDetector(min_age_s=30)
    procs = [GpuProcessSample(gpu=0, pid=60, used_bytes=GIB)]
    judge(detector, 0, procs, [host(60, ppid=40, state="zombie")])
    assert judge(detector, 10, procs, [host(60, ppid=40)]) == []
    assert judge(detector, 40, procs, [host(60, ppid=40)]) == []


def test_unattributed_memory_beyond_the_processes_is_raised_with_its_amount():
    """Used memory 5 GiB above the processes' sum, over a 2 GiB tolerance, is reported."""
    detector = OrphanDetector(min_age_s=10, unattributed_min_bytes=2 * GIB)
    procs = [GpuProcessSample(gpu=0, pid=50, used_bytes=3 * GIB)]
    facts = [host(50, ppid=40)]
    assert judge(detector, 0, procs, facts, used=8 * GIB) == []
    assert detector.unattributed_bytes() == {0: 5 * GIB}
    events = detector.observe(10, [device(8 * GIB)], procs, facts)
    assert [(e.state, e.reason, e.pid, e.used_bytes) for e in events] == [
        ("raised", UNATTRIBUTED, None, 5 * GIB)
    ]
    assert "5120 MiB in use that no listed process accounts for" in events[0].message
    assert judge(detector, 20, procs, facts, used=4 * GIB) == [("cleared", UNATTRIBUTED, None)]


def test_overhead_under_the_tolerance_is_measured_but_not_claimed():
    """A context's overhead below unattributed_min_bytes is exported, never raised."""
    detector = OrphanDetector(min_age_s=0, unattributed_min_bytes=2 * GIB)
    procs = [GpuProcessSample(gpu=0, pid=50, used_bytes=3 * GIB)]
    assert judge(detector, 0, procs, [host(50, ppid=40)], used=4 * GIB) == []
    assert detector.unattributed_bytes() == {0: GIB}


def test_unknown_figures_claim_nothing():
    """Hidden per-process memory, an invisible pid, a lost GPU or no process list: no claim."""
    detector = OrphanDetector(min_age_s=0, unattributed_min_bytes=0)
    hidden = [GpuProcessSample(gpu=0, pid=50, used_bytes=None)]
    assert judge(detector, 0, hidden, [host(50, ppid=40)], used=8 * GIB) == []
    visible = [GpuProcessSample(gpu=0, pid=50, used_bytes=GIB)]
    assert judge(detector, 1, visible, [], used=8 * GIB) == []  # pid 50 not on this host
    assert detector.observe(2, [device(8 * GIB, lost=True)], [], []) == []
    assert detector.observe(3, [device(8 * GIB)], None, []) == []
    assert detector.unattributed_bytes() == {}


def test_unattributed_switched_off_still_measures():
    """With unattributed claims off (a container), the amount is exported but never raised."""
    detector = OrphanDetector(min_age_s=0, unattributed_min_bytes=0, unattributed=False)
    assert judge(detector, 0, [], None, used=8 * GIB) == []
    assert detector.unattributed_bytes() == {0: 8 * GIB}


def test_no_host_facts_skips_process_reasons_but_not_the_gpu_sum():
    """Without a host source (simulation) no process is judged; the GPU's sum still is."""
    detector = OrphanDetector(min_age_s=0, unattributed_min_bytes=GIB)
    procs = [GpuProcessSample(gpu=0, pid=50, used_bytes=GIB)]
    assert judge(detector, 0, procs, None, used=4 * GIB) == [("raised", UNATTRIBUTED, None)]


def test_events_serialise_for_the_journal():
    """Orphan events carry what the journal, the policy and the log read."""
    detector = OrphanDetector(min_age_s=0)
    procs = [GpuProcessSample(gpu=0, pid=60, used_bytes=GIB)]
    event = detector.observe(0, [device(GIB)], procs, [host(60, ppid=1, state="zombie")])[0]
    assert event.to_json()["kind"] == "orphaned_memory"
    assert (event.series, event.cause, event.time_to_oom_s) == (ZOMBIE, None, None)
    assert event.log_fields()["used_bytes"] == GIB
