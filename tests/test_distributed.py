"""Several processes, one run: two processes on 127.0.0.1 train as one process with two devices,
write one run directory, resume together, and a missing peer ends in one line. Loopback only;
every process bounded by a timeout."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import fmnist_jax as fj
from fmnist_jax import distributed
from fmnist_jax.errors import ConfigError
from tests.conftest import REPO, assert_curves_close, metrics_lines

# batch 32, eval batch 64: divisible by 2; host batches in both (several processes feed theirs)
TRAIN = ["--config", "mlp_dropout:test", "--config.steps_per_chunk=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}


def _train(workdir, *args, devices=1):
    cmd = [sys.executable, "-m", "fmnist_jax.main", *TRAIN, f"--workdir={workdir}", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _two_processes(workdir, *args, timeout=240):
    address = f"127.0.0.1:{_free_port()}"
    flags = [f"--coordinator_address={address}", "--num_processes=2", *args]
    flags += ["--initialization_timeout=60", "--heartbeat_timeout_seconds=10"]
    procs = [_train(workdir, *flags, f"--process_id={i}") for i in (0, 1)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [err for _, err in outputs]


def _one_process_two_devices(workdir, *args):
    proc = _train(workdir, *args, devices=2)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 16 steps by two processes (one device each) and by one process (two devices),
    then both resumed to 24 steps."""
    root = tmp_path_factory.mktemp("distributed")
    two, one = root / "two", root / "one"
    start = time.perf_counter()
    logs = _two_processes(two, "--config.num_train_steps=16")
    _one_process_two_devices(one, "--config.num_train_steps=16")
    first = (metrics_lines(two), metrics_lines(one), json.loads((two / "summary.json").read_text()))
    _two_processes(two)  # resumes to the config's 24 steps
    _one_process_two_devices(one)
    print(f"two-process runs: {time.perf_counter() - start:.1f} s")
    return {"two": two, "one": one, "first": first, "logs": logs}


def test_two_processes_give_the_metrics_of_one_process_with_two_devices(runs):
    two, one, _ = runs["first"]
    assert [r["step"] for r in two] == [8, 16]
    assert_curves_close(two, one, rel=1e-6, abs=1e-7)


def test_only_process_0_writes_and_logs(runs):
    summary = runs["first"][2]
    assert summary["process_count"] == 2 and summary["device_count"] == 2
    assert summary["local_device_count"] == 1
    for sub in ("train", "test"):
        assert len(list((runs["two"] / sub).glob("events.out.tfevents.*"))) == 1
    progress = [err.count("step 8/16 (epoch ") for err in runs["logs"]]
    assert progress == [1, 0], progress


def test_a_resumed_two_process_run_continues_the_same_curves(runs):
    history = metrics_lines(runs["two"])
    assert [r["step"] for r in history] == [8, 16, 24]
    assert history[:2] == runs["first"][0]
    assert json.loads((runs["two"] / "summary.json").read_text())["resumed_from_step"] == 16
    assert_curves_close(history, metrics_lines(runs["one"]), rel=1e-6, abs=1e-7)


def test_one_process_restores_the_two_process_checkpoint(runs):
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    two, one = fj.restore(runs["two"]), fj.restore(runs["one"])
    np.testing.assert_allclose(fj.predict(two, images), fj.predict(one, images), atol=1e-5)


def test_two_processes_train_replicas_as_one_process_does(tmp_path):
    """Replicas with several processes: every process feeds its rows of every replica's batch
    (the mesh's replica axis is 1 then); the curves are one process's with two devices."""
    args = ["--config.num_train_steps=16", "--config.num_replicas=2"]
    _two_processes(tmp_path / "two", *args)
    _one_process_two_devices(tmp_path / "one", *args)
    two, one = metrics_lines(tmp_path / "two"), metrics_lines(tmp_path / "one")
    assert [(r["step"], r["replica"]) for r in two] == [(8, 0), (8, 1), (16, 0), (16, 1)]
    assert_curves_close(two, one, rel=1e-6, abs=1e-7)
    assert two[-1]["test_loss"] != two[-2]["test_loss"]  # the replicas differ


