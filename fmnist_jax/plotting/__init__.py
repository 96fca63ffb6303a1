"""The exercise's figures, drawn from what runs left in their workdirs; nothing is rerun.

    python -m fmnist_jax.plotting --runs runs --out figures [--smoothing 0.6]

`curves`: figures 2–6 (learning curves, TensorBoard-smoothed) from the runs' `metrics.jsonl`;
`adversarial`: Figure 7 and the attack's curves. Runs are read through `fmnist_jax.rundir`
(`load_run` is `rundir.read_run`); no TensorFlow is imported. The train loop never imports
this package.
"""

from fmnist_jax.plotting.curves import (
    COLLECTIONS,
    COLORS,
    DEFAULT_SMOOTHING,
    FIGURES,
    RAW_ALPHA,
    draw_curve,
    dropout_rate,
    make_figures,
    plot_accuracy_and_loss,
    plot_figure,
    plot_linreg_loss,
    steps_per_epoch,
    tensorboard_smooth,
)
from fmnist_jax.rundir import Curve, Run
from fmnist_jax.rundir import read_run as load_run

__all__ = [
    "COLLECTIONS",
    "COLORS",
    "DEFAULT_SMOOTHING",
    "FIGURES",
    "RAW_ALPHA",
    "Curve",
    "Run",
    "draw_curve",
    "dropout_rate",
    "load_run",
    "make_figures",
    "plot_accuracy_and_loss",
    "plot_figure",
    "plot_linreg_loss",
    "steps_per_epoch",
    "tensorboard_smooth",
]
