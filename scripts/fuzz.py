"""Coverage-guided fuzzing (atheris, libFuzzer) of the inputs the daemon takes from others.

    pip install 'gpu-job-watchdog[fuzz]'
    python scripts/fuzz.py protocol -max_total_time=600
    python scripts/fuzz.py trace -max_total_time=600 -dict=...
    python scripts/fuzz.py config -max_total_time=600

Targets, each with the only outcomes it allows:

- ``protocol``: bytes from a socket peer into ``FrameDecoder`` in chunks:
  messages (dicts) or a ``ProtocolError``; the buffer never holds more than
  one frame (the length is checked before any body is buffered).
- ``trace``: any text as a trace file: valid rows (time ordered, memory
  non-negative) or one ``TraceError`` on one line naming the file.
- ``config``: any bytes as the configuration file: a ``Config`` or one
  ``ConfigError`` on one line naming the file.

Anything else (another exception, a failed check, a crash) is a finding:
libFuzzer stops and writes the input to ``crash-*`` in the current folder.
Options after the target go to libFuzzer (``-runs=N``, ``-max_total_time=S``,
``-max_len=N``; ``-help=1`` lists them). The hypothesis tests in
``tests/test_fuzz_inputs.py`` and ``tests/test_control_protocol.py`` check the
same properties on every CI run; this finds inputs they would not think of.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAX_MESSAGE_BYTES = 4096


def fuzz_protocol(data: bytes) -> None:
    """Feed ``data`` in uneven chunks; only messages or a ProtocolError may come out."""
    from watchdog.control.protocol import HEADER, FrameDecoder, ProtocolError

    decoder = FrameDecoder(MAX_MESSAGE_BYTES)
    cut = 1 + (data[0] % 7 if data else 0)  # chunk sizes vary with the input itself
    try:
        for start in range(0, len(data), cut):
            for message in decoder.feed(data[start : start + cut]):
                if not isinstance(message, dict):
                    raise AssertionError(f"decoded a {type(message).__name__}, not a message")
            if len(decoder._buffer) > MAX_MESSAGE_BYTES + HEADER.size:
                raise AssertionError(f"decoder buffers {len(decoder._buffer)} bytes")
    except ProtocolError:
        pass


def fuzz_trace(data: bytes) -> None:
    """Parse ``data`` as a trace; valid rows or one TraceError naming the file."""
    from watchdog.trace import TraceError, read_rows

    text = data.decode("utf-8", errors="replace")
    if data[:1] == b"h":  # a valid header, so the fuzzer need not guess one to reach the rows
        text = "t,gpu,pid,used_bytes,total_bytes\n" + text[1:]
    try:
        previous = -float("inf")
        for row in read_rows(io.StringIO(text, newline=""), "fuzz.csv"):
            if row.t < previous or row.used_bytes < 0:
                raise AssertionError(f"invalid row accepted: {row}")
            previous = row.t
    except TraceError as exc:
        _one_line_naming(str(exc), "fuzz.csv")


def fuzz_config(data: bytes) -> None:
    """Load ``data`` as the config file; a Config or one ConfigError naming the file."""
    from watchdog.config import ConfigError, load_config

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "fuzz.toml"
        path.write_bytes(data)
        try:
            load_config(path, env={})
        except ConfigError as exc:
            _one_line_naming(str(exc), str(path))


def _one_line_naming(message: str, name: str) -> None:
    if "\n" in message or name not in message:
        raise AssertionError(f"error is not one line naming {name}: {message!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "protocol": fuzz_protocol,
    "trace": fuzz_trace,
    "config": fuzz_config,
}


def main(argv: list[str]) -> int:
    """Run one target under atheris; libFuzzer's options follow the target's name."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: fuzz.py {{{','.join(TARGETS)}}} [libFuzzer options]", file=sys.stderr)
        return 2
    try:
        import atheris
    except ImportError:
        print(
            "fuzz.py: error: atheris is not installed: pip install 'gpu-job-watchdog[fuzz]'",
            file=sys.stderr,
        )
        return 2
    target = TARGETS[argv[1]]
    import watchdog.config
    import watchdog.control.protocol
    import watchdog.trace  # noqa: F401

    # Every loaded function, not instrument_imports(): an editable install's custom
    # loader hides some modules from the import hook, and they would run blind.
    atheris.instrument_all()
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