def test_a_peer_that_never_starts_ends_in_one_line_within_the_timeout(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    proc = _train(
        tmp_path / "run", f"--coordinator_address={address}", "--num_processes=2",
        "--process_id=0", "--initialization_timeout=8",
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == distributed.EXIT_PEER_FAILURE, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == (
        f"error: distributed start: not all 2 processes joined {address} within 8 s (is every"
        " process started, with the same --coordinator_address and --num_processes?)"
    )
    assert elapsed < 30, elapsed
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_peer_that_dies_ends_the_other_in_one_line_and_keeps_the_checkpoints(tmp_path):
    workdir, address = tmp_path / "run", f"127.0.0.1:{_free_port()}"
    flags = [
        f"--coordinator_address={address}", "--num_processes=2", "--initialization_timeout=60",
        "--heartbeat_timeout_seconds=10", "--config.num_train_steps=100000",
        "--config.eval_every_steps=20", "--config.checkpoint_every_steps=40",
    ]  # fmt: skip
    procs = [_train(workdir, *flags, f"--process_id={i}") for i in (0, 1)]
    deadline = time.time() + 180
    while time.time() < deadline and not (workdir / "checkpoints" / "40").is_dir():
        time.sleep(0.1)
    assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
    procs[1].kill()
    killed = time.perf_counter()
    _, err = procs[0].communicate(timeout=60)
    elapsed = time.perf_counter() - killed
    procs[1].communicate()
    assert procs[0].returncode == distributed.EXIT_PEER_FAILURE, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: distributed run: process 0 lost another process (")
    assert last.endswith(
        f"{workdir} keeps its last finished checkpoint: start every process again to resume"
    )
    assert elapsed < 15, elapsed  # within the 10 s heartbeat timeout (plus start-up slack)
    from fmnist_jax import checkpoints

    assert 40 in checkpoints.finished_steps(workdir)
    print(f"dead peer: {last!r} after {elapsed:.1f} s")


@pytest.mark.parametrize("failure", ["workdir locked", "no data"])
def test_process_0_failing_before_the_loop_ends_the_other_at_once(tmp_path, failure):
    """Process 0 is refused the workdir's lock (another run holds it) or finds no data where
    the config says: process 1 ends within seconds with process 0's line and exit status,
    instead of waiting at a barrier for the heartbeat timeout."""
    from fmnist_jax import rundir

    workdir, address = tmp_path / "run", f"127.0.0.1:{_free_port()}"
    flags = [
        f"--coordinator_address={address}", "--num_processes=2", "--initialization_timeout=60",
        "--heartbeat_timeout_seconds=60",
    ]  # fmt: skip
    if failure == "no data":
        flags += ["--config.dataset=fashion_mnist", f"--config.data_dir={tmp_path / 'none'}"]
    workdir.mkdir()
    with contextlib.ExitStack() as held:
        if failure == "workdir locked":
            held.enter_context(rundir.writer_lock(workdir))
        procs = [_train(workdir, *flags, f"--process_id={i}") for i in (0, 1)]
        outputs = [procs[0].communicate(timeout=120)]
        first = time.perf_counter()
        outputs.append(procs[1].communicate(timeout=120))
        after = time.perf_counter() - first
    lines = [err.strip().splitlines()[-1] for _, err in outputs]
    assert procs[0].returncode == 2, outputs[0][1][-2000:]
    words = "is being trained by process" if failure == "workdir locked" else "data folder not"
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]
    assert lines[1] == lines[0], outputs[1][1][-2000:]
    assert procs[1].returncode == 2
    assert after < 5, after  # not the 60 s heartbeat timeout


def test_a_peers_error_arrives_as_the_same_type_and_message():
    import errno

    from fmnist_jax import errors

    for sent in (
        errors.RunError("runs/x is being trained by process 7; wait"),
        errors.DataError("runs/none: data folder not found"),
        OSError(errno.ENOSPC, "No space left on device"),
        ValueError("a" * 5000),  # cut to what fits
    ):
        got = distributed._decode(distributed._encode(sent))
        assert type(got) is type(sent)
        assert str(sent).startswith(str(got)) and len(str(got)) >= min(len(str(sent)), 1000)
    custom = type("CustomError", (Exception,), {})("its message")
    got = distributed._decode(distributed._encode(custom))
    assert type(got) is RuntimeError and str(got) == "CustomError: its message"
    assert not distributed._encode(None).any()


@pytest.mark.parametrize(
    "launch, words",
    [
        (distributed.Launch(num_processes=2), "needs --coordinator_address=HOST:PORT"),
        (
            distributed.Launch("127.0.0.1:1", num_processes=2, process_id=2),
            "process_id=2 must lie in 0..1",
        ),
        (
            distributed.Launch("127.0.0.1:1", 2, 0, initialization_timeout=0),
            "initialization_timeout must be a positive",
        ),
    ],
)
def test_an_incomplete_launch_is_refused(launch, words):
    with pytest.raises(ConfigError, match=words):
        launch.check()
    assert not distributed.Launch().multi_process and distributed.Launch(auto=True).multi_process
