"""Draw a replayed trace and its detections to a PNG (``gpu-watchdog replay --plot``).

matplotlib is an optional extra (``pip install 'gpu-job-watchdog[plot]'``):
it is imported only here and only when a plot is asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watchdog.detectors.events import CLEARED, LEAK, NEAR_OOM, RAISED, Event
from watchdog.detectors.replay import ReplayResult
from watchdog.errors import UsageError
from watchdog.policy.engine import Decision

GIB = float(1 << 30)
MAX_POINTS = 4000
"""Points drawn per line; longer series are reduced to the min and max of each stretch."""


def require_matplotlib(path: Path | None = None) -> Any:
    """Import matplotlib with a non-interactive backend, or fail with a one-line fix.

    With ``path``, also check that matplotlib can write its format (the file's
    suffix), so a replay is not run for a plot that cannot be saved.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'gpu-job-watchdog[plot]'"
        ) from None
    if path is None:
        return plt
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().removeprefix(".")
    # matplotlib would add ".png" to a name without one: the file would not be where we said.
    if path.is_dir() or not suffix:
        raise UsageError(
            f"--plot {path}: name an image file with its format's suffix, e.g. out.png"
        )
    if suffix not in formats:
        raise UsageError(
            f"--plot {path}: cannot write .{suffix} files; use one of "
            + ", ".join(f".{name}" for name in sorted(formats))
        )
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"--plot {path}: cannot write into {folder}")
    return plt


def _reduce(times: list[float], values: list[int]) -> tuple[list[float], list[float]]:
    """At most about MAX_POINTS points keeping each stretch's min and max (spikes stay visible)."""
    if len(times) <= MAX_POINTS:
        return times, [v / GIB for v in values]
    step = 2 * len(times) // MAX_POINTS + 1
    out_t: list[float] = []
    out_v: list[float] = []
    for i in range(0, len(times), step):
        chunk = values[i : i + step]
        lo, hi = min(chunk), max(chunk)
        t0 = times[i]
        t1 = times[min(i + step, len(times)) - 1]
        first, second = (lo, hi) if chunk.index(lo) < chunk.index(hi) else (hi, lo)
        out_t += [t0, t1]
        out_v += [first / GIB, second / GIB]
    return out_t, out_v


def _hours(times: list[float], scale: float) -> list[float]:
    return [t / scale for t in times]


def _spans(events: list[Event], end: float) -> list[tuple[float, float]]:
    """Intervals between a raise and its clear (or the end of the trace)."""
    spans: list[tuple[float, float]] = []
    since: float | None = None
    for event in events:
        if event.state == RAISED and since is None:
            since = event.t
        elif event.state == CLEARED and since is not None:
            spans.append((since, event.t))
            since = None
    if since is not None:
        spans.append((since, end))
    return spans


def plot_replay(
    result: ReplayResult, path: Path, title: str = "", decisions: Sequence[Decision] = ()
) -> None:
    """Write a PNG: per GPU, used and total memory, each process, detections and decisions.

    Raises:
        UsageError: matplotlib is missing, or the file cannot be written.
    """
    plt = require_matplotlib()
    recording = result.recording
    if recording is None:
        raise ValueError("plot_replay needs a replay run with record=True")
    gpus = sorted(recording.totals) or [0]
    duration = max(result.duration_s, 1.0)
    scale, unit = (3600.0, "h") if duration > 3 * 3600 else (60.0, "min")
    figure, axes = plt.subplots(
        len(gpus), 1, figsize=(12, 3.6 * len(gpus) + 0.6), sharex=True, squeeze=False
    )
    for row, gpu in enumerate(gpus):
        axis = axes[row][0]
        _draw_gpu(axis, result, gpu, scale, duration)
        _draw_decisions(axis, [d for d in decisions if d.gpu == gpu], scale)
        axis.set_ylabel(f"GPU {gpu} memory (GiB)")
        axis.grid(alpha=0.3)
    axes[-1][0].set_xlabel(f"trace time ({unit})")
    figure.suptitle(title or "gpu-watchdog replay")
    figure.tight_layout()
    try:
        _save_whole(figure, path)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)


