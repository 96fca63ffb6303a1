"""results.json: every number REPORT.md quotes, with the commit, date and machine that wrote it,
and the check that a text (README.md's Results section) quotes only numbers such a file holds.

`make report` writes it beside REPORT.md; a fresh clone's copy committed as results/<name>.json
is the one source of the numbers README.md quotes (tests/test_readme_results.py).
"""

import dataclasses
import datetime
import os
import platform
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from fmnist_jax import claims, replicas, runtime
from fmnist_jax.summary import RESULT_FIELDS
from fmnist_jax.verdicts import Verdict

RESULTS_FILE = "results.json"  # beside REPORT.md
# What REPORT.md quotes of a run's summary.json besides its RESULT_FIELDS (a run of one has
# them at the top; docs/training.md says what each holds).
RUN_FIELDS = (
    "model", "dropout_rate", "num_replicas", "steps", "statistics", "replicas", "backend",
    "device_kind", "device_count", "wall_time_s", "wall_time_total_s", "images_per_sec", "data",
    "versions",
)  # fmt: skip


def _git(*args: str) -> str | None:
    """`git args` in the package's folder (None: no git, or not a checkout)."""
    try:
        done = subprocess.run(
            ["git", *args],
            check=False,
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance() -> dict:
    """The code's commit ("unknown" outside a checkout), whether its tracked files differed from
    it (None: unknown), the UTC date and the machine writing the file."""
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": None if changes is None else bool(changes),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "jax": runtime.installed_version("jax"),
        },  # no backend: the report never starts one (each run's summary names its own)
    }


def final_gap(summary: Mapping) -> dict | None:
    """Statistics of the replicas' final test − train loss (None: a loss is missing)."""
    try:
        return replicas.statistics(
            [claims.final_gap(r) for r in summary.get("replicas") or [summary]]
        )
    except claims.MissingData:
        return None


def run_results(summary: Mapping) -> dict:
    """A run's numbers REPORT.md quotes: those of RUN_FIELDS and RESULT_FIELDS its summary.json
    holds, and its final gap."""
    found = {k: summary[k] for k in (*RUN_FIELDS, *RESULT_FIELDS) if k in summary}
    return found | {"final_gap": final_gap(summary)}


def attack_results(adversarial: Mapping | None) -> dict | None:
    """The attack's method, threshold and each method's numbers (None: it has not run)."""
    if adversarial is None:
        return None
    keys = ("default_method", "threshold", "num_images", "seed", "methods")
    return {k: adversarial.get(k) for k in keys}


def collect(
    summaries: Mapping[str, Mapping],
    verdicts: Sequence[Verdict],
    adversarial: Mapping | None,
    sweep: Mapping | None,
    theory: Mapping | None,
) -> dict:
    """results.json's content from what the report read and checked (`summaries`: finished runs)."""
    return {
        "provenance": provenance(),
        "runs": {name: run_results(s) for name, s in summaries.items()},
        "verdicts": [dataclasses.asdict(v) for v in verdicts],
        "adversarial": attack_results(adversarial),
        "sweep": sweep,
        "theory": theory,
    }


# A quoted number: one with a decimal point or thousands separators, signed or not (not a part
# of a version such as 0.12.8 or of a list such as 0,0.25).
NUMBER = re.compile(r"[+−-]?(?<![\d.,])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![\d.,]*\d)")
CODE = re.compile(r"`[^`]*`")  # a command's numbers are not quoted results
PARTS = ("adversarial", "sweep", "theory")  # results.json's parts a README table row may name


def _normal(token: str) -> str:
    """A number as text without '+', thousands separators or a typographic minus."""
    return token.replace("−", "-").replace(",", "").lstrip("+")


def quoted_numbers(text: str) -> list[str]:
    """The numbers `text` quotes (NUMBER) outside `code`, as written."""
    return NUMBER.findall(CODE.sub(" ", text))


def _leaves(tree) -> Iterator:
    """Every value of a JSON tree that is neither a mapping nor a list."""
    if isinstance(tree, Mapping):
        tree = list(tree.values())
    if isinstance(tree, list | tuple):
        for item in tree:
            yield from _leaves(item)
    else:
        yield tree


def unquoted(text: str, results: Mapping | None) -> list[str]:
    """The numbers `text` quotes that `results` does not hold: a number matches a value that,
    or 100 times which (a percentage), rounds to it at its decimals, or the same number written
    in one of the file's texts (a verdict's evidence). A table row whose first cell names a run
    (`cnn-dropout`) or a part of the file (`adversarial`) is matched against that part alone, so
    that one run's number quoted on another's row is told; a row naming in `code` a run the file
    lacks is told by that name. No file: every number is unquoted."""
    missing = []
    for line in text.splitlines():
        name, part = _part(line, results or {})
        missing += _unquoted(line, part) if part is not None else [f"{name} (not in the file)"]
    return missing


def _part(line: str, results: Mapping) -> tuple[str, Mapping | None]:
    """What a README line quotes: the run or part its table row's first cell names (None: a
    `code` name the file holds neither as a run nor as a part), else the whole file."""
    first = line.strip().strip("|").split("|")[0].strip() if line.lstrip().startswith("|") else ""
    name = first.strip("`").replace("-", "_")
    runs = results.get("runs") or {}
    found = runs.get(name, results.get(name) if name in PARTS else None)
    if isinstance(found, Mapping):
        return first, found
    named = first.startswith("`") and first.endswith("`") and len(first) > 1
    return first, None if named and results else results


def _unquoted(text: str, results: Mapping) -> list[str]:
    leaves = list(_leaves(results))
    values = [v for v in leaves if isinstance(v, int | float) and not isinstance(v, bool)]
    written = {_normal(t) for s in leaves if isinstance(s, str) for t in quoted_numbers(s)}
    forms: dict[int, set[str]] = {}  # decimals -> every value, and 100 times it, so rounded
    missing = []
    for token in quoted_numbers(text):
        number = _normal(token)
        places = len(number.partition(".")[2])
        if places not in forms:
            forms[places] = {f"{v * scale:.{places}f}" for v in values for scale in (1, 100)}
        if number not in forms[places] and number not in written:
            missing.append(token)
    return missing


def section(markdown: str, title: str) -> str:
    """The text of the `## title` section of `markdown` (up to the next `## `), or ""."""
    match = re.search(
        rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL
    )
    return match.group(1) if match else ""
