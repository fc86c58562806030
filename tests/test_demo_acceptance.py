"""Acceptance: the demo's real training job, leaking, caught, restarted and finishing intact."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import REPO

from watchdog.demo.display import Display
from watchdog.demo.runner import Demo, DemoOptions, DemoResult

torch = pytest.importorskip("torch")

pytest_plugins = ["control_fixtures"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_demo(run_dir: Path, **options: object) -> tuple[DemoResult, str]:
    """Run the demo into ``run_dir``; return its result and what it printed."""
    out = io.StringIO()
    settings = DemoOptions(run_dir=run_dir, **options)  # type: ignore[arg-type]
    result = Demo(settings, Display(out, live=False)).run()
    return result, out.getvalue()


def journal(run_dir: Path) -> list[dict[str, object]]:
    """The daemon's audit journal entries (none when it wrote nothing)."""
    path = run_dir / "state" / "journal.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def left_running(run_dir: Path) -> list[str]:
    """Processes whose command line names the run directory (the daemon, the job)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if str(run_dir) in cmdline:
            found.append(cmdline)
    return found


def clean_weights(tmp_path: Path, steps: int) -> dict[str, object]:
    """The final weights of the same job run straight through: no leak, no daemon, no restart."""
    out = tmp_path / "clean.pt"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "watchdog.demo.train",
            "--steps",
            str(steps),
            "--checkpoint-dir",
            str(tmp_path / "clean-ckpt"),
            "--out",
            str(out),
        ],
        check=True,
        cwd=REPO,
        timeout=120,
        capture_output=True,
    )
    return torch.load(out)  # type: ignore[no-any-return]


def test_leak_leads_to_one_restart_and_nothing_lost(short_dir, tmp_path):
    """The leaking job is restarted exactly once and ends with the clean run's steps and weights."""
    result, printed = run_demo(short_dir / "run")
    assert result.ok, printed
    assert result.restarts == 1, printed
    assert result.exit_codes == [75, 0], printed
    assert "send checkpoint_and_restart" in result.decisions, printed
    assert "checkpoint_and_restart ok" in result.results, printed
    assert any(f.startswith("leak raised") for f in result.findings), printed
    assert result.wall_s < 180, printed
    assert left_running(short_dir / "run") == []
    leaky = torch.load(result.weights)
    clean = clean_weights(tmp_path, 1600)
    assert leaky["step"] == clean["step"] == 1600
    assert leaky["model"].keys() == clean["model"].keys()
    for name, tensor in clean["model"].items():
        assert torch.equal(leaky["model"][name], tensor), name


def test_no_leak_no_command(short_dir):
    """Without the leak the daemon sends nothing and the job runs straight through."""
    result, printed = run_demo(short_dir / "run", leak=False, steps=1200)
    assert result.ok, printed
    assert result.exit_codes == [0], printed
    assert result.decisions == [], printed
    assert result.results == [], printed
    kinds = {entry["type"] for entry in journal(short_dir / "run")}
    assert kinds <= {"finding"}, kinds
    assert not any(f.startswith("leak") for f in result.findings), printed
    assert left_running(short_dir / "run") == []


def test_dry_run_records_the_decision_and_leaves_the_job_alone(short_dir):
    """In dry run the leak's decisions are journalled and counted, and the job is not touched."""
    result, printed = run_demo(short_dir / "run", dry_run=True)
    assert result.ok, printed
    assert result.exit_codes == [0], printed
    assert "dry_run checkpoint_and_restart" in result.decisions, printed
    assert not any(d.startswith("send") for d in result.decisions), printed
    entries = journal(short_dir / "run")
    assert not [e for e in entries if e["type"] == "result"]
    outcomes = {(e["action"], e["outcome"]) for e in entries if e["type"] == "decision"}
    assert ("checkpoint_and_restart", "dry_run") in outcomes
    metrics = (short_dir / "run" / "metrics.txt").read_text()
    assert (
        'gpu_watchdog_actions_total{action="checkpoint_and_restart",outcome="dry_run"} 1.0'
        in metrics
    )
    assert not list((short_dir / "run" / "checkpoints").glob("ckpt-*.pt"))
    assert left_running(short_dir / "run") == []


class _Interrupt(Display):
    """A display that stops the demo (as Ctrl-C would) once the job has started."""

    def event(self, label: str, text: str) -> None:
        super().event(label, text)
        if label == "train" and "started" in text:
            raise KeyboardInterrupt


def test_interrupted_demo_leaves_nothing_running(short_dir):
    """Ctrl-C in the middle of the run stops the daemon and the job."""
    run_dir = short_dir / "run"
    with pytest.raises(KeyboardInterrupt):
        Demo(DemoOptions(run_dir=run_dir), _Interrupt(io.StringIO(), live=False)).run()
    assert left_running(run_dir) == []
    assert json.loads((run_dir / "summary.json").read_text())["final_step"] is None


def test_sigterm_to_the_demo_command_leaves_nothing_running(short_dir):
    """SIGTERM to ``gpu-watchdog demo`` stops the daemon and the job it started."""
    run_dir = short_dir / "run"
    demo = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "demo", "--dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    assert demo.stdout is not None
    for line in demo.stdout:
        if "train    started" in line:
            break
    assert left_running(run_dir) != []
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=60) == 128 + signal.SIGTERM
    assert left_running(run_dir) == []
