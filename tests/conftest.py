"""Shared fixtures and helpers: quiet TensorFlow, a compilation cache outside the repo, the
offline data, a fresh process with N fake devices, an experiment's test config, and a run's
metrics.jsonl read and compared."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax
import pytest

REPO = Path(__file__).resolve().parent.parent

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "fmnist-xla")),
)


@pytest.fixture(scope="session")
def offline_dir() -> Path:
    """The offline Fashion-MNIST copy ($FMNIST_DATA_DIR, else ../shared beside the repo)."""
    folder = Path(
        os.environ.get("FMNIST_DATA_DIR") or REPO.parent / "shared" / "data" / "fashion_mnist"
    )
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"offline Fashion-MNIST copy not found at {folder}")
    return folder


def run_on_devices(
    script: str, workdir: Path, devices: int, *args: str, timeout: float = 300
) -> None:
    """`python -c script workdir devices *args` in a fresh process with `devices` fake CPU
    devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    subprocess.run(
        [sys.executable, "-c", script, str(workdir), str(devices), *args],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=timeout,
    )  # fmt: skip


def train_command(*args: str, env=None, timeout: float = 300, cwd: Path = REPO):
    """`python -m fmnist_jax.main *args`, finished: its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_clear_line(result, words: str) -> None:
    """Exit status 2, no traceback, and a last stderr line `error: ...` containing `words`."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, last


CURVE_KEYS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")


def tiny_config(name: str = "mlp", **changes):
    """Experiment `name`'s `test` variant with `changes` set (e.g. num_replicas=2, grid=...)."""
    from fmnist_jax import config as config_lib

    cfg = config_lib.load_experiment(name, "test")
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def metrics_lines(workdir: Path, member: int | None = None) -> list[dict]:
    """The records of `workdir`/metrics.jsonl as written, line by line (a resumed run's
    repeated steps included); with `member`, that replica's (or population member's) only."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if member is None or r["replica"] == member]


def assert_curves_close(a: list[dict], b: list[dict], rel: float, keys=CURVE_KEYS, abs=None):
    """Two histories at the same steps whose `keys` (None: every field of `a`'s records)
    agree to `rel` relative and `abs` (default: `rel`) absolute."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in x if keys is None else keys:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=rel if abs is None else abs), (
                x["step"],
                key,
            )


TRAIN_ON_DEVICES = """
import json, sys
import jax
from fmnist_jax import config, train
assert jax.local_device_count() == int(sys.argv[2]), jax.devices()
cfg = config.load_experiment(sys.argv[3], "test")
for key, value in json.loads(sys.argv[4]).items():
    cfg[key] = value
train.train_and_evaluate(cfg, sys.argv[1])
"""


def train_on_devices(workdir: Path, devices: int, name: str = "mlp_dropout", **changes):
    """Experiment `name`'s `test` variant with `changes`, trained in a fresh process with
    `devices` fake CPU devices (dropout by default: its RNG must shard too); its
    `metrics_lines`."""
    run_on_devices(TRAIN_ON_DEVICES, workdir, devices, name, json.dumps(changes))
    return metrics_lines(workdir)
