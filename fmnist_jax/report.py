"""REPORT.md: the figures, the numbers of every run, and the exercise's claims checked.

Everything is read back from what the runs left in their workdirs (`summary.json`, the
TensorBoard event files, `runs/adversarial/summary.json` and `figure.png`); nothing is rerun.
Each claim of the exercise is marked "holds" or "does not hold" with the numbers behind it, or
"not checked" when a run it needs is missing.

    python -m fmnist_jax.report --runs runs --figures figures --out REPORT.md
"""

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fmnist_jax import plotting
from fmnist_jax.plotting import Curve

RUN_NAMES = ("linreg", "mlp", "mlp_dropout", "cnn", "cnn_dropout")
ADVERSARIAL_RUN = "adversarial"
HOLDS, FAILS = "holds", "does not hold"

# --- Thresholds ---------------------------------------------------------------------------
# Over-fitting: the final test loss must end at least this fraction above its minimum. Relative,
# because the loss scale differs between models (and would between losses). 5 % is several times
# the eval-to-eval jitter of a loss averaged over the whole 10,000-image test split (typically
# under 1 % once training has settled), so a noisy but flat curve is not called over-fitting,
# while the rise the exercise shows (test loss climbing back up for thousands of steps) is.
OVERFIT_REL_MARGIN = 0.05
# The exercise: "after about 10,000 iterations the [ConvNet] begins to over-fit".
EXERCISE_CNN_TURN_STEP = 10_000
# "About" read off a smoothed plot, with a batch size the exercise does not state: a turn
# within ±50 % (5,000–15,000 steps) counts as agreeing.
TURN_STEP_TOLERANCE = 0.5
# The turn is found on the curve as the exercise saw it: TensorBoard-smoothed, default weight.
TURN_SMOOTHING = plotting.DEFAULT_SMOOTHING
# Dropout must lower the final train–test loss gap (and the final test loss) by at least this
# much, in nats: smaller differences are within the eval-to-eval jitter of a final loss and
# could flip with another seed.
DROPOUT_MIN_REDUCTION = 0.01
# The exercise's adversarial images reach p(target) >= 0.95; the claim holds when the default
# method does so for most (more than half) of the attempted images.
ADVERSARIAL_P_TARGET = 0.95
ADVERSARIAL_MIN_SUCCESS = 0.5
ADVERSARIAL_DEFAULT_METHOD = "descent"

FIGURE_CAPTIONS = {
    "fig2": "Figure 2: linear regression, mean loss against the epoch.",
    "fig3": "Figure 3: Multi-Layer-Perceptron, (a) accuracy and (b) loss against the iteration; "
    "blue = train, orange = test.",
    "fig4": "Figure 4: ConvNet, (a) accuracy and (b) loss against the iteration; "
    "blue = train, orange = test.",
    "fig5": "Figure 5: Multi-Layer-Perceptron without vs with dropout; blue / orange = train / "
    "test without dropout, green / pink = train / test with dropout.",
    "fig6": "Figure 6: ConvNet without vs with dropout; blue / orange = train / test without "
    "dropout, green / pink = train / test with dropout.",
}
FIG7_CAPTION = "Figure 7: adversarial examples: original, added noise, adversarial image."


@dataclasses.dataclass(frozen=True)
class RunData:
    """A finished run: its summary.json and its logged curves ("train/loss", "test/loss"...)."""

    summary: dict
    history: dict[str, Curve]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One claim of the exercise, its status ("holds", "does not hold", "not checked (...)")."""

    claim: str
    status: str
    evidence: str


# --------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_history(run_dir: str | os.PathLike) -> dict[str, Curve]:
    """All logged curves of a run keyed "collection/tag"; empty when it has no event files."""
    history = {}
    for collection in plotting.COLLECTIONS:
        try:
            curves = plotting.read_scalars(Path(run_dir) / collection)
        except plotting.RunError:
            continue
        history.update({f"{collection}/{tag}": c for tag, c in curves.items()})
    return history


def load_runs(runs_dir: str | os.PathLike) -> dict[str, RunData | None]:
    """Every run of RUN_NAMES with a summary.json (None for the others)."""
    runs = {}
    for name in RUN_NAMES:
        summary = _read_json(Path(runs_dir) / name / "summary.json")
        runs[name] = (
            None if summary is None else RunData(summary, load_history(Path(runs_dir) / name))
        )
    return runs


# --------------------------------------------------------------------------- claim checks
# Each returns (holds, evidence): pure functions of summaries and curves.


def value_at(curve: Curve, step: int) -> float:
    """The curve's value at the last logged step at or before `step` (else its first value)."""
    index = max(int(np.searchsorted(curve.steps, step, side="right")) - 1, 0)
    return float(curve.values[index])


