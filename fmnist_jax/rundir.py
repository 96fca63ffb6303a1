"""The run directory: the one module that writes and reads a training run's workdir.

    workdir/
      config.json          the exact config, written when training starts
      metrics.jsonl        one record per evaluation: the source of truth for every reader
      summary.json         the final numbers, written when training ends
      train/, test/        TensorBoard event files (CLU writers), for TensorBoard users
      checkpoints/<step>/  orbax checkpoints; "finished" is decided by orbax's public API

The train loop writes through the functions here; plotting, the report, the API and the attack
read a run with `read_run` (plain data) and restore checkpoints through `checkpoint_manager`
and `finished_steps`. Nothing here imports TensorFlow unless event files are written.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl  # POSIX: the writer lock
except ImportError:  # pragma: no cover - Windows: runs are not locked there
    fcntl = None

import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax.errors import RunError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"  # held (flock) by the process training in the workdir
CHECKSUM_FILE = "checkpoint_checksums.json"  # {step: sha256 of the saved state}
# A checkpoint's orbax items (fmnist_jax.checkpoints): the TrainState and the train metrics
# summed since the last evaluation.
CHECKPOINT_ITEMS = ("state", "train_accumulator")
COLLECTIONS = ("train", "test")  # event-file folders; record keys are "<collection>_<tag>"


# --------------------------------------------------------------------------- JSON files


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


def check_same_run(workdir: Path, config: dict, fields) -> None:
    """Refuses a workdir whose saved config differs from `config` in one of `fields`."""
    saved = read_json(Path(workdir) / CONFIG_FILE) or {}
    for field in fields:
        if field in saved and saved[field] != config[field]:
            raise RunError(
                f"{workdir} holds a run with {field}={saved[field]!r}, but this config has"
                f" {field}={config[field]!r}; use another --workdir or delete that one"
            )


def write_summary(workdir: Path, summary: dict) -> None:
    write_json(Path(workdir) / SUMMARY_FILE, summary)


# --------------------------------------------------------------------------- the workdir


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


# --------------------------------------------------------------------------- metrics.jsonl


def read_history(workdir: str | Path, up_to_step: int | None = None) -> list[dict]:
    """Evaluation records logged so far, in order, each step once; records after `up_to_step`
    are dropped (a resumed run repeats the steps after its checkpoint)."""
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
        records[record["step"]] = record  # a step logged again: the later line wins
    return [records[s] for s in sorted(records) if up_to_step is None or s <= up_to_step]


def write_history(workdir: Path, history: list[dict]) -> None:
    """Replaces metrics.jsonl by `history` (atomically)."""
    tmp = Path(workdir) / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    tmp.replace(Path(workdir) / METRICS_FILE)


def append_record(workdir: Path, record: dict) -> None:
    with open(Path(workdir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------- event files


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_record(writers: dict, record: dict) -> None:
    """One evaluation record into the `train/` and `test/` writers (tags without prefix)."""
    for prefix, writer in writers.items():
        scalars = {k[len(prefix) + 1 :]: v for k, v in record.items() if k.startswith(prefix)}
        writer.write_scalars(record["step"], scalars)


def open_writers(workdir: Path, config: dict, history: list[dict], just_logging=False) -> dict:
    """CLU writers for `train/` and `test/`, holding exactly `history`.

    Event files cannot be truncated, so those of an interrupted run (which may hold steps past
    its last checkpoint) are replaced by a replay of the kept history: a resumed run's curves
    have each step once. `just_logging` (processes other than 0) writes no files.
    """
    from fmnist_jax import runtime

    runtime.hide_accelerators_from_tensorflow()
    from clu import metric_writers  # imports TensorFlow: only where a run writes

    if not just_logging:
        for name in COLLECTIONS:
            for old in (Path(workdir) / name).glob("events.out.tfevents.*"):
                old.unlink()
    writers = {
        name: metric_writers.create_default_writer(
            workdir, just_logging=just_logging, collection=name
        )
        for name in COLLECTIONS
    }
    writers["train"].write_hparams(_flat(config))
    for record in history:
        write_record(writers, record)
    return writers


# --------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str | Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """The orbax manager of `workdir/checkpoints` (created when missing)."""
    return ocp.CheckpointManager(
        (Path(workdir) / CHECKPOINT_DIR).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers=_item_handlers(),
    )


def _item_handlers() -> dict:
    return {name: ocp.StandardCheckpointHandler() for name in CHECKPOINT_ITEMS}


def _finished(manager: ocp.CheckpointManager, path: Path) -> bool:
    """Whether orbax finished writing the step directory `path` (finalized and committed)."""
    if not (path.name.isdigit() and ocp.utils.is_checkpoint_finalized(path)):
        return False
    try:
        return manager.metadata(int(path.name)).commit_timestamp_nsecs is not None
    except (ValueError, OSError, KeyError, TypeError):  # empty or foreign: no step metadata
        return False


def finished_steps(workdir: str | Path) -> list[int]:
    """Steps with a finished checkpoint in `workdir/checkpoints`, oldest first."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    with ocp.CheckpointManager(folder.absolute(), item_handlers=_item_handlers()) as manager:
        return sorted(int(p.name) for p in folder.iterdir() if _finished(manager, p))


