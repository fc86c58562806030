"""Configuration: defaults, file, environment and command line, and every kind of bad value."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO
from watchdog.commands.check_config import render_toml
from watchdog.config import ALIASES, Config, ConfigError, load_config, sections
from watchdog.errors import EXIT_USAGE


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    """With no file and no environment every setting has its documented default."""
    config = load_config(None, env={})
    assert config == Config()
    assert config.metrics.listen == "127.0.0.1:9723"
    assert config.sources.device_interval_s == 1.0
    assert config.sources.process_interval_s == 5.0


def test_file_then_environment_then_command_line(tmp_path: Path) -> None:
    """The environment overrides the file and the command line overrides both."""
    path = _write(tmp_path, '[sources]\ndevice_interval_s = 2\n[metrics]\nlisten = "127.0.0.1:1"\n')
    env = {
        "GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL_S": "0.5",
        "GPU_WATCHDOG_METRICS_LISTEN": "127.0.0.1:2",
    }
    config = load_config(path, env=env, overrides={("metrics", "listen"): "127.0.0.1:3"})
    assert config.sources.device_interval_s == 0.5
    assert config.metrics.listen == "127.0.0.1:3"
    assert load_config(path, env={}).sources.device_interval_s == 2.0


def test_integer_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    """``device_interval_s = 2`` is a float setting given as a TOML integer: accepted as 2.0."""
    config = load_config(_write(tmp_path, "[sources]\ndevice_interval_s = 2\n"), env={})
    assert isinstance(config.sources.device_interval_s, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[sources]\ndevice_intervl_s = 1\n", r"config.toml: unknown key sources.device_intervl_s"),
        ("[sorces]\n", r"config.toml: unknown table \[sorces\]"),
        ('[sources]\ndevice_interval_s = "fast"\n', r"sources.device_interval_s must be a number"),
        ("[sources]\ndevice_interval_s = 0.001\n", r"sources.device_interval_s must be >= 0.05"),
        ("[sources]\nmax_processes = 1.5\n", r"sources.max_processes must be an integer"),
        ("[sources]\ndevice_interval_s = nan\n", r"sources.device_interval_s must be a finite"),
        # Slower than GpuWatchdogStale's 5 minutes, a healthy source would page.
        ("[sources]\nhost_interval_s = 600\n", r"sources.host_interval_s must be <= 240"),
        ("[sources]\nprocess_interval_s = 241\n", r"sources.process_interval_s must be <= 240"),
        ("[sources]\nmax_processes = true\n", r"sources.max_processes must be an integer"),
        ('[daemon]\nlog_level = "loud"\n', r"daemon.log_level must be one of"),
        ('[metrics]\nlisten = "9723"\n', r"metrics.listen expected HOST:PORT"),
        ('[metrics]\nlisten = "h:99999"\n', r"metrics.listen port must be 0-65535"),
        ("sources = 3\n", r"sources must be a table"),
        ("[sources\n", r"not valid TOML"),
    ],
)
def test_bad_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """Each bad value is rejected with one line that names the file and the key."""
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(_write(tmp_path, text), env={})
    assert "\n" not in str(caught.value)
    assert str(tmp_path / "config.toml") in str(caught.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """An explicitly named file that does not exist is an error, not silently the defaults."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_environment_value_names_the_variable() -> None:
    """A malformed override names the variable it came from."""
    with pytest.raises(ConfigError, match="GPU_WATCHDOG_SOURCES_MAX_PROCESSES"):
        load_config(None, env={"GPU_WATCHDOG_SOURCES_MAX_PROCESSES": "many"})


def test_unknown_settings_variable_is_rejected() -> None:
    """A misspelt GPU_WATCHDOG_* variable is an error instead of being silently ignored."""
    with pytest.raises(ConfigError, match="GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL"):
        load_config(None, env={"GPU_WATCHDOG_SOURCES_DEVICE_INTERVAL": "1"})


