"""The dropout-rate sweep (exercise §2.4): "different probabilities were taken, but 0.25
achieved the best performance (although the differences were quite small)". Each experiment
declaring `report.sweep_rates` is one population of its rates x seeds, each member trained
once: a rate that an experiment trains (cnn: 0, cnn_dropout: 0.25) is read from, or trained
into, that experiment's own run folder; the other rates are one program in runs/sweep/<model>.

    python -m fmnist_jax.sweep --runs runs [--models mlp,cnn] [--rates 0,0.25,0.5]
        [--replicas 3] [--replicas cnn=2] [--num_train_steps N] [--num_train_steps cnn=N]
"""

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import flags

from fmnist_jax import cli, declarations, plotting, replicas, rundir
from fmnist_jax.errors import UsageError
from fmnist_jax.report import table

FLAGS = flags.FLAGS

EXERCISE_RATE = 0.25
FIELDS = ("final_test_loss", "min_test_loss", "final_test_accuracy")
SMALL_SPREAD = 0.01  # one accuracy point (docs/populations.md)
RESULT_FILE, FIGURE_FILE = "sweep.json", "sweep.png"  # in SWEEP_DIR
SWEEP_DIR = "sweep"  # the runs folder's sub-folder for the rates no experiment trains
CAPTION = (
    "Dropout-rate sweep: final and minimum test loss and final test accuracy against the rate"
    " (mean over replicas, bars: 95 % interval)."
)


def sweep_config(model: str, rates, num_replicas: int, num_train_steps=None, synthetic=False):
    """Experiment `model`'s config as a population of `rates` x `num_replicas` seeds."""
    from fmnist_jax import population

    c = _experiment(model, num_replicas, synthetic)
    c.name = f"{model}_sweep"
    c.grid = population.format_grid({"dropout_rate": rates})
    if num_train_steps:
        c.num_train_steps = num_train_steps
        c.checkpoint_every_steps = c.eval_every_steps * max(
            1, num_train_steps // c.eval_every_steps // 4
        )
    return c


def _experiment(name: str, num_replicas: int, synthetic: bool):
    from fmnist_jax import config as config_lib

    c = config_lib.load_experiment(name)
    c.num_replicas = num_replicas
    if synthetic:
        c.dataset = "synthetic"
    return c


def _without(config, fields=("name", "report", "dropout_rate")) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in fields}


def family(model: str) -> dict[float, str]:
    """The experiments that are points of `model`'s population, by dropout rate: `model` itself
    and each declaring `report.dropout_of=model` whose config differs from its only there."""
    from fmnist_jax import config as config_lib

    base = config_lib.load_experiment(model)
    found = {float(base.dropout_rate): model}
    for d in declarations.experiments():
        other = config_lib.load_experiment(d.name) if d.dropout_of == model else None
        if other is not None and _without(other) == _without(base):
            found.setdefault(float(other.dropout_rate), d.name)
    return found


def sources(model: str, rates: Sequence[float], steps: int) -> dict[float, str]:
    """rate -> where its members live: an experiment's own run folder ("cnn", "cnn_dropout": the
    run `make cnn` trains) where the sweep runs at that experiment's length, else the sweep's
    population folder (`SWEEP_DIR`/<model>) for every other rate."""
    own = family(model) if not steps else {}
    return {rate: own.get(rate, f"{SWEEP_DIR}/{model}") for rate in rates}


def train_all(runs_dir: Path, plan: Mapping[str, tuple], synthetic: bool = False) -> None:
    """Trains, resumes or skips each member of `plan` (see `plan`) once: the rates served by an
    experiment in its own folder, the other rates as one population."""
    from fmnist_jax import train

    for model, (rates, count, steps) in plan.items():
        population = f"{SWEEP_DIR}/{model}"
        rest = []
        for rate, folder in sources(model, rates, steps).items():
            if folder == population:
                rest.append(rate)
                continue
            print(f"sweep: {model} at rate {rate:g} is {runs_dir / folder}", flush=True)
            train.train_and_evaluate(_experiment(folder, count, synthetic), runs_dir / folder)
        if rest:
            config = sweep_config(model, rest, count, steps or None, synthetic)
            print(f"sweep: {model}, {len(rest)} rates x {count} seeds, one program", flush=True)
            train.train_and_evaluate(config, runs_dir / population)