def final_gap(summary: dict) -> float:
    """Final test loss minus final train loss: how far the model fits train better than test."""
    return summary["final_test_loss"] - summary["final_train_loss"]


def check_overfits(
    summary: dict, train_loss: Curve, margin: float = OVERFIT_REL_MARGIN
) -> tuple[bool, str]:
    """Over-fitting: train loss still falls after the test-loss minimum, while the final test
    loss ends more than `margin` (relative) above that minimum."""
    low, low_step = summary["min_test_loss"], summary["min_test_loss_step"]
    final = summary["final_test_loss"]
    rise = (final - low) / abs(low) if low else math.inf
    train_then, train_final = value_at(train_loss, low_step), summary["final_train_loss"]
    holds = rise > margin and train_final < train_then
    evidence = (
        f"test loss lowest {low:.4f} at step {low_step:,}, final {final:.4f} "
        f"({rise:+.1%}; over-fitting needs > +{margin:.0%}); train loss over the same steps "
        f"{train_then:.4f} → {train_final:.4f}"
    )
    return holds, evidence


def loss_turn_step(test_loss: Curve, smoothing: float = TURN_SMOOTHING) -> int:
    """The step where the TensorBoard-smoothed test loss is lowest, i.e. where it turns up."""
    smoothed = plotting.tensorboard_smooth(test_loss.values, smoothing)
    return int(test_loss.steps[int(np.nanargmin(smoothed))])


def check_turn_step(
    test_loss: Curve,
    steps_per_epoch: float | None = None,
    expected: int = EXERCISE_CNN_TURN_STEP,
    tolerance: float = TURN_STEP_TOLERANCE,
    smoothing: float = TURN_SMOOTHING,
) -> tuple[bool, str]:
    """The test loss turns (its smoothed minimum is before the last step) near `expected`."""
    turn, last = loss_turn_step(test_loss, smoothing), int(test_loss.steps[-1])
    low, high = round(expected * (1 - tolerance)), round(expected * (1 + tolerance))
    holds = turn < last and low <= turn <= high
    epoch = f" (epoch {turn / steps_per_epoch:.1f})" if steps_per_epoch else ""
    evidence = (
        f"smoothed test loss (weight {smoothing:g}) lowest at step {turn:,}{epoch} of {last:,}; "
        f"exercise: about {expected:,} (accepted {low:,}–{high:,})"
    )
    return holds, evidence


def check_dropout_gap(
    base: dict, dropout: dict, min_reduction: float = DROPOUT_MIN_REDUCTION
) -> tuple[bool, str]:
    """Dropout narrows the final train–test loss gap by at least `min_reduction`."""
    without, with_ = final_gap(base), final_gap(dropout)
    evidence = (
        f"final test − train loss {without:.4f} without dropout, {with_:.4f} with dropout "
        f"{dropout.get('dropout_rate', 0):g} (change {with_ - without:+.4f}; "
        f"needs ≤ {-min_reduction:+g})"
    )
    return with_ <= without - min_reduction, evidence


def check_dropout_test_loss(
    base: dict, dropout: dict, min_reduction: float = DROPOUT_MIN_REDUCTION
) -> tuple[bool, str]:
    """Dropout lowers the final test loss by at least `min_reduction`."""
    without, with_ = base["final_test_loss"], dropout["final_test_loss"]
    evidence = (
        f"final test loss {without:.4f} without dropout, {with_:.4f} with dropout "
        f"(change {with_ - without:+.4f}; needs ≤ {-min_reduction:+g})"
    )
    return with_ <= without - min_reduction, evidence