def require_finished(workdir: str | Path) -> list[int]:
    """`finished_steps`, or RunError when there is none (a reader needs a trained run)."""
    steps = finished_steps(workdir)
    if not steps:
        raise RunError(f"{workdir}/{CHECKPOINT_DIR}: no finished checkpoint here; train first")
    return steps


def set_aside_unfinished(workdir: Path, rename: bool = True) -> None:
    """Renames step directories orbax never finished (say emptied or copied by hand) to
    `<step>.incomplete`, so they are neither picked as the latest step nor block saving that
    step anew. Saves cut short by a kill are never listed anyway: orbax writes them under a
    temporary name. With several processes every one calls it (orbax's manager synchronises
    them) and only process 0 passes `rename`."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return
    finished = set(finished_steps(workdir))
    if not rename:
        return
    for path in folder.iterdir():
        if path.name.isdigit() and int(path.name) not in finished:
            aside = path.with_name(f"{path.name}.incomplete")
            logging.warning("checkpoint %s is incomplete; moved to %s", path, aside.name)
            path.rename(aside)


def set_aside(workdir: Path, step: int, why: str) -> Path:
    """Renames checkpoint `step` to `<step>.<why>` (say "damaged"); returns the new path."""
    path = Path(workdir) / CHECKPOINT_DIR / str(step)
    aside = path.with_name(f"{step}.{why}")
    if aside.exists():
        aside = path.with_name(f"{step}.{why}.{time.time_ns()}")
    path.rename(aside)
    return aside


# --------------------------------------------------------------------------- checksums


def _host_leaf(leaf) -> np.ndarray:
    """A leaf's values on this host: a replicated array's local copy, even when the array
    spans several processes."""
    shards = getattr(leaf, "addressable_shards", None)
    if shards is not None and not getattr(leaf, "is_fully_addressable", True):
        return np.asarray(shards[0].data)
    return np.asarray(leaf)


def tree_checksum(tree) -> str:
    """sha256 of a pytree of (replicated) arrays: every leaf's dtype, shape and bytes."""
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        value = np.ascontiguousarray(_host_leaf(leaf))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def record_checksum(workdir: Path, step: int, checksum: str) -> None:
    """Stores the checksum of the state saved as checkpoint `step` (written before orbax
    finishes the save: a save cut short is never listed, so its entry is never read)."""
    path = Path(workdir) / CHECKSUM_FILE
    table = read_json(path) or {}
    folder = Path(workdir) / CHECKPOINT_DIR
    kept = folder.iterdir() if folder.is_dir() else ()
    # Steps on disk, finished or still being written by orbax in the background ("8.orbax-
    # checkpoint-tmp-..."); read from the folder, not orbax: only process 0 records.
    keep = {
        p.name.split(".")[0] for p in kept if p.name.isdigit() or ocp.utils.is_tmp_checkpoint(p)
    }
    keep.add(str(step))
    table = {k: v for k, v in table.items() if k in keep}
    table[str(step)] = checksum
    write_json(path, table)


def recorded_checksum(workdir: str | Path, step: int) -> str | None:
    """The checksum saved with checkpoint `step`, None for a checkpoint saved without one."""
    return (read_json(Path(workdir) / CHECKSUM_FILE) or {}).get(str(step))


# --------------------------------------------------------------------------- the reader


@dataclasses.dataclass(frozen=True)
class Curve:
    """One logged series: increasing steps and their values."""

    steps: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Run:
    """What a finished or running run holds, as plain data."""

    path: Path
    config: dict
    history: list[dict]  # metrics.jsonl records, step order, each step once
    summary: dict | None  # None until training has finished

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def curve(self, key: str) -> Curve | None:
        """The series of record key `key` ("train_loss", "test_accuracy", ...), or None when
        it was never logged."""
        points = [(r["step"], r[key]) for r in self.history if r.get(key) is not None]
        if not points:
            return None
        steps, values = zip(*points, strict=True)
        return Curve(np.asarray(steps, np.int64), np.asarray(values, np.float64))


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
