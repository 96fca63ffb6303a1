"""A run's TensorBoard event files and hparams, rewritten on resume from what the run kept."""

import json
from pathlib import Path

from absl import logging
from flax import traverse_util

from fmnist_jax import population, runtime
from fmnist_jax.rundir import COLLECTIONS

SCALARS_FILE = "scalars.jsonl"  # scalars logged between evaluations (CLU's progress)
EVENTS_GLOB = "events.out.tfevents.*"


def _flat(d: dict) -> dict:
    """A nested config as TensorBoard hparams: dotted names, values bool, int, float or str."""
    flat = traverse_util.flatten_dict(d, sep=".")
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flat.items()}


class ProgressWriter:
    """A CLU writer that also appends its scalars to scalars.jsonl, for a resume to replay."""

    def __init__(self, writer, workdir: Path, collection: str):
        self.inner, self._path, self._collection = writer, Path(workdir) / SCALARS_FILE, collection

    def write_scalars(self, step: int, scalars) -> None:
        self.inner.write_scalars(step, scalars)
        line = {"collection": self._collection, "step": int(step)}
        line.update({k: float(v) for k, v in scalars.items()})
        with open(self._path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def __getattr__(self, name):
        return getattr(self.inner, name)


class NoEvents:
    """A CLU writer that writes nothing: processes other than 0, or no TensorFlow."""

    def _ignore(self, *args) -> None:
        del args

    write_scalars = write_hparams = flush = close = _ignore


def _metric_writers():
    """CLU's `metric_writers`, or None with one warning without TensorFlow or tensorboard."""

    def missing(package: str, command: str) -> None:
        logging.warning(
            "no TensorBoard event files: they need %s (%s); metrics.jsonl, checkpoints and"
            " summary.json are written as usual",
            package,
            command,
        )

    return runtime.import_beside_tensorflow("clu.metric_writers", missing)


def sessions(config: dict) -> dict[str, dict]:
    """{folder: hparams}: the workdir's ("") or each population member's, with its values."""
    if not population.is_population(config):
        return {"": _flat(config)}
    return {
        population.member_name(m): {**_flat(config), **population.hyperparameters(m), **seed}
        for m in population.members(config)
        for seed in [{"seed": m["seed"]}]
    }


def folders(config: dict) -> list[str]:
    """`train` and `test`, under `replica_<k>/` or `<member name>/` for several members."""
    count = config["num_replicas"]
    if population.is_population(config):
        prefixes = [population.member_name(m) for m in population.members(config)]
    else:
        prefixes = [f"replica_{k}" for k in range(count)] if count > 1 else [""]
    return [f"{p}/{c}" if p else c for p in prefixes for c in COLLECTIONS]


def _folder(record: dict, collection: str, writers: dict) -> str:
    point = "point" in record
    prefix = population.member_name(record) if point else f"replica_{record['replica']}"
    nested = f"{prefix}/{collection}"
    return nested if nested in writers else collection


def write_record(writers: dict, record: dict) -> None:
    """One evaluation record into its member's `train` and `test` writers (tags unprefixed)."""
    for collection in COLLECTIONS:
        prefix = collection + "_"
        scalars = {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}
        writer = writers[_folder(record, collection, writers)]
        getattr(writer, "inner", writer).write_scalars(record["step"], scalars)


def progress_writer(writers: dict):
    """The writer CLU's progress scalars go to (the first train folder's)."""
    return next(w for name, w in writers.items() if name.endswith("train"))


def kept_scalars(workdir: Path, up_to_step: int) -> list[dict]:
    """scalars.jsonl's lines up to `up_to_step`, the later of repeats; cut lines skipped."""
    path = Path(workdir) / SCALARS_FILE
    latest: dict[tuple, float] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry["step"] <= up_to_step:
            for tag, value in entry.items():
                if tag not in ("collection", "step"):
                    latest[(entry["collection"], entry["step"], tag)] = value
    lines: dict[tuple, dict] = {}
    for (collection, step, tag), value in sorted(latest.items()):
        lines.setdefault((step, collection), {"collection": collection, "step": step})[tag] = value
    return [lines[k] for k in sorted(lines)]


def earlier_seconds(workdir: Path, up_to_step: int) -> float:
    """What earlier processes spent training this run up to `up_to_step`: each one's last
    progress `uptime` (it starts again with every process) in the kept scalars; 0 for none. A
    process's steps past its last progress line, or past the checkpoint resumed, are not in it."""
    total = last = 0.0
    for line in kept_scalars(workdir, up_to_step):
        uptime = line.get("uptime")
        if uptime is None:
            continue
        if uptime < last:  # a later process's first line
            total += last
        last = uptime
    return total + last


def open_writers(
    workdir: Path, config: dict, history: list[dict], up_to_step: int, just_logging=False
) -> dict:
    """A writer per folder, its event files rewritten with `history` and kept scalars."""
    workdir = Path(workdir)
    names = folders(config)
    if just_logging:
        return {name: NoEvents() for name in names}
    kept = kept_scalars(workdir, up_to_step)
    for folder in (workdir, *(workdir / name for name in [*names, *sessions(config)])):
        for old in folder.glob(EVENTS_GLOB):  # event files cannot be truncated: rewritten
            old.unlink()
    (workdir / SCALARS_FILE).write_text("".join(json.dumps(e) + "\n" for e in kept))
    metric_writers = _metric_writers()
    if metric_writers is None:
        writers = {name: NoEvents() for name in names}
    else:
        writers = {
            name: metric_writers.create_default_writer(workdir, collection=name) for name in names
        }
        for folder, hparams in sessions(config).items():
            session = metric_writers.SummaryWriter(str(workdir / folder))
            session.write_hparams(hparams)
            session.close()
        for record in history:
            write_record(writers, record)
        for entry in kept:
            scalars = {k: v for k, v in entry.items() if k not in ("collection", "step")}
            writers[entry["collection"]].write_scalars(entry["step"], scalars)
    first = names[0]
    writers[first] = ProgressWriter(writers[first], workdir, first)
    return writers
