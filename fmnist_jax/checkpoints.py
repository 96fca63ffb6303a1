"""Checkpoints: the one module that writes and reads `checkpoints/<step>/` of a run directory.

A checkpoint holds two orbax items, `state` (the flax TrainState) and `train_accumulator` (the
train metrics summed since the last evaluation, so a run stopped between evaluations, say on
SIGTERM, resumes to the same curves). Which steps orbax finished is read through its public
API; step folders it never finished are set aside as `<step>.incomplete`. The sha256 of both
items is recorded in `checkpoint_checksums.json` when the save starts (`record_checksum`). A
restore recomputes it: a checkpoint whose bytes changed after it was written (disk errors) gives
other values, and one that orbax cannot read (a half-copied folder) fails; either is set aside as
`<step>.damaged` with one warning line; the previous finished checkpoint is used, and with none
left the run stops with one clear error. It never trains on from damaged state.

The train loop saves and resumes (`save`, `restore_latest_intact`); readers (`fj.restore`, the
attack) take a trained model with `load_trained`, without importing the train loop.
"""

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
from fmnist_jax.errors import RunError, TrainingError, UsageError

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_FILE = "checkpoint_checksums.json"  # {step: sha256 of the saved items}
# A checkpoint's orbax items: the TrainState and the train metrics summed since the last
# evaluation.
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


def _host_leaf(leaf) -> np.ndarray:
    """A leaf's values on this host: a replicated array's local copy, even when the array
    spans several processes."""
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
    """Stores the checksum of the state saved as checkpoint `step` (written before orbax
    finishes the save: a save cut short is never listed, so its entry is never read)."""
    path = Path(workdir) / CHECKSUM_FILE
    table = rundir.read_json(path) or {}
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
    rundir.write_json(path, table)


def is_intact(workdir, step: int, restored: dict) -> bool:
    """Whether the restored values match the checksum saved with checkpoint `step` (one saved
    without a checksum counts as intact)."""
    expected = (rundir.read_json(Path(workdir) / CHECKSUM_FILE) or {}).get(str(step))
    return expected is None or tree_checksum(restored) == expected


def save(manager, workdir, step: int, state, accumulator, writer: bool = True) -> None:
    """Starts saving checkpoint `step` (orbax finishes it in the background)."""
    items = {STATE: state, ACCUMULATOR: accumulator}
    if writer:
        record_checksum(workdir, step, tree_checksum(items))
    args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
    manager.save(step, args=ocp.args.Composite(**args))


def restore(manager, step: int, state, accumulator) -> dict:
    """Checkpoint `step` restored into the structure (shapes, dtypes, shardings) of `state` and
    `accumulator`: {"state": ..., "train_accumulator": ...}."""
    items = {STATE: state, ACCUMULATOR: accumulator}
    abstract = {k: jax.tree.map(ocp.utils.to_shape_dtype_struct, v) for k, v in items.items()}
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - any failure becomes one clear line
        raise TrainingError(
            f"{manager.directory}/{step} cannot be restored into this config's model and"
            f" optimizer ({(str(e).splitlines() or [type(e).__name__])[0][:160]}); it is"
            " damaged or belongs to another model: use another --workdir"
        ) from None
    return {k: restored[k] for k in items}


def _damaged_line(workdir, step: int) -> str:
    return (
        f"checkpoint {workdir}/{CHECKPOINT_DIR}/{step} is damaged: its values differ"
        " from the checksum saved with it"
    )


def restore_latest_intact(manager, workdir, steps, state, accumulator, writer: bool = True):
    """(step, state, accumulator) of the latest intact of the finished `steps`; (0, `state`,
    `accumulator`) for a workdir without checkpoints. Damaged ones are set aside on the way (every
    process calls this; only the writer renames); RunError when every checkpoint is damaged."""
    for step in reversed(steps):
        try:  # the workdir's config matches (check_same_run): a failure is the checkpoint's
            restored, why = restore(manager, step, state, accumulator), None
        except TrainingError as e:
            restored, why = None, str(e).split(" (", 1)[-1].split(")", 1)[0]
        if restored is not None and is_intact(workdir, step, restored):
            return step, restored[STATE], restored[ACCUMULATOR]
        if writer:
            aside = set_aside(workdir, step, "damaged")
            line = (
                _damaged_line(workdir, step)
                if why is None
                else (f"checkpoint {workdir}/{CHECKPOINT_DIR}/{step} cannot be read ({why})")
            )
            logging.warning("%s; set aside as %s", line, aside.name)
        distributed.barrier(f"fmnist_set_aside_{step}")
        manager.reload()
    if steps:
        raise RunError(
            f"{workdir}/{CHECKPOINT_DIR}: every checkpoint is damaged (set aside as"
            " <step>.damaged); delete the workdir to train from scratch"
        )
    return 0, state, accumulator


def _restore_for_reading(workdir, step: int | None, state, accumulator, finished: list[int]):
    """The state of checkpoint `step` (default: the latest intact one of the `finished` steps)
    for a reader, which refuses damaged checkpoints and renames nothing."""
    if step is not None and step not in finished:
        raise RunError(f"{workdir}/checkpoints: no finished checkpoint at step {step}: {finished}")
    candidates = [step] if step is not None else list(reversed(finished))
    with checkpoint_manager(workdir) as manager:
        for candidate in candidates:
            restored = restore(manager, candidate, state, accumulator)
            if is_intact(workdir, candidate, restored):
                return restored[STATE]
            logging.warning("%s; not used", _damaged_line(workdir, candidate))
    raise RunError(
        f"{workdir}/checkpoints: {'that checkpoint is' if step else 'every checkpoint is'}"
        " damaged (its values differ from the checksum saved with it)"
    )


def load_trained(workdir: str | Path, step: int | None = None, member: int = 0):
    """(config, model, variables) of member `member` of the run in `workdir`, from
    its latest (or given) intact finished checkpoint; RunError when the workdir holds no run,
    no finished checkpoint, or only damaged ones, UsageError for a member it does not have.
    A population member's config has its grid point's values in place."""
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(rundir.read_config(workdir))
    count = population.num_members(config)
    if not 0 <= member < count:
        raise UsageError(
            f"{workdir} holds {count} member(s) (0 to {count - 1}); member {member} does not exist"
        )
    finished = finished_steps(workdir)
    if not finished:  # before the model: a config alone need not build one
        raise RunError(f"{workdir}/{CHECKPOINT_DIR}: no finished checkpoint here; train first")
    model = models.create_model(config)
    regression = steps_lib.is_regression(config)
    input_shape = (config.regression.num_features,) if regression else (*data.IMAGE_SHAPE, 1)
    # As arrays (the step too), like the state the loop saved: the checksum covers dtypes.
    in_grid = population.is_population(config)
    one = steps_lib.create_train_state(config, model, input_shape, jax.random.PRNGKey(0), in_grid)
    accumulator = steps_lib.TrainAccumulator.empty(regression)
    # Placed on this process's device: orbax restores into the target's sharding (a host
    # array has none, and orbax would use the saved one, of another topology).
    state, accumulator = jax.device_put(
        (replicas.stack([one] * count), replicas.stack([accumulator] * count))
    )
    restored = _restore_for_reading(workdir, step, state, accumulator, finished)
    params = replicas.take(restored.params, member)
    if in_grid:
        point = population.members(config)[member]
        config = population.point_config(config, population.hyperparameters(point))
    return config, model, {"params": params}
