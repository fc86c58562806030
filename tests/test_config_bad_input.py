"""Configuration input that used to crash, hang or slip through: each is one line and exit 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import PYTHON
from watchdog.commands.check_config import render_toml
from watchdog.commands.run import _reload
from watchdog.config import Config, ConfigError, load_config, parse_listen
from watchdog.config_docs import toml_value
from watchdog.errors import EXIT_FAILURE, EXIT_USAGE
from watchdog.exporter.security import server_context

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PATH_SETTINGS = [
    ("daemon", "state_dir"),
    ("sources", "proc_root"),
    ("control", "socket_path"),
]
"""Settings that name a path the daemon must have: empty is refused, as is a NUL byte."""
OPTIONAL_PATH_SETTINGS = [
    ("metrics", "tls_cert_file"),
    ("metrics", "tls_key_file"),
    ("metrics", "tls_client_ca_file"),
    ("control", "socket_group"),
]
"""Settings where empty means "none", but a NUL byte is still refused."""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _gpu_watchdog(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    try:
        return subprocess.run(
            [PYTHON, "-m", "watchdog", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:  # it hung, or a daemon started that should not have
        pytest.fail(f"gpu-watchdog {' '.join(args)[:200]} still running after {timeout} s")


def _one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, text: str) -> None:
    assert result.returncode == exit_code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


@pytest.mark.parametrize(("section", "key"), PATH_SETTINGS + OPTIONAL_PATH_SETTINGS)
def test_a_nul_byte_in_a_path_or_group_is_refused_naming_the_setting(
    tmp_path: Path, section: str, key: str
) -> None:
    """Every path-valued setting (and the socket group) refuses a NUL byte at validation."""
    path = _write(tmp_path, f'[{section}]\n{key} = "a\\u0000b"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == f"{path}: {section}.{key} must not contain a NUL byte"


@pytest.mark.parametrize(("section", "key"), PATH_SETTINGS)
def test_an_empty_path_setting_is_refused(tmp_path: Path, section: str, key: str) -> None:
    """An empty state_dir, proc_root or socket_path would mean the current directory: refused."""
    path = _write(tmp_path, f'[{section}]\n{key} = ""\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == f"{path}: {section}.{key} must not be empty"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"control.socket_group": '"a\\u0000b"'}, "control.socket_group must not contain"),
        (
            {"metrics.tls_cert_file": '"a\\u0000b"', "metrics.tls_key_file": '"k"'},
            "metrics.tls_cert_file must not contain",
        ),
        ({"control.socket_path": '"/tmp/a\\u0000b"'}, "control.socket_path must not contain"),
        ({"daemon.state_dir": '"/tmp/a\\u0000b"'}, "daemon.state_dir must not contain"),
        ({"control.socket_path": '""'}, "control.socket_path must not be empty"),
        ({"daemon.state_dir": '""'}, "daemon.state_dir must not be empty"),
        ({"metrics.listen": '"bad host!:80"'}, "metrics.listen host must be an IP address"),
    ],
)
def test_check_config_and_run_refuse_bad_paths_and_hosts_with_exit_2(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    """check-config and run both exit 2 with one line, before binding anything."""
    # Whatever the test leaves alone points into tmp_path, should the daemon start after all.
    values = {
        "daemon.state_dir": f'"{tmp_path / "state"}"',
        "control.socket_path": f'"{tmp_path / "wd.sock"}"',
        "metrics.listen": '"127.0.0.1:0"',
        **settings,
    }
    tables: dict[str, list[str]] = {}
    for name, literal in values.items():
        section, key = name.split(".")
        tables.setdefault(section, []).append(f"{key} = {literal}")
    path = _write(tmp_path, "".join(f"[{t}]\n" + "\n".join(v) + "\n" for t, v in tables.items()))
    _one_line_error(_gpu_watchdog("check-config", str(path)), EXIT_USAGE, message)
    started = _gpu_watchdog("run", "--config", str(path), "--simulate", "healthy", timeout=30)
    _one_line_error(started, EXIT_USAGE, message)


def test_a_nul_byte_in_a_tls_file_given_directly_is_a_config_error() -> None:
    """server_context, called with settings no loader checked, still answers a ConfigError."""
    settings = load_config(None, env={}).metrics
    bad = type(settings)(tls_cert_file="a\0b", tls_key_file="k")
    with pytest.raises(ConfigError, match=r"metrics\.tls_cert_file .*must not contain a NUL byte"):
        server_context(bad)


def test_a_fifo_as_tls_file_fails_the_check_rather_than_hanging(tmp_path: Path) -> None:
    """A FIFO named as the certificate is refused at once; opening it would wait for a writer."""
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    path = _write(tmp_path, f'[metrics]\ntls_cert_file = "{fifo}"\ntls_key_file = "{fifo}"\n')
    result = _gpu_watchdog("check-config", str(path), timeout=20)
    _one_line_error(result, EXIT_USAGE, f"metrics.tls_cert_file {fifo}: cannot read: not a regular")


def test_a_sighup_with_a_nul_byte_in_a_tls_file_is_rejected_in_one_line(tmp_path: Path) -> None:
    """A reload with a NUL byte in a TLS path logs config_reload_rejected, not a traceback."""
    path = _write(tmp_path, '[metrics]\ntls_cert_file = "a\\u0000b"\ntls_key_file = "k"\n')
    args = argparse.Namespace(config=path, listen=None, speed=None, simulate="healthy")
    with capture_logs() as logs:
        # A rejected reload returns before it touches the running parts: None stands in.
        _reload(args, Config(), None, None, None)  # type: ignore[arg-type]
    assert [entry["event"] for entry in logs] == ["config_reload_rejected"]
    assert "metrics.tls_cert_file must not contain a NUL byte" in logs[0]["reason"]


def test_a_socket_path_under_a_regular_file_is_the_one_line_control_socket_error(
    tmp_path: Path,
) -> None:
    """ENOTDIR on the socket's directory is the one-line "cannot serve the control socket"."""
    regular = tmp_path / "afile"
    regular.write_text("")
    socket_path = regular / "wd.sock"
    started = _gpu_watchdog(
        "run",
        "--simulate",
        "healthy",
        "--listen",
        "127.0.0.1:0",
        env={
            "GPU_WATCHDOG_SOCKET": str(socket_path),
            "GPU_WATCHDOG_DAEMON_STATE_DIR": str(tmp_path),
        },
    )
    _one_line_error(
        started,
        EXIT_FAILURE,
        f"cannot serve the control socket {socket_path}: Not a directory",
    )


