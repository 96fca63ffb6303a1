"""The dropout-rate sweep (exercise §2.4): "different probabilities were taken, but 0.25
achieved the best performance (although the differences were quite small)".

    python -m fmnist_jax.sweep --runs runs/sweep [--models mlp,cnn] [--rates 0,0.1,0.25,0.4,0.5]
        [--replicas 3] [--num_train_steps N] [--cnn_train_steps N] [--cnn_replicas R]

Each model trains once: its experiment config as a population (fmnist_jax/population.py) of
every rate x R seeds, one program (`config.grid = "dropout_rate=..."`, `config.num_replicas`),
into `<runs>/<model>` (rerunning resumes); then `sweep.json` gets each rate's final and minimum
test loss and final test accuracy over its seeds (mean, 95 % interval) and the verdicts, and
`sweep.png` draws them against the rate.

Verdicts, per model, on the final test loss (the exercise's "performance"; replicas of two
rates share their seeds, so rates are compared paired, replica by replica): 0.25 is "the
best" (lowest mean), "within the noise of the best" (the paired difference's 95 % interval
contains 0) or "worse than the best"; the differences are "small" when the mean final test
accuracies of the rates tried other than 0 lie within SMALL_SPREAD of each other.
"""

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fmnist_jax import cli, replicas, rundir
from fmnist_jax.errors import UsageError

RATES = (0.0, 0.1, 0.25, 0.4, 0.5)
MODELS = ("mlp", "cnn")
EXERCISE_RATE = 0.25
FIELDS = ("final_test_loss", "min_test_loss", "final_test_accuracy")
# "Quite small" differences: the dropout rates' mean final test accuracies within one
# percentage point (about twice the eval-to-eval jitter of a final accuracy).
SMALL_SPREAD = 0.01
RESULT_FILE, FIGURE_FILE = "sweep.json", "sweep.png"
CAPTION = (
    "Dropout-rate sweep: final and minimum test loss and final test accuracy against the rate"
    " (mean over replicas, bars: 95 % interval)."
)


def sweep_config(model: str, rates, num_replicas: int, num_train_steps=None, synthetic=False):
    """The experiment `model`'s config as a population of the dropout `rates` x `num_replicas`
    seeds (`synthetic`: on random images, for smoke tests)."""
    from fmnist_jax import config as config_lib
    from fmnist_jax import population

    c = config_lib.load_experiment(model)
    if synthetic:
        c.dataset = "synthetic"
    c.name, c.num_replicas = f"{model}_sweep", num_replicas
    c.grid = population.format_grid({"dropout_rate": rates})
    if num_train_steps:
        c.num_train_steps = num_train_steps
        c.checkpoint_every_steps = c.eval_every_steps * max(
            1, num_train_steps // c.eval_every_steps // 4
        )
    return c


def train_all(runs_dir: Path, models, rates, num_replicas: dict, steps=None, **overrides):
    """Trains (or resumes, or skips when finished) each model's population of rates x seeds;
    `num_replicas` and `steps` map a model to its seeds and steps (0 or absent: the
    experiment's)."""
    from fmnist_jax import train

    for model in models:
        count = num_replicas[model]
        config = sweep_config(model, rates, count, (steps or {}).get(model) or None, **overrides)
        print(f"sweep: {model}, {len(rates)} rates x {count} seeds, one program", flush=True)
        train.train_and_evaluate(config, runs_dir / model)


def _paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Statistics of b − a, replica by replica."""
    return replicas.statistics([y - x for x, y in zip(a, b, strict=False)])


def model_verdict(per_rate: Mapping[float, Mapping[str, list[float]]]) -> dict:
    """The verdicts for one model from {rate: {field: per-replica values}}."""
    loss = {rate: values["final_test_loss"] for rate, values in per_rate.items()}
    best = min(loss, key=lambda r: sum(loss[r]) / len(loss[r]))
    verdict = {"best_rate": best}
    if EXERCISE_RATE in loss:
        diff = _paired_difference(loss[best], loss[EXERCISE_RATE])
        low, high = diff["interval"] if diff else (math.nan, math.nan)
        if best == EXERCISE_RATE:
            status = "the best"
        elif diff and diff["n"] > 1 and low <= 0.0:
            status = "within the noise of the best"
        else:
            status = "worse than the best"
        verdict.update(
            {
                "exercise_rate": status,
                "difference_to_best": diff,
                "difference_interval": [low, high],
            }
        )
    accuracy = {
        rate: sum(v["final_test_accuracy"]) / len(v["final_test_accuracy"])
        for rate, v in per_rate.items()
        if rate > 0
    }
    if accuracy:
        spread = max(accuracy.values()) - min(accuracy.values())
        verdict.update({"accuracy_spread": spread, "differences_small": spread <= SMALL_SPREAD})
    return verdict


def collect(runs_dir: Path, models, rates) -> dict:
    """sweep.json's content from the finished runs: per model and rate, each field's
    per-replica values and statistics, and the model's verdicts."""
    result = {"rates": list(rates), "models": {}}
    for model in models:
        run = rundir.read_run(runs_dir / model)
        if run.summary is None:
            raise UsageError(f"{run.path} has not finished: run the sweep again to resume")
        per_rate = {}
        for rate in rates:  # members of one rate, in seed order (paired across rates)
            rows = [r for r in run.summary["replicas"] if r["dropout_rate"] == rate]
            if not rows:
                raise UsageError(f"{run.path} has no members at dropout rate {rate:g}")
            per_rate[rate] = {f: [r[f] for r in rows] for f in FIELDS}
        result["models"][model] = {
            "num_replicas": min(len(v["final_test_loss"]) for v in per_rate.values()),
            "rates": {
                f"{rate:g}": {f: replicas.statistics(v[f]) for f in FIELDS}
                for rate, v in per_rate.items()
            },
            "verdict": model_verdict(per_rate),
        }
    return result


