"""The figures experiments declare (the exercise's 2-6) from the runs' `metrics.jsonl`: curves
smoothed as TensorBoard does, the raw curve faint; of replicas, their mean and min-max band."""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fmnist_jax import declarations, rundir
from fmnist_jax.config import experiment_names
from fmnist_jax.errors import RunError
from fmnist_jax.rundir import COLLECTIONS, Curve, Run
from fmnist_jax.smoothing import DEFAULT_SMOOTHING, tensorboard_smooth

COLORS = {  # the exercise's
    ("train", False): "tab:blue",
    ("test", False): "tab:orange",
    ("train", True): "tab:green",
    ("test", True): "tab:pink",
}
RAW_ALPHA = 0.25  # the raw curve is drawn faintly, as in TensorBoard
BAND_ALPHA = 0.2  # the min-max band over replicas


def steps_per_epoch(run: Run) -> float | None:
    """From summary.json, else from a record's step and epoch (an unfinished run), else None."""
    if (run.summary or {}).get("steps_per_epoch"):
        return float(run.summary["steps_per_epoch"])
    return next((r["step"] / r["epoch"] for r in run.history if r.get("epoch")), None)


def dropout_rate(run: Run) -> float:
    """The run's dropout rate, from summary.json or config.json (0 when neither says)."""
    rate = (run.summary or {}).get("dropout_rate", run.config.get("dropout_rate"))
    return float(rate or 0.0)


def replica_curves(run: Run, key: str) -> list[Curve]:
    """Each replica's series `key` (replicas that never logged it left out)."""
    return [c for r in run.members() if (c := r.curve(key)) is not None]


def band(curves: Sequence[Curve], smoothing: float) -> tuple[np.ndarray, ...]:
    """(steps all logged, raw mean, mean of the smoothed curves, their min, their max)."""
    steps = curves[0].steps
    for c in curves[1:]:
        steps = np.intersect1d(steps, c.steps)
    raw = np.stack([c.values[np.isin(c.steps, steps)] for c in curves])
    smooth = np.stack([tensorboard_smooth(v, smoothing) for v in raw])
    return steps, raw.mean(0), smooth.mean(0), smooth.min(0), smooth.max(0)


def draw_series(ax, run: Run, key: str, color: str, label: str, smoothing: float, x_scale=1.0):
    """The series `key` (`band`'s curves, the raw one faint); nothing when never logged."""
    curves = replica_curves(run, key)
    if not curves:
        return
    steps, raw, mean, low, high = band(curves, smoothing)
    x = steps / x_scale
    ax.plot(x, raw, color=color, alpha=RAW_ALPHA, linewidth=1.0, label=f"_{label} raw")
    if len(curves) > 1:
        ax.fill_between(x, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)
        label = f"{label} (mean of {len(curves)})"
    ax.plot(x, mean, color=color, linewidth=1.8, label=label)


def _panel(ax, runs: Sequence[Run], tag: str, smoothing: float, x_scale=1.0, xlabel=None):
    """`tag` for train and test of each run (the second, if any, with dropout)."""
    for dropout_index, run in enumerate(runs):
        rate = f"dropout {dropout_rate(run):g}" if dropout_rate(run) else "no dropout"
        for collection in COLLECTIONS:
            label = f"{collection}, {rate}" if len(runs) > 1 else collection
            color = COLORS[(collection, dropout_index > 0)]
            draw_series(ax, run, f"{collection}_{tag}", color, label, smoothing, x_scale)
    ax.set_xlabel(xlabel or "iteration (training step)")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
    ax.legend()


def _band_note(runs: Sequence[Run]) -> str:
    counts = sorted({r.num_members for r in runs})
    if counts == [1]:
        return "raw curves faint"
    return f"{'/'.join(map(str, counts))} replicas: mean, min-max band, raw mean faint"


def plot_accuracy_and_loss(
    runs: Sequence[Run], title: str, smoothing: float = DEFAULT_SMOOTHING
) -> Figure:
    """(a) accuracy and (b) loss against the step, train and test of one run, or of a run
    without and one with dropout."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    for ax, tag, letter in zip(fig.subplots(1, 2), ("accuracy", "loss"), "ab", strict=True):
        _panel(ax, runs, tag, smoothing)
        ax.set_title(f"({letter}) {tag}")
    fig.suptitle(f"{title} (TensorBoard smoothing {smoothing:g}, {_band_note(runs)})")
    return fig


def plot_loss(
    run: Run, smoothing: float = DEFAULT_SMOOTHING, title: str = "Linear regression loss"
) -> Figure:
    """Mean loss per epoch (x = step / steps_per_epoch): Figure 2, for a run with no accuracy."""
    per_epoch = steps_per_epoch(run)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    unknown = "iteration (training step; steps per epoch unknown)"
    _panel(ax, [run], "loss", smoothing, per_epoch or 1, "epoch" if per_epoch else unknown)
    ax.set_ylabel("mean loss")
    ax.set_title(f"{title} (smoothing {smoothing:g}, {_band_note([run])})")
    return fig


def plot_figure(runs: Sequence[Run], title: str, smoothing: float = DEFAULT_SMOOTHING) -> Figure:
    """Accuracy and loss of `runs`; their loss per epoch where none logged an accuracy."""
    if any(run.curve("test_accuracy") is not None for run in runs):
        return plot_accuracy_and_loss(runs, title, smoothing)
    return plot_loss(runs[0], smoothing, title)


def load_plottable(run_dir: str | os.PathLike) -> Run:
    """`rundir.read_run`, refusing a run with no evaluation logged yet (RunError)."""
    run = rundir.read_run(run_dir)
    if not run.history:
        raise RunError(
            f"run {run_dir} has no evaluation in {Path(run_dir) / rundir.METRICS_FILE} yet"
        )
    return run


def _load(run_dir: Path) -> Run | RunError:
    try:
        return load_plottable(run_dir)
    except RunError as e:
        return e


def make_figures(
    runs_dir: str | os.PathLike, out_dir: str | os.PathLike, smoothing: float = DEFAULT_SMOOTHING
) -> dict[str, Path]:
    """Writes every declared figure into `out_dir` (a one-line warning for one whose runs are
    missing or unevaluated); {experiment declaring it: path} of those written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = {name: _load(Path(runs_dir) / name) for name in experiment_names()}
    plottable = {name: run for name, run in loaded.items() if isinstance(run, Run)}
    written = {}
    for d in declarations.figures(declarations.experiments(plottable)):
        errors = [loaded[n] for n in d.runs if isinstance(loaded[n], RunError)]
        if errors:
            print(f"warning: skipping {d.figure}: " + "; ".join(map(str, errors)), file=sys.stderr)
            continue
        plot_figure([loaded[n] for n in d.runs], d.title, smoothing).savefig(
            out_dir / d.figure, dpi=120
        )
        written[d.name] = out_dir / d.figure
    return written