def model_verdict(per_rate: Mapping[float, Mapping[str, list[float]]]) -> dict:
    """From {rate: {field: per-seed values}}: whether 0.25 is the best, within the noise of the
    best or worse, and whether the differences are small (docs/populations.md)."""
    loss = {rate: values["final_test_loss"] for rate, values in per_rate.items()}
    best = min(loss, key=lambda r: sum(loss[r]) / len(loss[r]))
    verdict = {"best_rate": best}
    if EXERCISE_RATE in loss:
        pairs = zip(loss[best], loss[EXERCISE_RATE], strict=False)
        diff = replicas.statistics([exercise - lowest for lowest, exercise in pairs])
        low, high = diff["interval"] if diff else (math.nan, math.nan)
        if best == EXERCISE_RATE:
            status = "the best"
        elif diff and diff["n"] > 1 and low <= 0.0:
            status = "within the noise of the best"
        else:
            status = "worse than the best"
        verdict["exercise_rate"] = status
        verdict["difference_to_best"], verdict["difference_interval"] = diff, [low, high]
    accuracy = {
        rate: sum(v["final_test_accuracy"]) / len(v["final_test_accuracy"])
        for rate, v in per_rate.items()
        if rate > 0
    }
    if accuracy:
        spread = max(accuracy.values()) - min(accuracy.values())
        verdict.update({"accuracy_spread": spread, "differences_small": spread <= SMALL_SPREAD})
    return verdict


def _members(run: rundir.Run, rate: float) -> list[rundir.Run]:
    """The members of `run` at dropout `rate`, in seed order (a plain run's are all at its own)."""
    if run.summary is None:
        raise UsageError(f"{run.path} has not finished: run the sweep again to resume")
    found = [m for m in run.members() if m.config.get("dropout_rate") == rate]
    if not found:
        raise UsageError(f"{run.path} has no members at dropout rate {rate:g}")
    return found


def collect(runs_dir: Path, plan: Mapping[str, tuple]) -> dict:
    """sweep.json: per experiment of `plan` and rate, each field's statistics over the seeds
    (paired across rates), the verdicts, each experiment's steps and where each rate was read."""
    every_rate = sorted({r for rates, _, _ in plan.values() for r in rates})
    result = {"rates": every_rate, "models": {}, "num_train_steps": {}, "sources": {}}
    for model, (rates, _, steps) in plan.items():
        where = sources(model, rates, steps)
        runs = {rate: rundir.read_run(runs_dir / folder) for rate, folder in where.items()}
        members = {rate: _members(runs[rate], rate) for rate in rates}
        labels = {f"rate {rate:g} ({runs[rate].path})": m for rate, m in members.items()}
        unpaired = rundir.unpaired(labels)
        if unpaired:
            raise UsageError(f"{model}: {unpaired}")
        count = min(len(m) for m in members.values())
        per_rate = {
            rate: {f: [m.summary[f] for m in members[rate][:count]] for f in FIELDS}
            for rate in rates
        }
        result["models"][model] = {
            "num_replicas": count,
            "rates": {
                f"{rate:g}": {f: replicas.statistics(v[f]) for f in FIELDS}
                for rate, v in per_rate.items()
            },
            "verdict": model_verdict(per_rate),
        }
        result["num_train_steps"][model] = runs[rates[0]].config["num_train_steps"]
        result["sources"][model] = {f"{rate:g}": folder for rate, folder in where.items()}
    return result


