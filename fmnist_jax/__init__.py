"""fmnist-jax: the ConvNets-on-Fashion-MNIST exercise in JAX/Flax.

The interactive API (see `fmnist_jax.api` and the README):

    get_config(experiment, variant="", **overrides)  an experiment's ConfigDict
    load_data(config)                                its data set (numpy arrays in memory)
    fit(config, workdir=None)                        -> (train state, metrics history)
    restore(workdir)                                 -> Trained(config, model, params)
    predict(trained, images)                         -> class probabilities [N, 10]
    attack(trained, images, targets=None)            -> adversarial images, p(target), norms
"""

from fmnist_jax.api import Trained, attack, fit, get_config, load_data, predict, restore
from fmnist_jax.data import CLASS_NAMES

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
