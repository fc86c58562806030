"""``Watchdog.expect_growth``: the plan reaches the daemon at once, and ends when it should."""

from __future__ import annotations

import time

import pytest
from control_helpers import wait_for

from watchdog.client import attach

pytest_plugins = ["control_fixtures"]


@pytest.mark.parametrize("for_s", [0, -5.0, float("nan"), float("inf"), True, "600"])
def test_a_plan_needs_a_positive_duration(for_s, handles):
    wd = attach(connect=False)
    handles.append(wd)
    with pytest.raises(ValueError, match="for_s must be a positive number of seconds"):
        wd.expect_growth(for_s)


@pytest.mark.parametrize("up_to", [0, -1, 1.5, True, "1G"])
def test_a_plan_s_size_is_a_positive_integer(up_to, handles):
    wd = attach(connect=False)
    handles.append(wd)
    with pytest.raises(ValueError, match="up_to_bytes must be a positive integer"):
        wd.expect_growth(60, up_to_bytes=up_to)


def test_the_plan_is_sent_at_once_and_its_end_too(server_factory, handles):
    """A heartbeat of a minute does not delay the plan: it is sent the moment it is made."""
    server = server_factory()
    wd = attach(socket_path=server.socket_path, heartbeat_s=60.0)
    handles.append(wd)
    wait_for(lambda: server.clients() and server.clients()[0].report.step is not None)
    with wd.expect_growth(600, up_to_bytes=3 << 30):
        report = wait_for(
            lambda: (
                server.clients()[0].report.growth_planned_s is not None
                and server.clients()[0].report
            ),
            timeout_s=10,
        )
        assert 590 < report.growth_planned_s <= 600
        assert report.growth_up_to_bytes == 3 << 30
    wait_for(lambda: server.clients()[0].report.growth_planned_s is None, timeout_s=10)


def test_a_plan_runs_out_by_itself(handles):
    wd = attach(connect=False)
    handles.append(wd)
    wd.expect_growth(0.05)
    assert "growth_planned_s" in wd._report()
    time.sleep(0.1)
    assert "growth_planned_s" not in wd._report()


def test_ending_an_old_plan_leaves_a_newer_one(handles):
    wd = attach(connect=False)
    handles.append(wd)
    old = wd.expect_growth(60)
    wd.expect_growth(120)
    old.end()
    assert wd._report()["growth_planned_s"] > 60
    wd.end_growth()
    assert "growth_planned_s" not in wd._report()