def default_method(adversarial: dict) -> str | None:
    """The method the claim is judged on: the summary's own choice, else "descent", else the
    first listed."""
    methods = adversarial.get("methods") or {}
    for name in (adversarial.get("default_method"), adversarial.get("method")):
        if name in methods:
            return name
    if ADVERSARIAL_DEFAULT_METHOD in methods:
        return ADVERSARIAL_DEFAULT_METHOD
    return next(iter(methods), None)


def check_adversarial(
    adversarial: dict, min_success: float = ADVERSARIAL_MIN_SUCCESS
) -> tuple[bool, str]:
    """Adversarial examples reach p(target) >= 0.95: the default method succeeds on more than
    `min_success` of the images it attacked."""
    name = default_method(adversarial)
    if name is None:
        raise KeyError("runs/adversarial/summary.json lists no methods")
    result = adversarial["methods"][name]
    rate = float(result["success_rate"])
    extras = [
        f"{label} {result[key]:.4g}"
        for key, label in (
            ("mean_p_target", "mean p(target)"),
            ("median_l1", "median ℓ1 noise"),
            ("median_steps", "median steps"),
        )
        if isinstance(result.get(key), int | float)
    ]
    evidence = f"method {name!r}: success rate {rate:.1%} (needs > {min_success:.0%})"
    return rate > min_success, "; ".join([evidence, *extras])


# --------------------------------------------------------------------------- all claims


def _verdict(claim: str, check: Callable[[], tuple[bool, str]]) -> Verdict:
    try:
        holds, evidence = check()
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return Verdict(claim, "not checked (incomplete data)", f"{type(e).__name__}: {e}")
    return Verdict(claim, HOLDS if holds else FAILS, evidence)


def _missing(claim: str, names: Sequence[str]) -> Verdict:
    return Verdict(claim, "not checked (run missing)", "missing: " + ", ".join(names))


def _checked(claim: str, runs: dict, names: Sequence[str], check) -> Verdict:
    missing = [n for n in names if runs.get(n) is None]
    return _missing(claim, missing) if missing else _verdict(claim, check)


def _curve(run: RunData, key: str) -> Curve:
    if key not in run.history:
        raise KeyError(f"no {key} in the event files")
    return run.history[key]


def _model_claims(runs: dict[str, RunData | None], model: str, label: str) -> list[Verdict]:
    """The over-fitting and dropout claims for one model ("mlp" or "cnn")."""
    base, drop = runs.get(model), runs.get(f"{model}_dropout")
    pair = [model, f"{model}_dropout"]
    verdicts = [
        _checked(
            f"The {label} without dropout over-fits (train loss falls, test loss rises)",
            runs,
            [model],
            lambda: check_overfits(base.summary, _curve(base, "train/loss")),
        )
    ]
    if model == "cnn":
        verdicts.append(
            _checked(
                f"The ConvNet's test loss turns after about {EXERCISE_CNN_TURN_STEP:,} iterations",
                runs,
                [model],
                lambda: check_turn_step(
                    _curve(base, "test/loss"), base.summary.get("steps_per_epoch")
                ),
            )
        )
    verdicts.append(
        _checked(
            f"Dropout 0.25 reduces the {label}'s final train–test loss gap",
            runs,
            pair,
            lambda: check_dropout_gap(base.summary, drop.summary),
        )
    )
    verdicts.append(
        _checked(
            f"Dropout lowers the {label}'s final test loss",
            runs,
            pair,
            lambda: check_dropout_test_loss(base.summary, drop.summary),
        )
    )
    return verdicts


def check_claims(runs: dict[str, RunData | None], adversarial: dict | None) -> list[Verdict]:
    """Every claim of the exercise, checked on the runs present."""
    verdicts = _model_claims(runs, "mlp", "MLP") + _model_claims(runs, "cnn", "ConvNet")
    claim = f"Adversarial examples reach p(target) ≥ {ADVERSARIAL_P_TARGET}"
    if adversarial is None:
        verdicts.append(_missing(claim, [ADVERSARIAL_RUN]))
    else:
        verdicts.append(_verdict(claim, lambda: check_adversarial(adversarial)))
    return verdicts