def test_an_empty_config_path_argument_is_named_empty() -> None:
    """`check-config ""` and `--config ""` say the path is empty instead of reporting on the
    current directory."""
    _one_line_error(_gpu_watchdog("check-config", ""), EXIT_USAGE, "the config file path is empty")
    for command in ("run", "status", "record --out x.csv", "replay x.csv", "history"):
        started = _gpu_watchdog(*command.split(), "--config", "", timeout=20)
        _one_line_error(started, EXIT_USAGE, "--config: the config file path is empty")


def test_a_fifo_as_config_file_is_not_a_regular_file(tmp_path: Path) -> None:
    """check-config and run refuse a FIFO at once instead of waiting for a writer forever."""
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    message = f"{fifo}: not a regular file"
    _one_line_error(_gpu_watchdog("check-config", str(fifo), timeout=20), EXIT_USAGE, message)
    started = _gpu_watchdog("run", "--config", str(fifo), "--simulate", "healthy", timeout=20)
    _one_line_error(started, EXIT_USAGE, message)


@pytest.mark.parametrize(
    "listen",
    [
        "bad host!:80",
        "a..b:80",
        "-a.example:80",
        "a-.example:80",
        "a" * 64 + ":80",
        ".:80",
        "127.0.0.256:80",
        "bücher.example:80",
        "[::g]:80",
        "[localhost]:80",
        "localhost:\u0668\u0660",  # Arabic-Indic 80
        "localhost:+80",
        "localhost:" + "9" * 5000,
    ],
)
def test_a_listen_address_that_is_no_ip_nor_host_name_is_refused(listen: str) -> None:
    """metrics.listen and --listen refuse a malformed host or port, without resolving it."""
    with pytest.raises(ValueError, match=r"^(host|port|expected)") as caught:
        parse_listen(listen)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("localhost:80", "localhost"),
        ("gpu-node-07.cluster.example.:9723", "gpu-node-07.cluster.example."),
        ("0.0.0.0:9723", "0.0.0.0"),
        ("[::1]:0", "::1"),
        ("[fe80::1%eth0]:80", "fe80::1%eth0"),
        ("::1:80", "::1"),
        ("4gpu:80", "4gpu"),
    ],
)
def test_ip_addresses_and_host_names_are_accepted(listen: str, host: str) -> None:
    """Addresses and RFC 1123 names (a leading digit, a trailing dot) still parse."""
    assert parse_listen(listen)[0] == host


def test_the_listen_option_shares_the_check(tmp_path: Path) -> None:
    """run --listen with a malformed host exits 2 naming the option."""
    started = _gpu_watchdog(
        "run",
        "--simulate",
        "healthy",
        "--listen",
        "bad host!:80",
        env={
            "GPU_WATCHDOG_SOCKET": str(tmp_path / "wd.sock"),
            "GPU_WATCHDOG_DAEMON_STATE_DIR": str(tmp_path / "state"),
        },
    )
    _one_line_error(started, EXIT_USAGE, "--listen: host must be an IP address or a host name")


