"""Figures 2–6 of the exercise, drawn from the runs' `metrics.jsonl`.

Nothing here trains or evaluates anything: a run is read back through `fmnist_jax.rundir`
(`metrics.jsonl`, `summary.json`, `config.json`), and no TensorFlow is imported. Curves are
smoothed exactly as TensorBoard's scalar dashboard does (`fmnist_jax.smoothing`), with the raw
curve drawn faintly behind. A run of several replicas draws, per series, the mean over replicas of
the smoothed curves with a band from their minimum to their maximum (the raw mean faint). One colour
convention for every figure, the exercise's: blue / orange = train / test without dropout, green /
pink = train / test with dropout."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fmnist_jax import rundir
from fmnist_jax.errors import RunError
from fmnist_jax.rundir import COLLECTIONS, Curve, Run
from fmnist_jax.smoothing import DEFAULT_SMOOTHING, tensorboard_smooth

COLORS = {
    ("train", False): "tab:blue",
    ("test", False): "tab:orange",
    ("train", True): "tab:green",
    ("test", True): "tab:pink",
}
RAW_ALPHA = 0.25  # the raw curve is drawn faintly, as in TensorBoard
BAND_ALPHA = 0.2  # the min-max band over replicas
FIGURES = {  # key: (file name, runs it needs, title); the second run, if any, has dropout
    "fig2": ("fig2_linreg_loss.png", ("linreg",), "Figure 2: linear regression loss"),
    "fig3": ("fig3_mlp.png", ("mlp",), "Figure 3: Multi-Layer-Perceptron"),
    "fig4": ("fig4_cnn.png", ("cnn",), "Figure 4: ConvNet"),
    "fig5": (
        "fig5_mlp_dropout.png",
        ("mlp", "mlp_dropout"),
        "Figure 5: Multi-Layer-Perceptron without vs with dropout",
    ),
    "fig6": (
        "fig6_cnn_dropout.png",
        ("cnn", "cnn_dropout"),
        "Figure 6: ConvNet without vs with dropout",
    ),
}


def steps_per_epoch(run: Run) -> float | None:
    """Training steps per epoch: from summary.json, else from a record's step and epoch (an
    unfinished run), else None."""
    if (run.summary or {}).get("steps_per_epoch"):
        return float(run.summary["steps_per_epoch"])
    for record in run.history:
        if record.get("epoch"):
            return record["step"] / record["epoch"]
    return None


def dropout_rate(run: Run) -> float:
    """The run's dropout rate, from summary.json or config.json (0 when neither says)."""
    rate = (run.summary or {}).get("dropout_rate", run.config.get("dropout_rate"))
    return float(rate or 0.0)


def draw_curve(ax, curve: Curve, color: str, label: str, smoothing: float, x_scale: float = 1.0):
    """Draws the raw curve faintly and its TensorBoard smoothing on top (two lines)."""
    x = curve.steps / x_scale
    ax.plot(x, curve.values, color=color, alpha=RAW_ALPHA, linewidth=1.0, label=f"_{label} raw")
    ax.plot(x, tensorboard_smooth(curve.values, smoothing), color=color, linewidth=1.8, label=label)


def replica_curves(run: Run, key: str) -> list[Curve]:
    """Each replica's series `key` (replicas that never logged it left out)."""
    return [c for r in run.replicas() if (c := r.curve(key)) is not None]


def band(curves: Sequence[Curve], smoothing: float) -> tuple[np.ndarray, ...]:
    """(steps, raw mean, mean of the smoothed curves, their min, their max) over replicas, on
    the steps every replica logged."""
    steps = curves[0].steps
    for c in curves[1:]:
        steps = np.intersect1d(steps, c.steps)
    raw = np.stack([c.values[np.isin(c.steps, steps)] for c in curves])
    smooth = np.stack([tensorboard_smooth(v, smoothing) for v in raw])
    return steps, raw.mean(0), smooth.mean(0), smooth.min(0), smooth.max(0)


def draw_series(ax, run: Run, key: str, color: str, label: str, smoothing: float, x_scale=1.0):
    """`draw_curve` for a run of one replica; for several, the mean of the replicas' smoothed
    curves with a min-max band and the raw mean faint. Nothing when never logged."""
    curves = replica_curves(run, key)
    if len(curves) <= 1:
        if curves:
            draw_curve(ax, curves[0], color, label, smoothing, x_scale)
        return
    steps, raw, mean, low, high = band(curves, smoothing)
    x = steps / x_scale
    ax.plot(x, raw, color=color, alpha=RAW_ALPHA, linewidth=1.0, label=f"_{label} raw")
    ax.fill_between(x, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)
    ax.plot(x, mean, color=color, linewidth=1.8, label=f"{label} (mean of {len(curves)})")