def _save_whole(figure: Any, path: Path) -> None:
    """Save ``figure`` at ``path`` whole or not at all.

    It is drawn into a new file beside ``path``, then renamed over it: a write
    that fails part-way (a full disk, a file size limit) leaves the image that
    was there as it was, not half of the new one.
    """
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        figure.savefig(partial, dpi=110)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _draw_gpu(axis: Any, result: ReplayResult, gpu: int, scale: float, duration: float) -> None:
    recording = result.recording
    assert recording is not None
    total = recording.totals.get(gpu)
    times = recording.times.get((gpu, None), [])
    if times:
        t, v = _reduce(times, recording.values[(gpu, None)])
        axis.plot(_hours(t, scale), v, color="black", linewidth=1.0, label="GPU used")
    if total:
        axis.axhline(total / GIB, color="red", linestyle="--", linewidth=1.0, label="total")
    pids = sorted(pid for g, pid in recording.times if g == gpu and pid is not None)
    for pid in pids[:12]:
        t, v = _reduce(recording.times[(gpu, pid)], recording.values[(gpu, pid)])
        axis.plot(_hours(t, scale), v, linewidth=0.7, alpha=0.8, label=f"pid {pid}")
    events = [e for e in result.events if e.gpu == gpu]
    near = [e for e in events if e.kind == NEAR_OOM and e.series == "gpu"]
    for n, (a, b) in enumerate(_spans(near, duration)):
        axis.axvspan(
            a / scale,
            b / scale,
            color="orange",
            alpha=0.15,
            lw=0,
            label="near OOM" if n == 0 else None,
        )
    labelled: set[str] = set()
    for event in events:
        if event.kind != LEAK:
            continue
        x = event.t / scale
        y = event.used_bytes / GIB
        if event.state == RAISED:
            name = "leak raised" + (f" (pid {event.pid})" if event.pid is not None else "")
            axis.plot(
                [x],
                [y],
                marker="^",
                color="crimson",
                markersize=9,
                linestyle="none",
                label=name if name not in labelled else None,
            )
            labelled.add(name)
            if event.time_to_oom_s is not None and total:
                oom = (event.t + event.time_to_oom_s) / scale
                axis.plot([x, oom], [y, total / GIB], color="crimson", linestyle=":", linewidth=1.0)
                axis.plot(
                    [oom],
                    [total / GIB],
                    marker="x",
                    color="crimson",
                    markersize=9,
                    linestyle="none",
                    label="predicted OOM" if "oom" not in labelled else None,
                )
                labelled.add("oom")
        elif event.state == CLEARED:
            axis.plot(
                [x],
                [y],
                marker="v",
                color="seagreen",
                markersize=8,
                linestyle="none",
                label="cleared" if "cleared" not in labelled else None,
            )
            labelled.add("cleared")
    # Predicted OOMs past the trace's end are shown too, up to twice its length.
    ooms = [
        e.t + e.time_to_oom_s
        for e in events
        if e.kind == LEAK and e.state == RAISED and e.time_to_oom_s is not None
    ]
    right = min(max([duration, *ooms]), 2 * duration)
    axis.set_xlim(0, right / scale * 1.02)
    axis.set_ylim(bottom=0, top=(total / GIB * 1.08) if total else None)
    axis.legend(loc="upper left", fontsize=7, ncol=4)


_ACTION_STYLE = {
    "empty_cache": ("steelblue", "o"),
    "dump_snapshot": ("purple", "s"),
    "dump_stacks": ("gray", "s"),
    "checkpoint": ("darkgreen", "D"),
    "checkpoint_and_restart": ("darkgreen", "*"),
}


def _draw_decisions(axis: Any, decisions: Sequence[Decision], scale: float) -> None:
    """A vertical line and a marker at the top for each decision the policy sent or would send."""
    labelled: set[str] = set()
    top = axis.get_ylim()[1]
    for decision in decisions:
        if decision.outcome == "suppressed":
            continue
        color, marker = _ACTION_STYLE.get(decision.action, ("black", "o"))
        x = decision.t / scale
        axis.axvline(x, color=color, linestyle="-.", linewidth=0.8, alpha=0.6)
        label = decision.action + (" (dry run)" if decision.outcome == "dry_run" else "")
        axis.plot(
            [x],
            [top * 0.97],
            marker=marker,
            color=color,
            markersize=10,
            linestyle="none",
            label=label if label not in labelled else None,
        )
        labelled.add(label)
    if decisions:
        axis.legend(loc="lower right", fontsize=7, ncol=4)  # again, now with the decisions
