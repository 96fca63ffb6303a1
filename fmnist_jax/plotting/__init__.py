"""The figures from what runs left (`curves`: figures 2-6; `adversarial`: Figure 7), with
matplotlib; the train loop never imports this package."""

import importlib.util

from fmnist_jax.errors import MissingDependency


def require_matplotlib() -> None:
    """MissingDependency, before any work, where matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependency(
            "the figures need matplotlib, which is not installed: pip install matplotlib"
            " (or make env)"
        )