def test_the_client_library_s_variables_are_no_settings() -> None:
    """Every GPU_WATCHDOG_* variable the client library reads leaves the daemon's config alone.

    GPU_WATCHDOG_SOCKET is the one both read (an alias of control.socket_path).
    """
    client = "".join(path.read_text() for path in (REPO / "watchdog" / "client").glob("*.py"))
    # Every name the library spells out: it reads some through helpers (_directory).
    variables = set(re.findall(r'"(GPU_WATCHDOG_[A-Z_]+)"', client)) - set(ALIASES)
    assert {"GPU_WATCHDOG_CHECKPOINT_DIR", "GPU_WATCHDOG_SNAPSHOT_DIR"} <= variables
    assert load_config(None, env=dict.fromkeys(variables, "x")) == load_config(None, env={})


def test_an_alias_and_its_long_name_must_agree() -> None:
    """GPU_WATCHDOG_SOCKET and GPU_WATCHDOG_CONTROL_SOCKET_PATH: the same value, or an error."""
    same = {"GPU_WATCHDOG_SOCKET": "/tmp/a.sock", "GPU_WATCHDOG_CONTROL_SOCKET_PATH": "/tmp/a.sock"}
    assert load_config(None, env=same).control.socket_path == "/tmp/a.sock"
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={**same, "GPU_WATCHDOG_SOCKET": "/tmp/b.sock"})
    assert str(caught.value) == (
        "environment: GPU_WATCHDOG_CONTROL_SOCKET_PATH and GPU_WATCHDOG_SOCKET both set "
        "control.socket_path, to different values; set one"
    )


def test_boolean_environment_values() -> None:
    """Booleans from the environment accept true/false, yes/no, 1/0, on/off."""
    assert load_config(None, env={"GPU_WATCHDOG_SIMULATION_LOOP": "yes"}).simulation.loop is True
    with pytest.raises(ConfigError, match="must be a boolean"):
        load_config(None, env={"GPU_WATCHDOG_SIMULATION_LOOP": "maybe"})


def _all_keys() -> list[str]:
    return [
        f"{name}.{item.name}"
        for name, cls in sections().items()
        for item in dataclasses.fields(cls)
    ]


def test_every_key_is_documented_and_in_the_example() -> None:
    """docs/configuration.md and deploy/config.example.toml mention every setting."""
    docs = (REPO / "docs" / "configuration.md").read_text()
    example = (REPO / "deploy" / "config.example.toml").read_text()
    for key in _all_keys():
        section, name = key.split(".")
        assert f"`{key}`" in docs, f"{key} missing from docs/configuration.md"
        assert f"[{section}]" in example, f"[{section}] missing from the example"
        in_example = f"\n{name} = " in example or f"[[{key}]]" in example or f"({key})" in example
        assert in_example, f"{key} missing from the example"


def test_generated_docs_are_current() -> None:
    """The example config and the reference tables match the declarations (regenerate if not)."""
    from watchdog.config_docs import render_example, splice_reference

    hint = "out of date: run python scripts/gen_config_docs.py"
    example = (REPO / "deploy" / "config.example.toml").read_text()
    assert example == render_example(), f"deploy/config.example.toml {hint}"
    docs = (REPO / "docs" / "configuration.md").read_text()
    assert docs == splice_reference(docs), f"docs/configuration.md {hint}"


def test_the_reference_gives_bounds_as_enforced() -> None:
    """A limit reads as the number the check compares with, not a rounded exponent."""
    from watchdog.config_docs import render_reference

    reference = render_reference()
    assert "`control.max_message_bytes` | `1048576` | >= 4096; <= 16777216 |" in reference
    assert "e+" not in reference


def test_example_config_is_valid() -> None:
    """The shipped example loads without error and equals the defaults."""
    assert load_config(REPO / "deploy" / "config.example.toml", env={}) == Config()