AWKWARD = [
    "a\nb",
    "tab\there",
    'quote " and backslash \\',
    "\b\f\r",
    "\x01\x1f\x7f",
    "\\u0041 is not A",
    "é ☃ 𝄞 \u0085 \u2028",
    "'''",
    '"""',
    "",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_toml_value_round_trips_awkward_strings(text: str) -> None:
    """Every string, control characters included, is written as TOML that reads back equal."""
    assert tomllib.loads(f"key = {toml_value(text)}\n")["key"] == text


@pytest.mark.parametrize("text", AWKWARD)
def test_show_round_trips_string_settings_with_control_characters(
    tmp_path: Path, text: str
) -> None:
    """check-config --show of a state_dir or socket group holding them loads back the same."""
    config = load_config(
        None,
        env={"GPU_WATCHDOG_DAEMON_STATE_DIR": f"/tmp/{text}"},
        overrides={("control", "socket_group"): text},
    )
    assert load_config(_write(tmp_path, render_toml(config)), env={}) == config


def test_check_config_show_of_a_newline_in_a_path_is_a_config_file(tmp_path: Path) -> None:
    """The audit's case end to end: `--show > out.toml`, then `check-config out.toml` is ok."""
    source = _write(tmp_path, '[daemon]\nstate_dir = "/tmp/a\\nb"\n')
    shown = _gpu_watchdog("check-config", "--show", str(source))
    assert shown.returncode == 0, shown.stderr
    copy = tmp_path / "out.toml"
    copy.write_text(shown.stdout)
    assert _gpu_watchdog("check-config", str(copy)).returncode == 0
    assert load_config(copy, env={}).daemon.state_dir == "/tmp/a\nb"


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("GPU_WATCHDOG_POLICY_MAX_RESTARTS", "1_000", "must be an integer, got '1_000'"),
        ("GPU_WATCHDOG_POLICY_MAX_RESTARTS", "\u0661\u0660", "must be an integer"),  # 10
        ("GPU_WATCHDOG_POLICY_MAX_RESTARTS", "0x10", "must be an integer"),
        ("GPU_WATCHDOG_POLICY_MAX_RESTARTS", "9" * 5000, "must be between"),
        ("GPU_WATCHDOG_POLICY_MAX_RESTARTS", "9" * 20, "must be between"),
        ("GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S", "1_0", "must be a number, got '1_0'"),
        ("GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S", "\u0661", "must be a number"),
        ("GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S", "0x1p0", "must be a number"),
        ("GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S", "infinity", "must be a number"),
    ],
)
def test_environment_numbers_are_ascii_in_range_and_echoed_short(
    variable: str, text: str, message: str
) -> None:
    """Only ASCII numbers are taken; an error repeats at most the first 40 characters."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={variable: text})
    assert message in str(caught.value)
    assert len(str(caught.value)) < 200
    if len(text) > 40:
        assert str(caught.value).endswith(repr(text[:40]) + "…")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7", 7), (" +3 ", 3), ("-0", 0), ("0" * 5000 + "7", 7), (str(2**63 - 1), 2**63 - 1)],
)
def test_environment_integers_in_ascii_digits_still_parse(text: str, expected: int) -> None:
    """Signs, surrounding blanks and leading zeros are fine; 2**63-1 is the largest integer."""
    config = load_config(None, env={"GPU_WATCHDOG_POLICY_MAX_RESTARTS": text})
    assert config.policy.max_restarts == expected
    with pytest.raises(ConfigError, match="must be between"):
        load_config(None, env={"GPU_WATCHDOG_POLICY_MAX_RESTARTS": str(2**63)})


@pytest.mark.parametrize("text", ["2.5", "2.", ".5", "25e-1", "+2.5E0"])
def test_environment_floats_in_the_usual_forms_still_parse(text: str) -> None:
    """Decimal and exponent forms are taken as before."""
    config = load_config(None, env={"GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S": text})
    assert config.sources.device_interval_s == float(text)


def test_an_integer_beyond_64_bits_in_the_file_is_a_range_error(tmp_path: Path) -> None:
    """TOML integers are 64-bit: a longer one is refused; thousands of digits are no crash."""
    path = _write(tmp_path, "[policy]\nmax_restarts = " + "9" * 30 + "\n")
    with pytest.raises(ConfigError, match=r"policy\.max_restarts must be between"):
        load_config(path, env={})
    path.write_text("[policy]\nmax_restarts = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="not valid TOML: an integer too long"):
        load_config(path, env={})


def test_undecodable_bytes_in_a_string_setting_are_refused() -> None:
    """A non-UTF-8 environment value cannot be shown as TOML or printed: refused by name."""
    with pytest.raises(ConfigError, match=r"daemon\.state_dir must be UTF-8 text"):
        load_config(None, env={"GPU_WATCHDOG_DAEMON_STATE_DIR": os.fsdecode(b"/tmp/\xff")})


def test_a_long_bad_value_in_the_file_is_echoed_short(tmp_path: Path) -> None:
    """A pasted megabyte in a choice setting does not come back as a megabyte of error."""
    path = _write(tmp_path, f'[daemon]\nlog_level = "{"x" * 100_000}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert len(str(caught.value)) < 200