def format_markdown(result: Mapping) -> str:
    """The sweep's table (one row per model and rate) and one verdict line per model."""

    def cell(stats, accuracy=False):
        if not stats:
            return "—"
        scale, unit = (100, "%") if accuracy else (1, "")
        low, high = stats["interval"]
        return f"{stats['mean'] * scale:.4g}{unit} [{low * scale:.4g}, {high * scale:.4g}]"

    lines = [
        (
            "| model | steps | rate | replicas | final test loss | min test loss |"
            " final test accuracy |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    steps = result.get("num_train_steps") or {}
    verdicts = []
    for model, m in result["models"].items():
        for rate, stats in m["rates"].items():
            lines.append(
                f"| {model} | {steps.get(model, '?'):,} | {rate} | {m['num_replicas']} |"
                f" {cell(stats['final_test_loss'])} |"
                f" {cell(stats['min_test_loss'])} | {cell(stats['final_test_accuracy'], True)} |"
            )
        verdicts.append(f"- **{model}**: {verdict_line(m['verdict'])}")
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts)


def verdict_line(v: Mapping) -> str:
    parts = [f"lowest mean final test loss at rate {v['best_rate']:g}"]
    if "exercise_rate" in v:
        text = f"0.25 is {v['exercise_rate']}"
        diff = v.get("difference_to_best")
        if diff and v["exercise_rate"] != "the best":
            low, high = v["difference_interval"]
            text += f" (+{diff['mean']:.4f} [{low:+.4f}, {high:+.4f}] nats, paired)"
        parts.append(text)
    if "accuracy_spread" in v:
        small = "small" if v["differences_small"] else "not small"
        parts.append(
            f"the dropout rates' mean final test accuracies span {v['accuracy_spread'] * 100:.2f}"
            f" points: {small} (small: within {SMALL_SPREAD * 100:g})"
        )
    return "; ".join(parts)


def plot(result: Mapping):
    """Three panels against the rate, one line per model with 95 % interval bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    titles = ("final test loss", "minimum test loss", "final test accuracy")
    for ax, field, title in zip(fig.subplots(1, 3), FIELDS, titles, strict=True):
        for model, m in result["models"].items():
            rates = [float(r) for r in m["rates"]]
            stats = [m["rates"][r][field] for r in m["rates"]]
            mean = [s["mean"] for s in stats]
            err = [[s["mean"] - s["interval"][0] for s in stats]]
            err.append([s["interval"][1] - s["mean"] for s in stats])
            steps = (result.get("num_train_steps") or {}).get(model)
            detail = f"{steps:,} steps, " if steps else ""
            label = f"{model} ({detail}{m['num_replicas']} replicas)"
            ax.errorbar(rates, mean, yerr=err, marker="o", capsize=3, label=label)
        ax.axvline(EXERCISE_RATE, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("dropout rate")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(CAPTION)
    return fig


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--rates {text!r}: give comma-separated numbers in [0, 1)") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise UsageError(f"--rates {text!r}: give comma-separated numbers in [0, 1)")
    return values


def main() -> None:
    from absl import flags

    f = flags.FLAGS
    models = [m.strip() for m in f.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise UsageError(f"--models {f.models!r}: choose from {', '.join(MODELS)}")
    if f.replicas < 1 or f.cnn_replicas < 0:
        raise UsageError(
            f"--replicas must be at least 1 (--cnn_replicas 0 or more), got {f.replicas}"
        )
    rates, runs_dir = _floats(f.rates), Path(f.runs)
    steps = {m: f.num_train_steps for m in models}
    counts = {m: f.replicas for m in models}
    if "cnn" in steps:
        steps["cnn"] = f.cnn_train_steps or steps["cnn"]
        counts["cnn"] = f.cnn_replicas or counts["cnn"]
    train_all(runs_dir, models, rates, counts, steps, synthetic=f.synthetic)
    result = collect(runs_dir, models, rates)
    result["num_train_steps"] = {
        m: rundir.read_run(runs_dir / m).config["num_train_steps"] for m in models
    }
    result["synthetic"] = f.synthetic
    rundir.write_json(runs_dir / RESULT_FILE, result)
    plot(result).savefig(runs_dir / FIGURE_FILE, dpi=120)
    print(format_markdown(result))
    print(f"wrote {runs_dir / RESULT_FILE} and {runs_dir / FIGURE_FILE}", file=sys.stderr)


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("runs", "runs/sweep", "Folder for the sweep's runs, sweep.json and .png.")
    flags.DEFINE_string("models", ",".join(MODELS), "Models to sweep: mlp, cnn.")
    flags.DEFINE_string("rates", ",".join(f"{r:g}" for r in RATES), "Dropout rates.")
    flags.DEFINE_integer("replicas", 3, "Replicas per rate (one program each).")
    flags.DEFINE_integer("num_train_steps", 0, "Override every run's steps (0: the experiment's).")
    flags.DEFINE_integer("cnn_train_steps", 0, "Override the ConvNet runs' steps (0: as above).")
    flags.DEFINE_integer("cnn_replicas", 0, "The ConvNet runs' replicas (0: --replicas).")
    flags.DEFINE_bool("synthetic", False, "Random images instead of Fashion-MNIST (smoke tests).")


if __name__ == "__main__":
    cli.run(main, define_flags)
