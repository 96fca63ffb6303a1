"""Writes and reads a run's `checkpoints/<step>/`, checksummed (docs/training.md, errors.md)."""

import hashlib
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax import data, distributed, models, population, replicas, rundir
from fmnist_jax import steps as steps_lib
from fmnist_jax.errors import RunError, UsageError

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_FILE = "checkpoint_checksums.json"  # {step: sha256 of the saved items}
ITEMS = STATE, ACCUMULATOR = ("state", "train_accumulator")


def _item_handlers() -> dict:
    return {name: ocp.StandardCheckpointHandler() for name in ITEMS}


def checkpoint_manager(workdir: str | Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """The orbax manager of `workdir/checkpoints` (created when missing)."""
    return ocp.CheckpointManager(
        (Path(workdir) / CHECKPOINT_DIR).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers=_item_handlers(),
    )


def finished_steps(workdir: str | Path) -> list[int]:
    """Steps whose folder orbax finished, oldest first (no collective: any process may ask)."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.name.isdigit()
        and ocp.utils.is_checkpoint_finalized(p)
        and (p / "_CHECKPOINT_METADATA").is_file()
    )


def set_aside(workdir: Path, step: int, why: str) -> Path:
    """Renames checkpoint `step` to `<step>.<why>`; returns the new path."""
    path = Path(workdir) / CHECKPOINT_DIR / str(step)
    aside = path.with_name(f"{step}.{why}")
    if aside.exists():
        aside = path.with_name(f"{step}.{why}.{time.time_ns()}")
    path.rename(aside)
    return aside


def set_aside_unfinished(workdir: Path, rename: bool = True) -> None:
    """Renames step folders orbax never finished to `<step>.incomplete` (if `rename`)."""
    folder = Path(workdir) / CHECKPOINT_DIR
    if not (rename and folder.is_dir()):
        return
    finished = finished_steps(workdir)
    for path in folder.iterdir():
        if path.name.isdigit() and int(path.name) not in finished:
            aside = path.with_name(f"{path.name}.incomplete")
            logging.warning("checkpoint %s is incomplete; moved to %s", path, aside.name)
            path.rename(aside)


def _host_leaf(leaf) -> np.ndarray:
    """A leaf's values on this host (a replicated array's local copy across processes)."""
    shards = getattr(leaf, "addressable_shards", None)
    if shards is not None and not getattr(leaf, "is_fully_addressable", True):
        return np.asarray(shards[0].data)
    return np.asarray(leaf)


def tree_checksum(tree) -> str:
    """sha256 of a pytree of (replicated) arrays: every leaf's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        value = np.ascontiguousarray(_host_leaf(leaf))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def record_checksum(workdir: Path, step: int, checksum: str) -> None:
    """Stores checkpoint `step`'s checksum, keeping those of the steps still on disk."""
    path = Path(workdir) / CHECKSUM_FILE
    folder = Path(workdir) / CHECKPOINT_DIR
    kept = folder.iterdir() if folder.is_dir() else ()
    keep = {
        p.name.split(".")[0] for p in kept if p.name.isdigit() or ocp.utils.is_tmp_checkpoint(p)
    } | {str(step)}
    table = {k: v for k, v in (rundir.read_json(path) or {}).items() if k in keep}
    rundir.write_json(path, {**table, str(step): checksum})


def save(manager, workdir, step: int, state, accumulator, writer: bool = True) -> None:
    """Starts saving checkpoint `step` (orbax finishes it in the background)."""
    items = {STATE: state, ACCUMULATOR: accumulator}
    if writer:
        record_checksum(workdir, step, tree_checksum(items))
    args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
    manager.save(step, args=ocp.args.Composite(**args))


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def structure_difference(manager, step: int, items: dict) -> str:
    """The first paths where checkpoint `step`'s saved structure and `items` differ ("": none)."""
    saved = manager.item_metadata(step)
    found = []
    for item, tree in items.items():
        disk = {m.name: (tuple(m.shape), str(m.dtype)) for m in jax.tree.leaves(saved[item])}
        want = {
            _path_name(p): (tuple(v.shape), str(v.dtype))
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
        }
        found += [f"{item}.{k} not in the checkpoint" for k in sorted(want.keys() - disk.keys())]
        found += [f"{item}.{k} not in the code's state" for k in sorted(disk.keys() - want.keys())]
        found += [
            f"{item}.{k} is {disk[k]} there, {want[k]} here"
            for k in sorted(want.keys() & disk.keys())
            if disk[k] != want[k]
        ]
    return "; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")


