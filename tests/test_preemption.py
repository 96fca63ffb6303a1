"""Stopping on SIGTERM / SIGINT: the step in flight finishes, a checkpoint is saved at the step
reached, the process ends with one line, and the same command resumes to the same curves."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fmnist_jax import preemption
from tests.conftest import REPO, metrics_lines

# Long enough that the signal always lands mid-run: ~250 steps/s here, so 480 steps leave the
# signal ~1.7 s to spare (at 240 a quiet machine finished in the 0.4 s before it).
ARGS = [
    "--config", "mlp_dropout:test", "--config.num_train_steps=480",
    "--config.eval_every_steps=20", "--config.checkpoint_every_steps=40",
]  # fmt: skip


def _run(workdir, **kwargs):
    cmd = [sys.executable, "-m", "fmnist_jax.main", *ARGS, f"--workdir={workdir}"]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_signals_are_noted_and_the_old_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopRequest() as stop:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: noted, no KeyboardInterrupt
        assert stop.requested(2) and stop.signum == signal.SIGINT and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_saves_the_step_reached_and_the_rerun_equals_a_straight_run(tmp_path):
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    proc = _run(stopped)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (stopped / "checkpoints" / "40").is_dir():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before the signal"
    time.sleep(0.1)  # somewhere between two checkpoints
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped: SIGTERM at step ") and last.endswith(
        "the same command resumes from it"
    ), last
    step = int(last.split("at step ")[1].split("/")[0])
    assert (stopped / "checkpoints" / str(step)).is_dir()
    assert not (stopped / "summary.json").exists()
    rerun = _run(stopped)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-2000:]
    assert json.loads((stopped / "summary.json").read_text())["resumed_from_step"] == step
    assert _run(straight).wait(timeout=300) == 0
    assert metrics_lines(stopped) == metrics_lines(straight)