# --------------------------------------------------------------------------- markdown


def _fmt(value, kind: str = "loss") -> str:
    """Formats a number for a table: accuracies as %, losses to 4 decimals, steps with commas."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    if kind == "accuracy":
        return f"{value:.2%}"
    if kind == "step":
        return f"{int(value):,}"
    return f"{value:.4f}" if kind == "loss" else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


RESULTS_HEADER = (
    "run",
    "model",
    "dropout",
    "steps",
    "final test acc",
    "best test acc (step)",
    "final test loss",
    "min test loss (step)",
    "final train loss",
    "final gap (test − train)",
)


def _at_step(summary: dict, key: str, kind: str) -> str:
    value = _fmt(summary.get(key), kind)
    return value if value == "—" else f"{value} (step {_fmt(summary.get(key + '_step'), 'step')})"


def summary_row(name: str, s: dict) -> list[str]:
    """One row of the results table (columns RESULTS_HEADER) from a run's summary.json."""
    gap = final_gap(s) if _has(s, "final_test_loss", "final_train_loss") else None
    return [
        name,
        str(s.get("model", "?")),
        _fmt(s.get("dropout_rate"), "number"),
        _fmt(s.get("steps"), "step"),
        _fmt(s.get("final_test_accuracy"), "accuracy"),
        _at_step(s, "best_test_accuracy", "accuracy"),
        _fmt(s.get("final_test_loss")),
        _at_step(s, "min_test_loss", "loss"),
        _fmt(s.get("final_train_loss")),
        _fmt(gap),
    ]


def results_table(runs: dict[str, RunData | None]) -> str:
    """One row per finished run: accuracies, losses and the final train–test loss gap."""
    rows = [summary_row(name, run.summary) for name, run in runs.items() if run is not None]
    return _table(RESULTS_HEADER, rows) if rows else "*No finished run (no summary.json) found.*"


def _has(summary: dict, *keys: str) -> bool:
    return all(isinstance(summary.get(k), int | float) for k in keys)


def provenance(data: dict) -> str:
    """What the numbers were measured on, from a summary's `data` entry."""
    source = data.get("source")
    if source == "idx":
        return (
            "measured on the offline copy of Fashion-MNIST (genuine images, non-official split: "
            "per class the first 1,000 of 7,000 are test)"
        )
    if source == "tfds":
        return "measured on Fashion-MNIST from tensorflow-datasets (the official split)"
    if source == "linear_regression":
        return "a synthetic linear-regression problem with a known ground truth"
    if source == "synthetic":
        return "synthetic random images, not Fashion-MNIST: these numbers test the code only"
    return f"unknown data source {source!r}"


def data_section(runs: dict[str, RunData | None]) -> str:
    """One line per distinct data source: its provenance, size, location and the runs using it."""
    groups: dict[tuple, list[str]] = {}
    for name, run in runs.items():
        if run is not None:
            data = run.summary.get("data") or {}
            key = tuple(data.get(k) for k in ("source", "location", "num_train", "num_test"))
            groups.setdefault(key, []).append(name)
    if not groups:
        return "*No finished run: data source unknown.*"
    lines = []
    for (source, location, num_train, num_test), names in groups.items():
        lines.append(
            f"- **{source}** ({', '.join(names)}): {provenance({'source': source})}; "
            f"{_fmt(num_train, 'step')} train / {_fmt(num_test, 'step')} test examples"
            f" from `{location}`."
        )
    return "\n".join(lines)


def device_section(runs: dict[str, RunData | None]) -> str:
    """Where each run ran, how fast, and the versions of the stack."""
    rows, versions = [], {}
    for name, run in runs.items():
        if run is None:
            continue
        s = run.summary
        device = f"{s.get('device_kind', '?')} × {s.get('device_count', '?')}"
        speed = [_fmt(s.get("wall_time_s"), "number"), _fmt(s.get("images_per_sec"), "number")]
        rows.append([name, str(s.get("backend", "?")), device, *speed])
        line = ", ".join(f"{k} {v}" for k, v in sorted((s.get("versions") or {}).items()))
        versions.setdefault(line or "versions not recorded", []).append(name)
    if not rows:
        return "*No finished run.*"
    table = _table(["run", "backend", "device × count", "wall time (s)", "images/s"], rows)
    version_lines = [f"- {line} ({', '.join(names)})" for line, names in versions.items()]
    return table + "\n\nVersions:\n\n" + "\n".join(version_lines)


