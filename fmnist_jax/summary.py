"""summary.json: a run's results, their statistics and where it ran (docs/training.md)."""

import jax

from fmnist_jax import data as data_lib
from fmnist_jax import population, replicas, runtime
from fmnist_jax.runtime import installed_version as _version  # "" when not installed

STACK = (
    "jax", "jaxlib", "flax", "optax", "clu", "orbax-checkpoint", "ml-collections", "numpy",
    "tensorflow-datasets", "tensorboard",
)  # fmt: skip
# TensorFlow installs under one of these names (tensorflow-cpu on x86-64 Linux).
TENSORFLOW = ("tensorflow-cpu", "tensorflow", "tensorflow-macos")


def versions() -> dict[str, str]:
    """Installed versions of the stack, TensorFlow (whichever build) and any jax plugin."""
    found = {name: _version(name) or "not installed" for name in STACK}
    tensorflow = [(name, v) for name in TENSORFLOW if (v := _version(name))]
    found["tensorflow"] = (
        f"{tensorflow[0][1]} ({tensorflow[0][0]})" if tensorflow else "not installed"
    )
    for plugin in runtime.installed_plugins():
        found[plugin] = _version(plugin)
    return found


RESULT_FIELDS = (
    "final_test_loss", "min_test_loss", "min_test_loss_step", "final_train_loss",
    "final_test_accuracy", "best_test_accuracy", "best_test_accuracy_step",
    "final_train_accuracy",
)  # fmt: skip


def _results(history: list[dict]) -> dict:
    last = history[-1]
    min_loss = min(history, key=lambda r: r["test_loss"])
    scored = [r for r in history if r.get("test_accuracy") is not None]
    best = max(scored, key=lambda r: r["test_accuracy"]) if scored else {}
    return {
        "final_test_loss": last["test_loss"],
        "min_test_loss": min_loss["test_loss"],
        "min_test_loss_step": min_loss["step"],
        "final_train_loss": last["train_loss"],
        "final_test_accuracy": last.get("test_accuracy"),
        "best_test_accuracy": best.get("test_accuracy"),
        "best_test_accuracy_step": best.get("step"),
        "final_train_accuracy": last.get("train_accuracy"),
    }


def replica_results(config, history: list[dict]) -> list[dict]:
    """Each member's results, with its index, seed and (in a population) point and values."""
    identities = population.members(config)
    pop = population.is_population(config)
    return [
        {
            "replica": m,
            **({k: v for k, v in who.items() if k != "replica"} if pop else {"seed": who["seed"]}),
            **_results([r for r in history if r["replica"] == m]),
        }
        for m, who in enumerate(identities)
    ]


def point_results(config, results: list[dict]) -> list[dict]:
    """Each grid point's values, its members' indices and each field's statistics over them."""
    out = []
    for g, point in enumerate(population.points(config)):
        mine = [r for r in results if r["point"] == g]
        out.append(
            {**point, "members": [r["replica"] for r in mine], "statistics": field_statistics(mine)}
        )
    return out


def field_statistics(results: list[dict]) -> dict:
    """Each result field's statistics over the replicas (None for a field the model lacks)."""
    return {f: replicas.statistics([r[f] for r in results]) for f in RESULT_FIELDS}


def summarize(config, history: list[dict], dataset: data_lib.Dataset, timing: dict) -> dict:
    """The run's identity, results, their statistics, `timing`, and where it ran."""
    results = replica_results(config, history)
    pop = population.is_population(config)
    return {
        "name": config.name,
        "model": config.model,
        "dropout_rate": None if pop else config.dropout_rate,
        **({"grid": population.parse(config.grid)} if pop else {}),
        "num_replicas": config.get("num_replicas", 1),
        "num_members": len(results),
        "steps": history[-1]["step"],
        "steps_per_epoch": data_lib.steps_per_epoch(dataset.train, config.batch_size),
        **({k: results[0][k] for k in RESULT_FIELDS} if len(results) == 1 else {}),
        "replicas": results,
        **({"points": point_results(config, results)} if pop else {}),
        **({} if pop else {"statistics": field_statistics(results)}),
        **timing,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "data": dataset.describe(),
        "versions": versions(),
        "runtime": runtime.process_settings(),
    }


def timing(
    config, initial_step: int, wall: float, eval_time: float, first: tuple, earlier: float = 0.0
) -> dict:
    """Wall time and speed, the rates without the first chunk (`first`: steps, s): it compiles.
    `earlier`: the seconds earlier processes spent on this run (a resumed one's)."""
    first_steps, first_s = first
    timed_steps = config.num_train_steps - initial_step - first_steps
    steady = wall - eval_time - first_s
    rate = timed_steps * config.batch_size / steady if timed_steps > 0 and steady > 0 else None
    count = population.num_members(config)
    return {
        "resumed_from_step": initial_step,
        "wall_time_s": round(wall, 2),
        "wall_time_total_s": round(wall + earlier, 2),
        "first_step_s": round(first_s, 3),
        "eval_time_s": round(eval_time, 2),
        # Every replica's images: what the program trains per second.
        "images_per_sec": None if rate is None else round(rate * count, 1),
        "images_per_sec_per_replica": None if rate is None else round(rate, 1),
        "steps_per_sec": None if rate is None else round(rate / config.batch_size, 2),
    }
