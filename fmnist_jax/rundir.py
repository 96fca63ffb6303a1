"""The run directory: a training run's workdir, its files, and the reader of a run.

    workdir/
      config.json          the exact config, written when training starts
      metrics.jsonl        one record per evaluation and member: the source of truth for
                           every reader
      scalars.jsonl        what the event files hold, for resumed runs (`fmnist_jax.events`)
      summary.json         the final numbers (per member, and their statistics), at the end
      train/, test/        TensorBoard event files (`fmnist_jax.events`)
      checkpoints/<step>/  orbax checkpoints, checkpoint_checksums.json their sha256
                           (`fmnist_jax.checkpoints`)
      .lock                held by the process training there (`writer_lock`)

The train loop writes through the functions here; plotting, the report and the sweep read a
run with `read_run` (plain data). Nothing here imports orbax or TensorFlow.
"""

import contextlib
import dataclasses
import errno
import json
import os
import re
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from fmnist_jax import population
from fmnist_jax.errors import RunError

try:
    import fcntl  # POSIX: the writer lock
except ImportError:  # pragma: no cover - Windows: runs are not locked there
    fcntl = None

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"  # held (flock) by the process training in the workdir
# A record's metrics are "<collection>_<tag>": "train_loss", "test_accuracy", ...
COLLECTIONS = ("train", "test")


