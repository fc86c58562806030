"""The integrations check their arguments when built, before anything attaches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import watchdog
from watchdog.client import handle

torch = pytest.importorskip("torch")


def live_handles() -> list[handle.Watchdog]:
    """The handles of this process that are still attached."""
    return [h for h in list(handle._active) if not h.closed]


@pytest.fixture
def unattached():
    """No handle is attached before the test, and the test must leave none."""
    for old in live_handles():
        old.close()
    yield
    left = live_handles()
    for old in left:
        old.close()
    assert not left, "an argument error left a handle attached"


@pytest.fixture
def hf_callback():
    """The transformers callback class (skipped without transformers)."""
    pytest.importorskip("transformers")
    from watchdog.integrations.huggingface import WatchdogTrainerCallback

    return WatchdogTrainerCallback


@pytest.fixture
def pl_callback():
    """The Lightning callback class (skipped without Lightning)."""
    pytest.importorskip("lightning.pytorch")
    from watchdog.integrations.lightning import WatchdogCallback

    return WatchdogCallback


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"checkpoint_dir": "/x"}, TypeError, r"checkpoint_dir= .*output_dir"),
        ({"checkpoint": print}, TypeError, r"checkpoint= is set by the callback"),
        ({"rank": 0}, TypeError, r"rank= is set by the callback.*TrainingArguments"),
        ({"model": None}, TypeError, r"model= is set by the callback"),
        ({"keep_checkpoints": 3}, TypeError, r"save_total_limit"),
        ({"sokcet_path": "/x"}, TypeError, r"unknown option sokcet_path=.*socket_path="),
        ({"heartbeat_s": -1}, ValueError, r"heartbeat_s must be"),
        ({"restart_wait_s": "5"}, TypeError, r"restart_wait_s must be a number"),
        ({"wd": "notahandle"}, TypeError, r"wd must be a handle"),
    ],
)
def test_huggingface_callback_checks_at_construction(
    hf_callback, unattached, options, error, match
):
    """WatchdogTrainerCallback names a bad argument when built, not when training starts."""
    with pytest.raises(error, match=match):
        hf_callback(**options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"keep": 2.5}, TypeError, r"keep must be an integer"),
        ({"keep": "2"}, TypeError, r"keep must be an integer"),
        ({"keep": 0}, ValueError, r"keep must be at least 1"),
        ({"checkpoint_dir": None}, TypeError, r"checkpoint_dir must be a path"),
        ({"checkpoint": print}, TypeError, r"checkpoint= is set by the callback"),
        ({"rank": 0}, TypeError, r"rank= is set by the callback.*Trainer"),
        ({"model": None}, TypeError, r"model= is set by the callback"),
        ({"keep_checkpoints": 3}, TypeError, r"WatchdogCallback\(keep=\.\.\.\)"),
        ({"sokcet_path": "/x"}, TypeError, r"unknown option sokcet_path=.*socket_path="),
        ({"restart_exit_code": 0}, ValueError, r"restart_exit_code must be from 1 to 255"),
        ({"restart_wait_s": float("nan")}, ValueError, r"restart_wait_s must be a finite"),
        ({"wd": "notahandle"}, TypeError, r"wd must be a handle"),
    ],
)
def test_lightning_callback_checks_at_construction(pl_callback, unattached, options, error, match):
    """WatchdogCallback names a bad argument when built, not at trainer.fit."""
    with pytest.raises(error, match=match):
        pl_callback(**options)


def test_callbacks_refuse_options_along_with_a_handle(hf_callback, pl_callback, unattached):
    """Attach options beside wd= would be ignored, so both callbacks refuse them."""
    wd = watchdog.attach(connect=False)
    try:
        for callback in (hf_callback, pl_callback):
            with pytest.raises(ValueError, match=r"job= would be ignored with wd="):
                callback(wd=wd, job="other")
    finally:
        wd.close()


def test_callbacks_accept_good_options(hf_callback, pl_callback, unattached, tmp_path):
    """Valid options pass, and building a callback attaches nothing."""
    options = {"job": "j", "socket_path": str(tmp_path / "s"), "restart_wait_s": 1}
    hf_callback(heartbeat_s=0.5, **options)
    pl_callback(checkpoint_dir=tmp_path, keep=1, restart_exit_code=75, **options)


def test_watch_optimizer_swapped_arguments_attach_nothing(unattached):
    """watch_optimizer(model, optimizer) is a TypeError naming the order, with no handle left."""
    from watchdog.integrations.pytorch import watch_optimizer

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"optimizer must be .*got Linear.*comes first"):
        watch_optimizer(model, optimizer, connect=False)


def test_watch_optimizer_refuses_options_with_a_handle(unattached):
    """Options or a model beside wd= would be ignored: refused, and no hook is added."""
    from watchdog.integrations.pytorch import watch_optimizer

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wd = watchdog.attach(model, optimizer, connect=False)
    try:
        with pytest.raises(ValueError, match=r"checkpoint_dir=, keep_checkpoints= would be"):
            watch_optimizer(optimizer, wd=wd, checkpoint_dir="/elsewhere", keep_checkpoints=0)
        with pytest.raises(ValueError, match=r"model= would be ignored"):
            watch_optimizer(optimizer, model, wd=wd)
        with pytest.raises(TypeError, match=r"wd must be a handle"):
            watch_optimizer(optimizer, wd="notahandle")
        optimizer.step()
        assert wd.step_count == 0
    finally:
        wd.close()


def test_watch_optimizer_checks_options_before_attaching(unattached):
    """A misspelt attach option is named before anything attaches."""
    from watchdog.integrations.pytorch import watch_optimizer

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"unknown option chekpoint_dir=.*checkpoint_dir="):
        watch_optimizer(optimizer, chekpoint_dir="/x", connect=False)


def test_argument_checks_import_no_framework():
    """The shared checks and the PyTorch helper import neither torch nor a framework."""
    code = (
        "import sys, watchdog.integrations._options, watchdog.integrations.pytorch\n"
        "loaded = {'torch', 'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=repo)
