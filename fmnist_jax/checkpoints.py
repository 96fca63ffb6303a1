"""The train state's checkpoints: saved with the device-side train metrics and a checksum,
restored only when the restored values match that checksum.

A checkpoint holds two orbax items, `state` (the flax TrainState) and `train_accumulator` (the
train metrics summed since the last evaluation, so a run stopped between evaluations, say on
SIGTERM, resumes to the same curves). The sha256 of both is recorded in the run directory when
the save starts (`rundir.record_checksum`). A restore recomputes it: a checkpoint whose bytes
changed after it was written (disk errors) gives other values, and one that orbax cannot read
(a half-copied folder) fails; either is set aside as `<step>.damaged` with one warning line; the previous finished checkpoint is used, and
with none left the run stops with one clear error. It never trains on from damaged state.
"""

import jax
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax import distributed, rundir
from fmnist_jax.errors import RunError, TrainingError

STATE, ACCUMULATOR = rundir.CHECKPOINT_ITEMS


def save(manager, workdir, step: int, state, accumulator, writer: bool = True) -> None:
    """Starts saving checkpoint `step` (orbax finishes it in the background)."""
    items = {STATE: state, ACCUMULATOR: accumulator}
    if writer:
        rundir.record_checksum(workdir, step, rundir.tree_checksum(items))
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


def is_intact(workdir, step: int, restored: dict) -> bool:
    """Whether the restored values match the checksum saved with checkpoint `step` (one saved
    without a checksum counts as intact)."""
    expected = rundir.recorded_checksum(workdir, step)
    return expected is None or rundir.tree_checksum(restored) == expected


def _damaged_line(workdir, step: int) -> str:
    return (
        f"checkpoint {workdir}/{rundir.CHECKPOINT_DIR}/{step} is damaged: its values differ"
        " from the checksum saved with it"
    )


def restore_latest_intact(manager, workdir, steps, state, accumulator, writer: bool = True):
    """(step, restored items) of the latest intact of the finished `steps`, (0, None) for a
    workdir without checkpoints. Damaged ones are set aside on the way (every process calls
    this; only the writer renames); RunError when every checkpoint is damaged."""
    for step in reversed(steps):
        try:  # the workdir's config matches (check_same_run): a failure is the checkpoint's
            restored, why = restore(manager, step, state, accumulator), None
        except TrainingError as e:
            restored, why = None, str(e).split(" (", 1)[-1].split(")", 1)[0]
        if restored is not None and is_intact(workdir, step, restored):
            return step, restored
        if writer:
            aside = rundir.set_aside(workdir, step, "damaged")
            line = (
                _damaged_line(workdir, step)
                if why is None
                else (f"checkpoint {workdir}/{rundir.CHECKPOINT_DIR}/{step} cannot be read ({why})")
            )
            logging.warning("%s; set aside as %s", line, aside.name)
        distributed.barrier(f"fmnist_set_aside_{step}")
        manager.reload()
    if steps:
        raise RunError(
            f"{workdir}/{rundir.CHECKPOINT_DIR}: every checkpoint is damaged (set aside as"
            " <step>.damaged); delete the workdir to train from scratch"
        )
    return 0, None


def restore_for_reading(workdir, step: int | None, state, accumulator, finished: list[int]):
    """The params-bearing state of checkpoint `step` (default: the latest intact one of the
    `finished` steps) for a reader (`fj.restore`, the attack), which refuses damaged
    checkpoints and renames nothing."""
    if step is not None and step not in finished:
        raise RunError(f"{workdir}/checkpoints: no finished checkpoint at step {step}: {finished}")
    candidates = [step] if step is not None else list(reversed(finished))
    with rundir.checkpoint_manager(workdir) as manager:
        for candidate in candidates:
            restored = restore(manager, candidate, state, accumulator)
            if is_intact(workdir, candidate, restored):
                return restored[STATE]
            logging.warning("%s; not used", _damaged_line(workdir, candidate))
    raise RunError(
        f"{workdir}/checkpoints: {'that checkpoint is' if step else 'every checkpoint is'}"
        " damaged (its values differ from the checksum saved with it)"
    )
