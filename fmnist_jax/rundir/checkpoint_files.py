"""The run directory's checkpoints: the orbax manager of `checkpoints/`, which steps orbax
finished (through its public API), setting aside unfinished or damaged ones, and the checksum
recorded with each save (`checkpoint_checksums.json`)."""

import hashlib
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax.errors import RunError
from fmnist_jax.rundir.files import read_json, write_json

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_FILE = "checkpoint_checksums.json"  # {step: sha256 of the saved state}
# A checkpoint's orbax items (fmnist_jax.checkpoints): the TrainState and the train metrics
# summed since the last evaluation.
CHECKPOINT_ITEMS = ("state", "train_accumulator")


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


def finalized_step_folders(workdir: str | Path) -> list[int]:
    """Step folders orbax finalized, read from the folder alone (no manager, so no collective:
    for one process's error messages); `finished_steps` also checks their step metadata."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.name.isdigit() and ocp.utils.is_checkpoint_finalized(p)
    )


def require_finished(workdir: str | Path) -> list[int]:
    """`finished_steps`, or RunError when there is none (a reader needs a trained run)."""
    steps = finished_steps(workdir)
    if not steps:
        raise RunError(f"{workdir}/{CHECKPOINT_DIR}: no finished checkpoint here; train first")
    return steps


def set_aside_unfinished(workdir: Path, rename: bool = True) -> list[int]:
    """Renames step directories orbax never finished (say emptied or copied by hand) to
    `<step>.incomplete`, so they are neither picked as the latest step nor block saving that
    step anew. Saves cut short by a kill are never listed anyway: orbax writes them under a
    temporary name. With several processes every one calls it (orbax's manager synchronises
    them) and only process 0 passes `rename`. Returns the finished steps, oldest first."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    finished = finished_steps(workdir)
    if rename:
        for path in folder.iterdir():
            if path.name.isdigit() and int(path.name) not in finished:
                aside = path.with_name(f"{path.name}.incomplete")
                logging.warning("checkpoint %s is incomplete; moved to %s", path, aside.name)
                path.rename(aside)
    return finished


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