def read_json(path: str | Path) -> dict | None:
    """The object in a JSON file; None when the file does not exist, RunError when it is not
    valid JSON (a half-written or hand-edited file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e}); delete or repair it") from None


def write_json(path: str | Path, obj) -> None:
    """Writes `obj` as JSON, atomically (a temporary file renamed over the old one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def write_config(workdir: Path, config: dict) -> None:
    write_json(Path(workdir) / CONFIG_FILE, config)


def read_config(workdir: str | Path) -> dict:
    """config.json of a run; RunError when there is none."""
    config = read_json(Path(workdir) / CONFIG_FILE)
    if config is None:
        raise RunError(f"{workdir}: no {CONFIG_FILE} here; is it a training run's workdir?")
    return config


# Config fields that do not change the trained model: a resumed run may change them.
RESUMABLE_FIELDS = (
    "name", "report", "num_train_steps", "eval_every_steps", "checkpoint_every_steps",
    "max_checkpoints_to_keep", "eval_batch_size", "steps_per_chunk", "replica_map",
    "profile_steps", "profile_first_step", "progress_every_steps", "data_dir", "tfds_data_dir",
)  # fmt: skip


# Set by the Makefile's training targets: the make command running, ending in RUNS=<its runs
# folder>, so that a refusal names the make command that trains elsewhere.
MAKE_COMMAND = "FMNIST_MAKE_COMMAND"


def check_same_run(workdir: Path, config: dict) -> None:
    """RunError naming every field, with both values, where the config the workdir's run was
    trained with differs from `config` in a field that changes the trained model, and the
    commands that train `config` elsewhere or there."""
    saved = read_json(Path(workdir) / CONFIG_FILE)
    if saved is None:
        return
    absent = "(absent)"
    changed = [
        k
        for k in sorted(saved.keys() | config.keys())
        if k not in RESUMABLE_FIELDS and saved.get(k, absent) != config.get(k, absent)
    ]
    if changed:
        differ = [
            f"{k}={saved.get(k, absent)!r} there, {config.get(k, absent)!r} here" for k in changed
        ]
        raise RunError(
            f"{workdir} holds a run trained with another config ({'; '.join(differ)});"
            f" {_elsewhere(Path(workdir), {k: config[k] for k in changed if k in config})},"
            f" or delete that one (rm -rf {shlex.quote(str(workdir))}) to train this config there"
        )


def _elsewhere(workdir: Path, changed: dict) -> str:
    """How to train a config that changes `changed` in another folder named after them: the make
    command with a subfolder of RUNS when make started this, another --workdir otherwise."""
    name = re.sub(r"[^\w.-]", "", "_".join(f"{k}{v}" for k, v in changed.items()))
    name = name if 0 < len(name) <= 40 else "other"
    if make := os.environ.get(MAKE_COMMAND):
        return f"train this one elsewhere ({make}/{name})"
    other = shlex.quote(str(workdir.parent / name / workdir.name))
    return f"use another --workdir ({other}, say)"


def write_summary(workdir: Path, summary: dict) -> None:
    write_json(Path(workdir) / SUMMARY_FILE, summary)


def prepare(workdir: Path) -> None:
    """Creates `workdir` and checks it can be written, before any training: one RunError
    naming it otherwise (an existing file, a read-only or foreign folder)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise RunError(f"{workdir} is a file, not a folder; choose another --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"{workdir}: cannot write there ({e.strerror}); choose another --workdir")


@contextlib.contextmanager
def writer_lock(workdir: Path):
    """Holds the workdir's lock while a process trains there: a second training process (or
    `fit`) is refused with one line naming the holder. The operating system releases an flock
    when its holder dies, so a lock left behind by a killed process never blocks a new run."""
    if fcntl is None:
        yield
        return
    path = Path(workdir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunError(
                f"{workdir} is being trained by {holder}; wait for it to end or use another"
                " --workdir"
            ) from None
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def disk_full(e: BaseException | None) -> bool:
    """Whether `e` (or an exception it was raised from) says the disk is full."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "ENOSPC" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def read_history(workdir: str | Path, up_to_step: int | None = None) -> list[dict]:
    """Evaluation records logged so far, in order (step, then replica), each (step, replica)
    once; records after `up_to_step` are dropped (a resumed run repeats the steps after its
    checkpoint)."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed process
            logging.warning("%s: skipping an unreadable line: %.80s", path, line)
            continue
        if "replica" not in record:
            raise RunError(
                f"{path}: records without 'replica' (a run from before replicas); retrain"
            )
        key = (record["step"], record["replica"])
        records[key] = record  # a step logged again: the later line wins
    return [records[k] for k in sorted(records) if up_to_step is None or k[0] <= up_to_step]


def write_history(workdir: Path, history: list[dict]) -> None:
    """Replaces metrics.jsonl by `history` (atomically)."""
    tmp = Path(workdir) / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    tmp.replace(Path(workdir) / METRICS_FILE)


def append_record(workdir: Path, record: dict) -> None:
    with open(Path(workdir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclasses.dataclass(frozen=True)
class Curve:
    """One logged series: increasing steps and their values."""

    steps: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Run:
    """What a finished or running run holds, as plain data. A run of several members keeps
    every member's records in `history` and results in `summary["replicas"]`; `member(k)` is
    member k alone, as a plain run of its values and seed."""

    path: Path
    config: dict
    history: list[dict]  # metrics.jsonl records, (step, member) order, each once
    summary: dict | None  # None until training has finished
    member_index: int = 0  # the member `curve` reads (that of a `member(k)` view)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def num_members(self) -> int:
        return population.num_members(self.config)

    def member(self, k: int) -> "Run":
        """Member `k` as a run of its own (IndexError for one the run does not have)."""
        if not 0 <= k < self.num_members:
            raise IndexError(f"{self.path} has {self.num_members} member(s), not {k + 1}")
        summary = None
        if self.summary is not None:
            summary = {**self.summary, **(self.summary.get("replicas") or [{}])[k]}
            summary.pop("replicas", None)
            summary.pop("statistics", None)
        history = [r for r in self.history if r["replica"] == k]
        config = {**self.config, "num_replicas": 1}
        if population.is_population(self.config):  # the member's values, as a plain run's
            identity = population.members(self.config)[k]
            point = population.hyperparameters(identity)
            config = population.point_config(config, point).to_dict()
            config["seed"] = identity["seed"]
        return Run(self.path, config, history, summary, member_index=k)

    def members(self) -> list["Run"]:
        return [self.member(k) for k in range(self.num_members)]

    def curve(self, key: str) -> Curve | None:
        """The series of record key `key` ("train_loss", ...) of this member (member 0 of a
        run of several); None when it was never logged."""
        points = [
            (r["step"], r[key])
            for r in self.history
            if r.get(key) is not None and r["replica"] == self.member_index
        ]
        if not points:
            return None
        steps, values = zip(*points, strict=True)
        return Curve(np.asarray(steps, np.int64), np.asarray(values, np.float64))


def unpaired(groups: Mapping[str, Sequence[Run]]) -> str | None:
    """None where member k of every group (`Run.member` views, labelled) has the seed and the
    length of member k of the others, up to the fewest members: runs to compare member by
    member. Else one line naming the first member that does not pair."""
    for k in range(min(len(members) for members in groups.values())):
        found = {
            label: ((m[k].summary or {}).get("seed"), m[k].config.get("num_train_steps"))
            for label, m in groups.items()
        }
        if len(set(found.values())) > 1:
            told = "; ".join(f"{label}: seed {s}, {n} steps" for label, (s, n) in found.items())
            return f"member {k} does not pair ({told}): train them with the same seeds and steps"
    return None


def read_run(workdir: str | Path) -> Run:
    """The run in `workdir`: config, metrics history and (once finished) summary.

    Raises RunError when the folder is missing or holds no config.json, or a JSON file there
    is not valid.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise RunError(f"run {workdir} is missing")
    return Run(
        workdir, read_config(workdir), read_history(workdir), read_json(workdir / SUMMARY_FILE)
    )
