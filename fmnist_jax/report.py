"""REPORT.md from what the runs left: nothing is rerun or drawn (no matplotlib, no TensorFlow).

    python -m fmnist_jax.report --runs runs --figures figures --out REPORT.md

Each experiment contributes what it declares (`fmnist_jax.declarations`); the numbers it quotes
go to results.json beside the report, with the commit, date and machine (`fmnist_jax.results`).
"""

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import flags

from fmnist_jax import claims, cli, declarations, results, rundir, splits, verdicts
from fmnist_jax.claims import ADVERSARIAL_RUN
from fmnist_jax.config import experiment_names
from fmnist_jax.rundir import Run
from fmnist_jax.verdicts import Verdict

LEGENDS = {  # a figure's colours, by how many runs it draws (plotting.curves.COLORS)
    1: "blue = train, orange = test",
    2: "blue / orange = train / test without dropout, green / pink = with dropout",
}
THEORY_FILE = "theory.json"  # written by `make theory` into the runs folder


def load_runs(runs_dir: str | os.PathLike) -> dict[str, Run | None]:
    """Each experiment's run in the report's order (None: no summary.json)."""
    runs = {}
    for name in experiment_names():
        path = Path(runs_dir) / name
        runs[name] = rundir.read_run(path) if (path / rundir.SUMMARY_FILE).is_file() else None
    return {d.name: runs[d.name] for d in declarations.experiments(runs)}


def load_adversarial(runs_dir: str | os.PathLike) -> dict | None:
    """The attack's summary.json (None when it has not run)."""
    return rundir.read_json(Path(runs_dir) / ADVERSARIAL_RUN / rundir.SUMMARY_FILE)


