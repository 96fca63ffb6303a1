"""Shared fixtures: quiet TensorFlow, a compilation cache outside the repo, the offline data,
and a fresh process with N fake devices."""

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


def run_on_devices(script: str, workdir: Path, devices: int, timeout: float = 300) -> None:
    """`python -c script workdir devices` in a fresh process with `devices` fake CPU devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    subprocess.run(
        [sys.executable, "-c", script, str(workdir), str(devices)],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=timeout,
    )  # fmt: skip