def _restore_one(manager, workdir, step: int, items: dict) -> tuple[dict | None, str]:
    """(restored items, "") or (None, why it is damaged); RunError for another structure."""
    where = f"{workdir}/{CHECKPOINT_DIR}/{step}"
    abstract = {k: jax.tree.map(ocp.utils.to_shape_dtype_struct, v) for k, v in items.items()}
    try:
        differ = structure_difference(manager, step, abstract)
    except Exception as e:  # noqa: BLE001 - unreadable metadata: damaged
        return None, f"cannot be read ({(str(e).splitlines() or [type(e).__name__])[0][:160]})"
    if differ:
        raise RunError(
            f"{where} was written by another version of the code or model ({differ}); nothing"
            " was changed: resume it with the code that wrote it, or train in another --workdir"
        )
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - any failure to read is damage
        return None, f"cannot be read ({(str(e).splitlines() or [type(e).__name__])[0][:160]})"
    restored = {k: restored[k] for k in items}
    expected = (rundir.read_json(Path(workdir) / CHECKSUM_FILE) or {}).get(str(step))
    if expected is not None and tree_checksum(restored) != expected:
        return None, "its values differ from the checksum saved with it"
    return restored, ""


def restore_latest(manager, workdir, state, accumulator, steps=None, set_aside_damaged=False):
    """(step, state, accumulator) of the latest intact checkpoint among `steps` (default: all
    finished), else (0, `state`, `accumulator`); RunError when every one is damaged."""
    steps = finished_steps(workdir) if steps is None else steps
    items = {STATE: state, ACCUMULATOR: accumulator}
    for step in reversed(steps):
        restored, why = _restore_one(manager, workdir, step, items)
        if restored is not None:
            return step, restored[STATE], restored[ACCUMULATOR]
        line = f"checkpoint {workdir}/{CHECKPOINT_DIR}/{step} is damaged: {why}"
        if set_aside_damaged:
            if distributed.is_writer():
                logging.warning("%s; set aside as %s", line, set_aside(workdir, step, "damaged"))
            distributed.barrier(f"fmnist_set_aside_{step}")
            manager.reload()
        else:
            logging.warning("%s; not used", line)
    if steps:
        which = "that checkpoint is" if len(steps) == 1 else "every checkpoint is"
        aside = " (set aside as <step>.damaged)" if set_aside_damaged else ""
        raise RunError(
            f"{workdir}/{CHECKPOINT_DIR}: {which} damaged{aside}; delete the workdir to train"
            " from scratch"
        )
    return 0, state, accumulator


def load_trained(workdir: str | Path, step: int | None = None, member: int = 0):
    """(config with its grid values, model, variables) of `member` from the latest (or given)
    intact checkpoint in `workdir`; RunError or UsageError for what it lacks."""
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(rundir.read_config(workdir))
    count = population.num_members(config)
    if not (isinstance(member, int | np.integer) and 0 <= member < count):
        raise UsageError(
            f"{workdir} holds members 0 to {count - 1}; member {member!r} does not exist"
        )
    finished = finished_steps(workdir)
    if not finished:
        raise RunError(f"{workdir}/{CHECKPOINT_DIR}: no finished checkpoint here; train first")
    if step is not None and step not in finished:
        raise UsageError(f"{workdir}/{CHECKPOINT_DIR}: no finished checkpoint at step {step}")
    model = models.create_model(config)
    varied = population.varied(config)
    members = population.members(config)
    one = steps_lib.create_train_state(
        population.point_config(config, population.hyperparameters(members[0])),
        model, data.input_shape(config), jax.random.PRNGKey(0), varied,
    )  # fmt: skip
    accumulator = steps_lib.TrainAccumulator.empty(data.is_regression(config))
    # Placed on this process's device: orbax restores into the target's sharding.
    state, accumulator = jax.device_put(
        (replicas.stack([one] * count), replicas.stack([accumulator] * count))
    )
    with checkpoint_manager(workdir) as manager:
        steps = [step] if step is not None else finished
        _, restored, _ = restore_latest(manager, workdir, state, accumulator, steps)
    variables = replicas.take(restored.variables, member)
    point = population.hyperparameters(members[member])
    return population.point_config(config, point), model, variables