def load_attack_replicas(runs_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """`make study`'s attacks: experiment -> its replicas' attack summaries, in order."""
    folder, found = Path(runs_dir) / claims.ATTACK_REPLICAS_RUN, {}
    for run in experiment_names():
        found[run] = []
        while s := rundir.read_json(folder / run / str(len(found[run])) / rundir.SUMMARY_FILE):
            found[run].append(s)
    return found


def _fmt(value, kind: str = "loss") -> str:
    """A number for a table: accuracies as %, losses to 4 decimals, steps with commas."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    if kind == "accuracy":
        return f"{value:.2%}"
    if kind == "step":
        return f"{int(value):,}"
    return f"{value:.4f}" if kind == "loss" else f"{value:.4g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(line) + " |" for line in [header, *rows]]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])


def _mean_interval(mean: float, low: float, high: float, kind: str) -> str:
    return f"{_fmt(mean, kind)} [{_fmt(low, kind)}, {_fmt(high, kind)}]"


def _stat(s: Mapping, key: str, kind: str) -> str:
    """A result of summary.json: a run of one's value, else the replicas' mean and interval."""
    stats = (s.get("statistics") or {}).get(key)
    if stats is None or stats.get("n", 1) <= 1:
        return _fmt((s.get("replicas") or [s])[0].get(key), kind)
    return _mean_interval(stats["mean"], *stats["interval"], kind)


def _at_step(s: Mapping, key: str, kind: str) -> str:
    value = _stat(s, key, kind)
    return value if value == "—" else f"{value} (step {_stat(s, key + '_step', 'step')})"


def _gap(s: Mapping) -> str:
    gap = results.final_gap(s)
    if gap is None:
        return "—"
    if gap["n"] == 1:
        return _fmt(gap["mean"])
    return _mean_interval(gap["mean"], *gap["interval"], "loss")


RESULTS_HEADER = (
    "run", "model", "dropout", "replicas", "steps", "final test acc", "best test acc (step)",
    "final test loss", "min test loss (step)", "final train loss", "final gap (test − train)",
)  # fmt: skip


def summary_row(name: str, s: Mapping) -> list[str]:
    """One row of the results table (RESULTS_HEADER) from a run's summary.json."""
    return [
        name,
        str(s.get("model", "?")),
        _fmt(s.get("dropout_rate"), "number"),
        str(s.get("num_replicas", 1)),
        _fmt(s.get("steps"), "step"),
        _stat(s, "final_test_accuracy", "accuracy"),
        _at_step(s, "best_test_accuracy", "accuracy"),
        _stat(s, "final_test_loss", "loss"),
        _at_step(s, "min_test_loss", "loss"),
        _stat(s, "final_train_loss", "loss"),
        _gap(s),
    ]


def _finished(runs: Mapping[str, Run | None]) -> dict[str, dict]:
    return {name: run.summary for name, run in runs.items() if run is not None}


def results_table(runs: Mapping[str, Run | None]) -> str:
    rows = [summary_row(name, s) for name, s in _finished(runs).items()]
    return table(RESULTS_HEADER, rows) if rows else "*No finished run (no summary.json) found.*"


DATA_KEYS = ("source", "location", "num_train", "num_test", "split")


def data_section(runs: Mapping[str, Run | None]) -> str:
    """One line per distinct data source: its provenance, size, location and the runs using it."""
    groups: dict[tuple, list[str]] = {}
    for name, s in _finished(runs).items():
        data = s.get("data") or {}
        groups.setdefault(tuple((k, data[k]) for k in DATA_KEYS if k in data), []).append(name)
    lines = []
    for key, names in groups.items():
        data = dict(key)
        lines.append(
            f"- **{data.get('source')}** ({', '.join(names)}): {splits.provenance(data)}; "
            f"{_fmt(data.get('num_train'), 'step')} train / {_fmt(data.get('num_test'), 'step')}"
            f" test examples from `{data.get('location')}`."
        )
    return "\n".join(lines) or "*No finished run: data source unknown.*"


def device_section(runs: Mapping[str, Run | None]) -> str:
    """Where each run ran, how fast, and the versions of the stack."""
    rows, versions = [], {}
    for name, s in _finished(runs).items():
        device = f"{s.get('device_kind', '?')} × {s.get('device_count', '?')}"
        wall = s.get("wall_time_total_s", s.get("wall_time_s"))  # a resumed run's every process
        speed = [_fmt(wall, "number"), _fmt(s.get("images_per_sec"), "number")]
        count = str(s.get("num_replicas", 1))
        rows.append([name, str(s.get("backend", "?")), device, count, *speed])
        line = ", ".join(f"{k} {v}" for k, v in sorted((s.get("versions") or {}).items()))
        versions.setdefault(line or "versions not recorded", []).append(name)
    if not rows:
        return "*No finished run.*"
    header = ["run", "backend", "device × count", "replicas", "wall time (s)", "images/s (all)"]
    # wall time: every process's that trained the run; images/s: the last one's
    version_lines = [f"- {line} ({', '.join(names)})" for line, names in versions.items()]
    return table(header, rows) + "\n\nVersions:\n\n" + "\n".join(version_lines)


def claims_table(verdicts: Sequence[Verdict]) -> str:
    rows = [[v.claim, f"**{v.status}**", v.evidence] for v in verdicts]
    return table(["claim (exercise)", "verdict", "numbers"], rows)


def adversarial_table(adversarial: Mapping) -> str:
    """One row per method, one column per numeric field any method reports."""
    methods = {name: result or {} for name, result in (adversarial.get("methods") or {}).items()}
    numeric = (k for r in methods.values() for k, v in r.items() if _fmt(v, "number") != "—")
    fields = list(dict.fromkeys(numeric))
    if not fields:
        return f"*{ADVERSARIAL_RUN}/summary.json lists no per-method numbers.*"
    rows = [[name] + [_fmt(r.get(f), "number") for f in fields] for name, r in methods.items()]
    return table(["method", *fields], rows)


def _image(path: Path | None, caption: str, out_dir: Path, missing: str) -> str:
    if path is None or not path.is_file():
        return f"**{caption}**\n\n*{missing}*"
    link = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    return f"**{caption}**\n\n![{caption}]({link})"


def figures_section(figures_dir: Path, out_dir: Path, runs: Mapping | None = None) -> str:
    """The declared figures, linked relative to the report's folder (a note where missing)."""
    blocks = []
    for d in declarations.figures(declarations.experiments(runs)):
        missing = f"not drawn yet: needs runs {', '.join(d.runs)}, then `make figures`"
        caption = f"{d.title}; {LEGENDS[len(d.runs)]}."
        blocks.append(_image(figures_dir / d.figure, caption, out_dir, missing))
    return "\n\n".join(blocks)


def fig7_caption(adversarial: Mapping | None) -> str:
    """Figure 7's caption, naming the method that drew it (the attack's default)."""
    name = (adversarial or {}).get("default_method")
    result = ((adversarial or {}).get("methods") or {}).get(name) or {}
    rule = f" by the method {name!r}" if name else ""
    budget = f", at most {result['max_steps']:,} steps" if result.get("max_steps") else ""
    reading = f", L1 read as its {result['l1_reduction']}" if result.get("l1_reduction") else ""
    return f"Figure 7: adversarial examples{rule}{budget}{reading}: original, noise, adversarial."


def adversarial_section(adversarial: Mapping | None, runs_dir: Path, out_dir: Path) -> str:
    """The attack's per-method table (or a note) and Figure 7."""
    adv_dir = runs_dir / ADVERSARIAL_RUN
    missing = f"*Not run yet: no {adv_dir / rundir.SUMMARY_FILE}.*"
    methods = missing if adversarial is None else adversarial_table(adversarial)
    fig7 = _image(
        adv_dir / "figure.png", fig7_caption(adversarial), out_dir, f"no {adv_dir / 'figure.png'}"
    )
    return methods + "\n\n" + fig7


def theory_section(theory: Mapping | None) -> str:
    """Exercise §1 from `make theory`'s runs/theory.json (a note when it has not run)."""
    from fmnist_jax.theory import format_report

    if theory is None:
        return f"*Not run yet: `make theory` writes runs/{THEORY_FILE}.*"
    return (
        "**1.1** max{t, o} = relu(o − t) + t: the thresholds fold into the biases, exactly but"
        " for SAME convolutions padded with 0 (the border taps; `folding.same_padding_gap`"
        " predicts the error). **1.2** σ' = σ − σ² reuses the forward value: fewer equations in"
        " `jax.grad`'s jaxpr, and finite where the naive chain rule gives NaN.\n\n"
        f"```text\n{format_report(theory)}\n```"
    )


def load_sweep(runs_dir: Path) -> dict | None:
    """`make sweep`'s sweep.json (None when it has not run)."""
    from fmnist_jax import sweep

    return rundir.read_json(runs_dir / sweep.SWEEP_DIR / sweep.RESULT_FILE)


def sweep_section(runs_dir: Path, out_dir: Path) -> str:
    """`make sweep`'s table, verdicts and figure (a note when it has not run)."""
    from fmnist_jax import sweep

    folder, result = runs_dir / sweep.SWEEP_DIR, load_sweep(runs_dir)
    if result is None:
        return f"*Not run yet: `make sweep` writes {folder / sweep.RESULT_FILE}.*"
    figure = _image(folder / sweep.FIGURE_FILE, sweep.CAPTION, out_dir, "figure missing")
    return sweep.format_markdown(result) + "\n\n" + figure


def render_report(
    runs: Mapping[str, Run | None],
    adversarial: Mapping | None,
    figures_dir: Path,
    runs_dir: Path,
    out_dir: Path,
    checked: Sequence[Verdict],
) -> str:
    """The whole report as markdown, with the claims' verdicts `checked`; image links are
    relative to `out_dir`."""
    theory = rundir.read_json(runs_dir / THEORY_FILE)
    sections = [
        "# Fashion-MNIST ConvNets: reproduction report",
        f"Generated by `python -m fmnist_jax.report` from `{runs_dir}` and `{figures_dir}`;"
        + " every number is read from the runs' `summary.json` and `metrics.jsonl`.",
        "## Data\n\n" + data_section(runs),
        "## Theory (exercise §1)\n\n" + theory_section(theory),
        "## Claims of the exercise\n\n" + claims_table(checked),
        "## Results\n\n" + results_table(runs),
        "## Figures\n\n" + figures_section(figures_dir, out_dir, runs),
        "## Adversarial examples\n\n" + adversarial_section(adversarial, runs_dir, out_dir),
        "## Dropout-rate sweep (exercise §2.4)\n\n" + sweep_section(runs_dir, out_dir),
        "## Device and versions\n\n" + device_section(runs),
    ]
    return "\n\n".join(sections) + "\n"


def write_report(
    runs_dir: str | os.PathLike, figures_dir: str | os.PathLike, out: str | os.PathLike
) -> Path:
    """Reads the runs, checks the claims, writes the markdown report to `out` and its numbers
    beside it (`results.RESULTS_FILE`)."""
    runs_dir, figures_dir, out = Path(runs_dir), Path(figures_dir), Path(out)
    runs = load_runs(runs_dir)
    for d in declarations.experiments(runs):  # those the report reads: a figure or claims
        if runs[d.name] is None and (d.figure or d.claims):
            print(f"warning: run {runs_dir / d.name} missing (no summary.json)", file=sys.stderr)
    adversarial, attacks = load_adversarial(runs_dir), load_attack_replicas(runs_dir)
    checked = verdicts.check_claims(runs, adversarial, attacks)
    text = render_report(runs, adversarial, figures_dir, runs_dir, out.parent, checked)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    theory, sweep = rundir.read_json(runs_dir / THEORY_FILE), load_sweep(runs_dir)
    numbers = results.collect(_finished(runs), checked, adversarial, sweep, theory)
    rundir.write_json(out.parent / results.RESULTS_FILE, numbers)
    return out


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("runs", "runs", "Folder holding one workdir per run.")
    flags.DEFINE_string("figures", "figures", "Folder holding the figure PNGs.")
    flags.DEFINE_string("out", "REPORT.md", "The markdown file to write.")


def main() -> None:
    out = write_report(FLAGS.runs, FLAGS.figures, FLAGS.out)
    print(f"wrote {out} and {out.parent / results.RESULTS_FILE}")


if __name__ == "__main__":
    cli.run(main, define_flags)
