"""summary.json's `versions`: the stack, TensorFlow's build, accelerator plugins."""

import importlib.metadata

from fmnist_jax import runtime, summary


def test_versions_name_tensorflow_tfds_and_the_installed_plugins(monkeypatch):
    found = summary.versions()
    assert found["jax"] == importlib.metadata.version("jax")
    assert found["tensorflow-datasets"] == importlib.metadata.version("tensorflow-datasets")
    tf = importlib.metadata.version("tensorflow-cpu")
    assert found["tensorflow"] == f"{tf} (tensorflow-cpu)"
    assert not any(name in found for name in runtime.ACCELERATOR_PLUGINS)  # none here
    monkeypatch.setattr(runtime, "installed_plugins", lambda: ["jax-cuda12-plugin"])
    monkeypatch.setattr(summary, "_version", lambda name: "0.10.2" if "cuda" in name else "1")
    assert summary.versions()["jax-cuda12-plugin"] == "0.10.2"
