"""fmnist-jax: the ConvNets-on-Fashion-MNIST exercise in JAX/Flax.

The interactive API (see `fmnist_jax.api` and docs/api.md):

    get_config(experiment, variant="", **overrides)  an experiment's ConfigDict
    load_data(config)                                its data set (numpy arrays in memory)
    fit(config, workdir=None)                        -> (train state, metrics history)
    restore(workdir, step=None, member=0)            -> Trained(config, model, variables)
    predict(trained, images)                         -> class probabilities [N, 10]
    attack(trained, images, targets=None)            -> adversarial images, p(target), norms

    configure_cpu()                                  fast XLA:CPU convolutions (before jax)
    initialize_distributed(coordinator_address, num_processes, process_id)  several processes

Importing the package changes nothing in the process: each name is imported on first use. Call
`configure_cpu()` before `import jax` for CPU speed (the command lines do it in `cli.run`).
"""

from importlib import import_module as _import_module

_API = {
    "CLASS_NAMES": "fmnist_jax.data",
    "Trained": "fmnist_jax.api",
    "attack": "fmnist_jax.api",
    "configure_cpu": "fmnist_jax.runtime",
    "fit": "fmnist_jax.api",
    "get_config": "fmnist_jax.api",
    "initialize_distributed": "fmnist_jax.api",
    "load_data": "fmnist_jax.api",
    "predict": "fmnist_jax.api",
    "restore": "fmnist_jax.api",
}
__all__ = sorted(_API)  # noqa: PLE0605 - the API table's names


def __getattr__(name: str):
    if name in _API:
        return getattr(_import_module(_API[name]), name)
    raise AttributeError(f"module 'fmnist_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
