"""Figures 2–6 of the exercise, drawn from the TensorBoard event files of finished runs.

Nothing here trains or evaluates anything: a run is read back from what the train loop wrote
into its workdir (`train/` and `test/` event files from CLU writers, `summary.json`,
`config.json`). Curves are smoothed exactly as TensorBoard's scalar dashboard does, with the raw
curve drawn faintly behind. One colour convention for every figure, the exercise's:
blue / orange = train / test without dropout, green / pink = train / test with dropout.

    python -m fmnist_jax.plotting --runs runs --out figures [--smoothing 0.6]
"""

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DEFAULT_SMOOTHING = 0.6  # TensorBoard's default slider position
COLLECTIONS = ("train", "test")
COLORS = {
    ("train", False): "tab:blue",
    ("test", False): "tab:orange",
    ("train", True): "tab:green",
    ("test", True): "tab:pink",
}
RAW_ALPHA = 0.25  # the raw curve is drawn faintly, as in TensorBoard
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


class RunError(RuntimeError):
    """A run folder that is missing or cannot be plotted; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Curve:
    """One scalar tag of one collection: strictly increasing steps and their values."""

    steps: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Run:
    """What a finished (or interrupted) run left in its workdir."""

    name: str
    path: Path
    scalars: dict[str, dict[str, Curve]]  # collection ("train"/"test") -> tag -> curve
    summary: dict
    config: dict

    def curve(self, collection: str, tag: str) -> Curve | None:
        """The curve of `tag` in `collection`, or None when it was never logged."""
        return self.scalars.get(collection, {}).get(tag)


# --------------------------------------------------------------------------- smoothing


def tensorboard_smooth(values: Sequence[float], weight: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Smooths a series exactly as TensorBoard's scalar dashboard does.

    A debiased exponential moving average started at 0: `last = last * w + (1 - w) * v`, shown
    as `last / (1 - w ** n)` where n counts the finite values seen so far. Non-finite values pass
    through unchanged and do not enter the average. As in TensorBoard, the weight is clamped to
    [0, 1] (a non-finite weight counts as 0) and a constant series is returned unchanged.
    """
    values = np.asarray(values, dtype=np.float64)
    weight = min(max(weight, 0.0), 1.0) if math.isfinite(weight) else 0.0
    if values.size == 0 or np.all(values == values[0]):
        return values.copy()
    smoothed = values.copy()
    last, num_accum = 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            continue
        last = last * weight + (1.0 - weight) * value
        num_accum += 1
        debias = 1.0 if weight == 1.0 else 1.0 - weight**num_accum
        smoothed[i] = last / debias
    return smoothed


# --------------------------------------------------------------------------- reading runs


def event_files(log_dir: str | os.PathLike) -> list[Path]:
    """The TensorBoard event files directly inside `log_dir`, sorted by name."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return []
    return sorted(p for p in log_dir.iterdir() if p.is_file() and "tfevents" in p.name)


def _iter_scalar_events(path: Path) -> Iterator[tuple[str, int, float, float]]:
    """Yields (tag, step, wall_time, value) for every numeric scalar in one event file."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.HasField("tensor"):  # CLU / tf.summary: a rank-0 tensor
                array = tensor_util.make_ndarray(value.tensor)
                if array.size != 1 or array.dtype.kind not in "fiub":
                    continue  # hparams, text, images...
                number = float(array.reshape(()))
            elif value.HasField("simple_value"):  # TF1-style summaries
                number = float(value.simple_value)
            else:
                continue
            yield value.tag, int(event.step), float(event.wall_time), number


def dedupe_by_step(records: Sequence[tuple[int, float, float]]) -> Curve:
    """Builds a curve from (step, wall_time, value), keeping the last written value per step.

    After a crash and a resume the same step can be logged twice; the later write (by wall
    time, then by reading order) wins, as it is the one the resumed run continued from.
    """
    order = sorted(range(len(records)), key=lambda i: (records[i][0], records[i][1], i))
    latest: dict[int, float] = {}
    for i in order:
        latest[records[i][0]] = records[i][2]
    steps = np.array(sorted(latest), dtype=np.int64)
    return Curve(steps=steps, values=np.array([latest[s] for s in steps], dtype=np.float64))


