"""The figures experiments declare (the exercise's 2-6), as PNGs from the runs' metrics.jsonl.

    python -m fmnist_jax.plotting --runs runs --out figures [--smoothing 0.6]

A figure whose runs are missing or unevaluated is skipped with a warning. Exit status 0 when a
figure was drawn, 1 when none could be, 2 on a usage error or without matplotlib.
"""

import sys

from absl import flags

from fmnist_jax import cli, plotting
from fmnist_jax.smoothing import DEFAULT_SMOOTHING

EXIT_NO_FIGURE = 1

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("runs", "runs", "Folder holding one workdir per run.")
    flags.DEFINE_string("out", "figures", "Folder the PNGs are written to.")
    flags.DEFINE_float(
        "smoothing",
        DEFAULT_SMOOTHING,
        "TensorBoard smoothing weight of the bold curves, in [0, 1].",
        lower_bound=0.0,
        upper_bound=1.0,
    )


def main() -> None:
    """Writes the figures and names each file written."""
    plotting.require_matplotlib()
    from fmnist_jax.plotting import curves

    written = curves.make_figures(FLAGS.runs, FLAGS.out, FLAGS.smoothing)
    for path in written.values():
        print(f"wrote {path}")
    if not written:
        print(f"error: no figure drawn: no run in {FLAGS.runs} can be plotted", file=sys.stderr)
        sys.exit(EXIT_NO_FIGURE)


if __name__ == "__main__":
    cli.run(main, define_flags)