def test_check_config_command(tmp_path: Path) -> None:
    """check-config prints ok for a good file, and one line with exit 2 for a bad one."""
    good = _write(tmp_path, "[sources]\ndevice_interval_s = 2\n")
    result = subprocess.run(
        [PYTHON, "-m", "watchdog", "check-config", str(good)], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"{good}: ok"
    good.write_text("[sources]\ndevice_interval_s = -1\n")
    result = subprocess.run(
        [PYTHON, "-m", "watchdog", "check-config", str(good)], capture_output=True, text=True
    )
    assert result.returncode == EXIT_USAGE
    assert result.stderr.count("\n") == 1
    assert "sources.device_interval_s must be >= 0.05" in result.stderr


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[policy]\nladder = []\n"
        '[[policy.schedule]]\naction = "empty_cache"\ncron = "0 2 * * *"\n'
        '[[metrics.basic_auth]]\nuser = "prometheus"\n'
        'password_hash = "$2b$04$KpzqEDyA0ChNB1ItE2/l3uPNAzMwL5bYU1ICzmhu1r/Ch3qV0R4fa"\n',
    ],
)
def test_show_prints_toml_that_loads_back_the_same(tmp_path: Path, text: str) -> None:
    """check-config --show is a config file: loaded again, it gives the same settings."""
    config = load_config(_write(tmp_path, text), env={})
    shown = tmp_path / "shown.toml"
    shown.write_text(render_toml(config))
    assert load_config(shown, env={}) == config


def _check_config(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    return subprocess.run(
        [PYTHON, "-m", "watchdog", "check-config", *args],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
    )


def test_check_config_show_redirected_is_a_config_file(tmp_path: Path) -> None:
    """`check-config --show > file` writes the TOML alone; the verdict goes to stderr."""
    source = _write(tmp_path, "[sources]\ndevice_interval_s = 7\n")
    shown = _check_config("--show", str(source))
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.strip() == f"{source}: ok"
    copy = tmp_path / "copy.toml"
    copy.write_text(shown.stdout)
    assert load_config(copy, env={}) == load_config(source, env={})


def test_check_config_names_the_file_gpu_watchdog_config_gave(tmp_path: Path) -> None:
    """The file read through GPU_WATCHDOG_CONFIG is the one named, not "defaults"."""
    source = _write(tmp_path, "[sources]\ndevice_interval_s = 7\n")
    result = _check_config(env={"GPU_WATCHDOG_CONFIG": str(source)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{source}: ok"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"GPU_WATCHDOG_CONTROL_SOCKET_GROUP": "no-such-group-here"},
            "control.socket_group: no such group 'no-such-group-here' on this machine",
        ),
        (
            {"GPU_WATCHDOG_SOCKET": "/tmp/" + "s" * 120 + ".sock"},
            "control.socket_path: 130 bytes, a Unix socket's path takes at most 103",
        ),
    ],
)
def test_socket_settings_this_machine_cannot_serve_fail_the_check_and_the_start(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    """check-config and run both refuse them with exit 2 (run used to exit 1: systemd retried)."""
    checked = _check_config(env=settings)
    assert checked.returncode == EXIT_USAGE
    assert checked.stderr.strip().endswith(message), checked.stderr
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    started = subprocess.run(
        [PYTHON, "-m", "watchdog", "run", "--simulate", "healthy", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, "GPU_WATCHDOG_DAEMON_STATE_DIR": str(tmp_path / "state"), **settings},
    )
    assert started.returncode == EXIT_USAGE
    assert started.stderr.strip().endswith(message), started.stderr


def test_an_empty_gpu_watchdog_config_is_named_not_read_as_the_current_directory() -> None:
    """An empty variable (a shell's unset one) is one line naming it, not "." as the file."""
    result = _check_config(env={"GPU_WATCHDOG_CONFIG": ""})
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().endswith(
        "environment GPU_WATCHDOG_CONFIG is empty: name a file, or unset it"
    ), result.stderr
