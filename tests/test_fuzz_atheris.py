"""scripts/fuzz.py: each atheris target runs a short coverage-guided campaign without a finding.

The campaigns here are short (the hypothesis tests cover the same properties
every run); a long one is `python scripts/fuzz.py TARGET -max_total_time=600`.
Skipped where atheris is not installed (the `fuzz` extra).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "scripts" / "fuzz.py"


@pytest.mark.parametrize("target", ["protocol", "trace", "config"])
def test_fuzz_target_runs_clean(target: str, tmp_path: Path) -> None:
    """A few seconds of fuzzing: libFuzzer finishes (DONE) and leaves no crash input."""
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, str(FUZZ), target, "-max_total_time=4", "-seed=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE" in done.stderr
    assert list(tmp_path.glob("crash-*")) == []


def test_fuzz_planted_bug_is_found(tmp_path: Path) -> None:
    """The harness would report a finding: a target that raises on some input fails the run."""
    pytest.importorskip("atheris")
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'scripts')!r})\n"
        "import fuzz\n"
        "def bad(data):\n"
        "    if data[:1] == b'{':\n"
        "        raise ValueError('planted')\n"
        "fuzz.TARGETS['protocol'] = bad\n"
        "sys.exit(fuzz.main(['fuzz.py', 'protocol', '-max_total_time=20', '-seed=1']))\n"
    )
    done = subprocess.run(
        [sys.executable, str(planted)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode != 0
    assert "ValueError: planted" in done.stdout + done.stderr
    assert list(tmp_path.glob("crash-*"))


def test_fuzz_without_a_target_is_a_usage_error() -> None:
    """No target: one usage line and exit 2."""
    done = subprocess.run([sys.executable, str(FUZZ)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: fuzz.py {protocol,trace,config}")