def format_markdown(result: Mapping) -> str:
    """The sweep's table (one row per model and rate) and one verdict line per model."""

    def cell(stats, accuracy=False):
        if not stats:
            return "—"
        scale, unit = (100, "%") if accuracy else (1, "")
        low, high = stats["interval"]
        return f"{stats['mean'] * scale:.4g}{unit} [{low * scale:.4g}, {high * scale:.4g}]"

    header = ["model", "steps", "rate", "replicas", *(f.replace("_", " ") for f in FIELDS)]
    rows, steps, verdicts = [], result.get("num_train_steps") or {}, []
    for model, m in result["models"].items():
        count = f"{steps[model]:,}" if model in steps else "?"
        for rate, stats in m["rates"].items():
            cells = [cell(stats[f], f.endswith("accuracy")) for f in FIELDS]
            rows.append([model, count, rate, str(m["num_replicas"]), *cells])
        verdicts.append(f"- **{model}**: {verdict_line(m['verdict'])}")
    return table(header, rows) + "\n\n" + "\n".join(verdicts)


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


def _floats(text: str, where: str = "--rates") -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v < 1 for v in values):
        raise UsageError(f"{where} {text!r}: give comma-separated numbers in [0, 1)")
    return values


def per_experiment(
    flag: str, values: Sequence[str], names: Sequence[str], default: int, least: int
):
    """Each experiment's value of a flag given as N for all or <experiment>=N for one (which
    wins), comma-separated or repeated; else `default`."""
    found = {"": default}
    for item in (i.strip() for v in values for i in v.split(",") if i.strip()):
        name, _, number = item.rpartition("=")
        if name not in ("", *names) or not number.isdigit() or int(number) < least:
            raise UsageError(f"--{flag} {item!r}: give N or <experiment>=N for {', '.join(names)}")
        found[name] = int(number)
    return {name: found.get(name, found[""]) for name in names}


def plan(f) -> dict[str, tuple]:
    """experiment -> (rates, seeds, steps) from the flags `f` and the declarations."""
    declared = {d.name: d.sweep_rates for d in declarations.experiments() if d.sweep_rates}
    models = [m.strip() for m in f.models.split(",") if m.strip()] or list(declared)
    if any(m not in declared for m in models) or not models:
        raise UsageError(f"--models {f.models!r}: choose from {', '.join(declared)}")
    counts = per_experiment("replicas", f.replicas, list(declared), 3, least=1)
    steps = per_experiment("num_train_steps", f.num_train_steps, list(declared), 0, least=0)
    found = {}
    for m in models:
        where = f"experiment {m!r}: report.sweep_rates"
        rates = _floats(f.rates) if f.rates else _floats(",".join(declared[m]), where)
        found[m] = (rates, counts[m], steps[m])
    return found


def main() -> None:
    plotting.require_matplotlib()
    runs_dir, todo = Path(FLAGS.runs), plan(FLAGS)
    train_all(runs_dir, todo, FLAGS.synthetic)
    result = collect(runs_dir, todo)
    result["synthetic"] = FLAGS.synthetic
    folder = runs_dir / SWEEP_DIR
    rundir.write_json(folder / RESULT_FILE, result)
    plot(result).savefig(folder / FIGURE_FILE, dpi=120)
    print(format_markdown(result))
    print(f"wrote {folder / RESULT_FILE} and {folder / FIGURE_FILE}", file=sys.stderr)


def define_flags() -> None:
    flags.DEFINE_string("runs", "runs", "The runs folder: experiments' runs, sweep/ for the rest.")
    flags.DEFINE_string("models", "", "Experiments to sweep (default: those declaring rates).")
    flags.DEFINE_string("rates", "", "Dropout rates (default: each experiment's declared).")
    flags.DEFINE_multi_string("replicas", [], "Seeds per rate (3): N, or <experiment>=N.")
    flags.DEFINE_multi_string("num_train_steps", [], "Steps (0: the experiment's), as above.")
    flags.DEFINE_bool("synthetic", False, "Random images instead of Fashion-MNIST (smoke tests).")


if __name__ == "__main__":
    cli.run(main, define_flags)
