"""fmnist-jax: the ConvNets-on-Fashion-MNIST exercise in JAX/Flax.

The interactive API (see `fmnist_jax.api` and the README):

    get_config(experiment, variant="", **overrides)  an experiment's ConfigDict
    load_data(config)                                its data set (numpy arrays in memory)
    fit(config, workdir=None)                        -> (train state, metrics history)
    restore(workdir)                                 -> Trained(config, model, params)
    predict(trained, images)                         -> class probabilities [N, 10]
    attack(trained, images, targets=None)            -> adversarial images, p(target), norms

Importing the package sets XLA's CPU convolution flag (`fmnist_jax.runtime`) before JAX starts
its backends; the API itself is imported on first use, so `python -m fmnist_jax.main --help`
stays fast.
"""

import importlib

from fmnist_jax import runtime

runtime.configure_xla()

_API = {
    "CLASS_NAMES": "fmnist_jax.data",
    "Trained": "fmnist_jax.api",
    "attack": "fmnist_jax.api",
    "fit": "fmnist_jax.api",
    "get_config": "fmnist_jax.api",
    "load_data": "fmnist_jax.api",
    "predict": "fmnist_jax.api",
    "restore": "fmnist_jax.api",
}
__all__ = [
    "CLASS_NAMES",
    "Trained",
    "attack",
    "fit",
    "get_config",
    "load_data",
    "predict",
    "restore",
]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fmnist_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