def read_scalars(log_dir: str | os.PathLike) -> dict[str, Curve]:
    """Reads every scalar tag of the event files in `log_dir`, deduplicated by step.

    Raises RunError when the folder holds no event files.
    """
    files = event_files(log_dir)
    if not files:
        raise RunError(f"{log_dir}: no TensorBoard event files (*tfevents*) in this folder")
    records: dict[str, list[tuple[int, float, float]]] = {}
    for path in files:
        for tag, step, wall_time, value in _iter_scalar_events(path):
            records.setdefault(tag, []).append((step, wall_time, value))
    return {tag: dedupe_by_step(recs) for tag, recs in records.items()}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_run(run_dir: str | os.PathLike) -> Run:
    """Loads a run's curves (from its event files), summary.json and config.json.

    Raises RunError when the folder is missing or neither train/ nor test/ holds event files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run {run_dir} is missing")
    scalars = {c: read_scalars(run_dir / c) for c in COLLECTIONS if event_files(run_dir / c)}
    if not scalars:
        raise RunError(
            f"run {run_dir} has no TensorBoard event files in {run_dir / 'train'} or "
            f"{run_dir / 'test'} (has the train loop written any evaluation yet?)"
        )
    return Run(
        name=run_dir.name,
        path=run_dir,
        scalars=scalars,
        summary=_read_json(run_dir / "summary.json"),
        config=_read_json(run_dir / "config.json"),
    )


def steps_per_epoch(run: Run) -> float | None:
    """Training steps per epoch, from summary.json, else from the data size and batch size."""
    if run.summary.get("steps_per_epoch"):
        return float(run.summary["steps_per_epoch"])
    num_train = (run.summary.get("data") or {}).get("num_train")
    batch_size = run.config.get("batch_size")
    if num_train and batch_size:
        return num_train / batch_size
    return None


def dropout_rate(run: Run) -> float:
    """The run's dropout rate, from summary.json or config.json (0 when neither says)."""
    rate = run.summary.get("dropout_rate", run.config.get("dropout_rate"))
    return float(rate or 0.0)


# --------------------------------------------------------------------------- drawing


def draw_curve(ax, curve: Curve, color: str, label: str, smoothing: float, x_scale: float = 1.0):
    """Draws the raw curve faintly and its TensorBoard smoothing on top (two lines)."""
    x = curve.steps / x_scale
    ax.plot(x, curve.values, color=color, alpha=RAW_ALPHA, linewidth=1.0, label=f"_{label} raw")
    ax.plot(x, tensorboard_smooth(curve.values, smoothing), color=color, linewidth=1.8, label=label)


def _series_label(collection: str, run: Run, with_dropout: bool) -> str:
    if not with_dropout:
        return collection
    rate = dropout_rate(run)
    return f"{collection}, dropout {rate:g}" if rate else f"{collection}, no dropout"


def _panel(ax, runs: Sequence[Run], tag: str, smoothing: float, compare: bool) -> None:
    """One panel: `tag` for train and test of each run (the second run, if any, is dropout)."""
    for dropout_index, run in enumerate(runs):
        for collection in COLLECTIONS:
            curve = run.curve(collection, tag)
            if curve is None:
                continue
            color = COLORS[(collection, dropout_index > 0)]
            draw_curve(ax, curve, color, _series_label(collection, run, compare), smoothing)
    ax.set_xlabel("iteration (training step)")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
    ax.legend()


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
    fig.suptitle(f"{title} (TensorBoard smoothing {smoothing:g}, raw curves faint)")
    return fig


def plot_linreg_loss(
    run: Run, smoothing: float = DEFAULT_SMOOTHING, title: str = "Linear regression loss"
) -> Figure:
    """Figure 2: linear-regression mean loss per epoch (x = step / steps_per_epoch)."""
    per_epoch = steps_per_epoch(run)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for collection in COLLECTIONS:
        curve = run.curve(collection, "loss")
        if curve is not None:
            draw_curve(
                ax, curve, COLORS[(collection, False)], collection, smoothing, per_epoch or 1
            )
    ax.set_xlabel("epoch" if per_epoch else "iteration (training step; steps per epoch unknown)")
    ax.set_ylabel("mean loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title} (smoothing {smoothing:g}, raw curves faint)")
    return fig


# --------------------------------------------------------------------------- all figures


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def plot_figure(key: str, runs: Sequence[Run], smoothing: float = DEFAULT_SMOOTHING) -> Figure:
    """Draws figure `key` of FIGURES from its loaded runs (in the order FIGURES names them)."""
    if key == "fig2":
        return plot_linreg_loss(runs[0], smoothing, FIGURES[key][2])
    return plot_accuracy_and_loss(runs, FIGURES[key][2], smoothing)


def _load_all(runs_dir: Path, names: set[str]) -> dict[str, Run | RunError]:
    """Loads each named run once; a run that cannot be loaded maps to its RunError."""
    loaded: dict[str, Run | RunError] = {}
    for name in sorted(names):
        try:
            loaded[name] = load_run(runs_dir / name)
        except RunError as e:
            loaded[name] = e
    return loaded


def make_figures(
    runs_dir: str | os.PathLike, out_dir: str | os.PathLike, smoothing: float = DEFAULT_SMOOTHING
) -> dict[str, Path]:
    """Writes figures 2–6 as PNGs into `out_dir`; returns {figure key: path} of those written.

    A figure whose runs are missing or hold no event files is skipped with a one-line warning.
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 when no figure could be drawn)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="folder holding one workdir per run")
    parser.add_argument("--out", default="figures", help="folder the PNGs are written to")
    parser.add_argument("--smoothing", type=float, default=DEFAULT_SMOOTHING)
    args = parser.parse_args(argv)
    written = make_figures(args.runs, args.out, args.smoothing)
    for path in written.values():
        print(f"wrote {path}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
