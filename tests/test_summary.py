"""summary.json's `versions`: the stack, TensorFlow's build, accelerator plugins."""

import importlib.metadata
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from fmnist_jax import runtime, summary
from tests.conftest import REPO

# Where pyproject.toml installs TensorFlow, and which of its distributions.
PLATFORMS = {
    ("linux", "x86_64"): "tensorflow-cpu",
    ("win32", "AMD64"): "tensorflow-cpu",
    ("linux", "aarch64"): "tensorflow",
    ("darwin", "arm64"): "tensorflow",
}


def tensorflow_for(environment: dict) -> list[str]:
    """The TensorFlow distributions pyproject.toml's dependencies select in `environment`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = []
    for line in project["dependencies"]:
        req = Requirement(line)
        applies = req.marker is None or req.marker.evaluate(environment)
        if req.name in ("tensorflow", "tensorflow-cpu") and applies:
            found.append(req.name)
    return found


@pytest.mark.parametrize("platform", PLATFORMS, ids="-".join)
def test_pyproject_installs_one_tensorflow_on_each_platform(platform):
    sys_platform, machine = platform
    environment = {**default_environment(), "sys_platform": sys_platform}
    environment["platform_machine"] = machine
    assert tensorflow_for(environment) == [PLATFORMS[platform]]


def test_versions_name_tensorflow_tfds_and_the_installed_plugins(monkeypatch):
    found = summary.versions()
    assert found["jax"] == importlib.metadata.version("jax")
    assert found["tensorflow-datasets"] == importlib.metadata.version("tensorflow-datasets")
    here = tensorflow_for(default_environment())
    if not here:
        pytest.skip("pyproject.toml installs no TensorFlow on this platform")
    (distribution,) = here  # the one this platform's markers select: tensorflow-cpu or tensorflow
    tf = importlib.metadata.version(distribution)
    assert found["tensorflow"] == f"{tf} ({distribution})"
    assert not any(name in found for name in runtime.ACCELERATOR_PLUGINS)  # none here
    monkeypatch.setattr(runtime, "installed_plugins", lambda: ["jax-cuda12-plugin"])
    monkeypatch.setattr(summary, "_version", lambda name: "0.10.2" if "cuda" in name else "1")
    assert summary.versions()["jax-cuda12-plugin"] == "0.10.2"


def test_best_accuracy_is_read_from_the_history_whatever_the_model():
    records = [
        {"step": s, "test_loss": l, "train_loss": 0.5, "test_accuracy": a, "train_accuracy": 0.9}
        for s, l, a in ((10, 0.4, 0.80), (20, 0.3, 0.85), (30, 0.35, 0.85))
    ]
    results = summary._results(records)
    assert (results["best_test_accuracy"], results["best_test_accuracy_step"]) == (0.85, 20)
    assert (results["min_test_loss"], results["min_test_loss_step"]) == (0.3, 20)
    no_accuracy = [{"step": 10, "test_loss": 0.4, "train_loss": 0.5}]  # a regression's records
    results = summary._results(no_accuracy)
    assert results["best_test_accuracy"] is None and results["best_test_accuracy_step"] is None
    assert results["final_test_accuracy"] is None