def _series_label(collection: str, run: Run, with_dropout: bool) -> str:
    if not with_dropout:
        return collection
    rate = dropout_rate(run)
    return f"{collection}, dropout {rate:g}" if rate else f"{collection}, no dropout"


def _panel(ax, runs: Sequence[Run], tag: str, smoothing: float, compare: bool) -> None:
    """One panel: `tag` for train and test of each run (the second run, if any, is dropout)."""
    for dropout_index, run in enumerate(runs):
        for collection in COLLECTIONS:
            color = COLORS[(collection, dropout_index > 0)]
            label = _series_label(collection, run, compare)
            draw_series(ax, run, f"{collection}_{tag}", color, label, smoothing)
    ax.set_xlabel("iteration (training step)")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
    ax.legend()


def _band_note(runs: Sequence[Run]) -> str:
    counts = sorted({r.num_replicas for r in runs})
    if counts == [1]:
        return "raw curves faint"
    return f"{'/'.join(map(str, counts))} replicas: mean, min-max band, raw mean faint"


def plot_accuracy_and_loss(
    runs: Sequence[Run], title: str, smoothing: float = DEFAULT_SMOOTHING
) -> Figure:
    """Two panels, (a) accuracy and (b) loss against the step, train and test of each run.

    One run gives figures 3 and 4 (blue train, orange test); a run without and one with dropout
    give figures 5 and 6 (plus green / pink for the dropout run). Every curve is two lines.
    """
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, tag, letter in zip(axes, ("accuracy", "loss"), "ab", strict=True):
        _panel(ax, runs, tag, smoothing, compare=len(runs) > 1)
        ax.set_title(f"({letter}) {tag}")
    fig.suptitle(f"{title} (TensorBoard smoothing {smoothing:g}, {_band_note(runs)})")
    return fig


def plot_linreg_loss(
    run: Run, smoothing: float = DEFAULT_SMOOTHING, title: str = "Linear regression loss"
) -> Figure:
    """Figure 2: linear-regression mean loss per epoch (x = step / steps_per_epoch)."""
    per_epoch = steps_per_epoch(run)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for collection in COLLECTIONS:
        color = COLORS[(collection, False)]
        draw_series(ax, run, f"{collection}_loss", color, collection, smoothing, per_epoch or 1)
    ax.set_xlabel("epoch" if per_epoch else "iteration (training step; steps per epoch unknown)")
    ax.set_ylabel("mean loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title} (smoothing {smoothing:g}, {_band_note([run])})")
    return fig


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def plot_figure(key: str, runs: Sequence[Run], smoothing: float = DEFAULT_SMOOTHING) -> Figure:
    """Draws figure `key` of FIGURES from its runs (in the order FIGURES names them)."""
    if key == "fig2":
        return plot_linreg_loss(runs[0], smoothing, FIGURES[key][2])
    return plot_accuracy_and_loss(runs, FIGURES[key][2], smoothing)


def load_plottable(run_dir: str | os.PathLike) -> Run:
    """`rundir.read_run`, refusing a run with no evaluation logged yet (RunError)."""
    run = rundir.read_run(run_dir)
    if not run.history:
        raise RunError(
            f"run {run_dir} has no evaluation in {Path(run_dir) / rundir.METRICS_FILE} yet"
        )
    return run


def _load_all(runs_dir: Path, names: set[str]) -> dict[str, Run | RunError]:
    """Loads each named run once; a run that cannot be plotted maps to its RunError."""
    loaded: dict[str, Run | RunError] = {}
    for name in sorted(names):
        try:
            loaded[name] = load_plottable(runs_dir / name)
        except RunError as e:
            loaded[name] = e
    return loaded


def make_figures(
    runs_dir: str | os.PathLike, out_dir: str | os.PathLike, smoothing: float = DEFAULT_SMOOTHING
) -> dict[str, Path]:
    """Writes figures 2–6 as PNGs into `out_dir`; returns {figure key: path} of those written.

    A figure whose runs are missing or hold no evaluation yet is skipped with a one-line warning.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = _load_all(Path(runs_dir), {n for _, names, _ in FIGURES.values() for n in names})
    written = {}
    for key, (file_name, names, _) in FIGURES.items():
        errors = [loaded[n] for n in names if isinstance(loaded[n], RunError)]
        if errors:
            _warn(f"skipping {file_name}: " + "; ".join(map(str, errors)))
            continue
        path = out_dir / file_name
        plot_figure(key, [loaded[n] for n in names], smoothing).savefig(path, dpi=120)
        written[key] = path
    return written