def claims_table(verdicts: Sequence[Verdict]) -> str:
    """The claims of the exercise, each with its verdict and the numbers behind it."""
    rows = [[v.claim, f"**{v.status}**", v.evidence] for v in verdicts]
    return _table(["claim (exercise)", "verdict", "numbers"], rows)


def adversarial_table(adversarial: dict) -> str:
    """One row per method, one column per numeric field any method reports."""
    methods = adversarial.get("methods") or {}
    fields = []
    for result in methods.values():
        for key, value in (result or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in fields:
                fields.append(key)
    if not fields:
        return "*runs/adversarial/summary.json lists no per-method numbers.*"
    rows = [
        [name] + [_fmt((r or {}).get(f), "number") for f in fields] for name, r in methods.items()
    ]
    return _table(["method", *fields], rows)


def _image(path: Path | None, caption: str, out_dir: Path, missing: str) -> str:
    if path is None or not path.is_file():
        return f"**{caption}**\n\n*{missing}*"
    link = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    return f"**{caption}**\n\n![{caption}]({link})"


def figures_section(figures_dir: Path, out_dir: Path) -> str:
    """Figures 2–6, linked relative to the report's folder (a note where one is missing)."""
    blocks = []
    for key, (file_name, names, _) in plotting.FIGURES.items():
        missing = f"not drawn yet: needs runs {', '.join(names)}, then `make figures`"
        blocks.append(_image(figures_dir / file_name, FIGURE_CAPTIONS[key], out_dir, missing))
    return "\n\n".join(blocks)


def render_report(
    runs: dict[str, RunData | None],
    adversarial: dict | None,
    figures_dir: Path,
    runs_dir: Path,
    out_dir: Path,
) -> str:
    """The whole report as markdown; image links are relative to `out_dir`."""
    adv_dir = runs_dir / ADVERSARIAL_RUN
    if adversarial is None:
        adv = f"*Not run yet: no {adv_dir / 'summary.json'}.*"
    else:
        adv = adversarial_table(adversarial)
    fig7 = _image(adv_dir / "figure.png", FIG7_CAPTION, out_dir, f"no {adv_dir / 'figure.png'}")
    sections = [
        "# Fashion-MNIST ConvNets: reproduction report",
        (
            f"Generated by `python -m fmnist_jax.report` from `{runs_dir}` and `{figures_dir}`; "
            "every number is read from the runs' `summary.json` and TensorBoard event files."
        ),
        "## Data\n\n" + data_section(runs),
        "## Claims of the exercise\n\n" + claims_table(check_claims(runs, adversarial)),
        "## Results\n\n" + results_table(runs),
        "## Figures\n\n" + figures_section(figures_dir, out_dir),
        "## Adversarial examples\n\n" + adv + "\n\n" + fig7,
        "## Device and versions\n\n" + device_section(runs),
    ]
    return "\n\n".join(sections) + "\n"


def write_report(
    runs_dir: str | os.PathLike, figures_dir: str | os.PathLike, out: str | os.PathLike
) -> Path:
    """Reads the runs, checks the claims and writes the markdown report to `out`."""
    runs_dir, figures_dir, out = Path(runs_dir), Path(figures_dir), Path(out)
    runs = load_runs(runs_dir)
    adversarial = _read_json(runs_dir / ADVERSARIAL_RUN / "summary.json")
    for name, run in runs.items():
        if run is None:
            print(f"warning: run {runs_dir / name} missing (no summary.json)", file=sys.stderr)
    text = render_report(runs, adversarial, figures_dir, runs_dir, out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="folder holding one workdir per run")
    parser.add_argument("--figures", default="figures", help="folder holding the figure PNGs")
    parser.add_argument("--out", default="REPORT.md", help="the markdown file to write")
    args = parser.parse_args(argv)
    print(f"wrote {write_report(args.runs, args.figures, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
