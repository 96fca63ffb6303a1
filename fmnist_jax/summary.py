"""summary.json: the numbers a reader wants from a finished run, from its evaluation history
and where it ran (backend, devices, processes, data, versions, process settings)."""

import importlib.metadata

import jax

from fmnist_jax import data as data_lib
from fmnist_jax import runtime

STACK = (
    "jax", "jaxlib", "flax", "optax", "clu", "orbax-checkpoint", "ml-collections", "numpy",
    "tensorflow-datasets", "tensorboard",
)  # fmt: skip
# TensorFlow installs under one of these names (tensorflow-cpu on x86-64 Linux).
TENSORFLOW = ("tensorflow-cpu", "tensorflow", "tensorflow-macos")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Installed versions of the stack, TensorFlow (whichever build is there) and any jax
    accelerator plugin (jax-cuda*, libtpu): what decides how a run behaves on a machine."""
    found = {name: _version(name) or "not installed" for name in STACK}
    tensorflow = [(name, v) for name in TENSORFLOW if (v := _version(name))]
    found["tensorflow"] = (
        f"{tensorflow[0][1]} ({tensorflow[0][0]})" if tensorflow else "not installed"
    )
    for plugin in runtime.installed_plugins():
        found[plugin] = _version(plugin)
    return found


def _results(config, history: list[dict]) -> dict:
    last = history[-1]
    min_loss = min(history, key=lambda r: r["test_loss"])
    results = {
        "final_test_loss": last["test_loss"],
        "min_test_loss": min_loss["test_loss"],
        "min_test_loss_step": min_loss["step"],
        "final_train_loss": last["train_loss"],
        "final_test_accuracy": last.get("test_accuracy"),
        "best_test_accuracy": None,
        "best_test_accuracy_step": None,
        "final_train_accuracy": last.get("train_accuracy"),
    }
    if config.model != "linear_regression":
        best = max(history, key=lambda r: r["test_accuracy"])
        results["best_test_accuracy"] = best["test_accuracy"]
        results["best_test_accuracy_step"] = best["step"]
    return results


def summarize(config, history: list[dict], dataset: data_lib.Dataset, timing: dict) -> dict:
    """The run's summary: identity, results, `timing`, and where and with what it ran."""
    summary = {
        "name": config.name,
        "model": config.model,
        "dropout_rate": config.dropout_rate,
        "steps": history[-1]["step"],
        "steps_per_epoch": data_lib.steps_per_epoch(dataset.train, config.batch_size),
        **_results(config, history),
        **timing,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "data": dataset.describe(),
        "versions": versions(),
        "runtime": runtime.describe(),
    }
    return summary
