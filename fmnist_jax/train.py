"""The one train loop every experiment shares; experiments differ only in their config.

`train_and_evaluate(config, workdir)` trains data-parallel over every device of every process
(a 1-D `data` mesh: batch sharded, parameters replicated; see `fmnist_jax.distributed`),
evaluates every `eval_every_steps` steps on the whole test split, and writes the run directory
through `fmnist_jax.rundir`: config.json, metrics.jsonl, TensorBoard events in `train/` and
`test/` (same tags, so TensorBoard overlays them), orbax checkpoints and at the end
summary.json. Rerunning on the same workdir resumes.

Between evaluations the loop never waits on the host: metrics and the first non-finite loss
accumulate on the device (`steps.accumulate_train_step`) and are read at each evaluation,
which also reports the exact first non-finite step; a checkpoint is saved only after that
check (checkpoints fall on evaluation steps).
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state

from fmnist_jax import checkpoints, distributed, feeds, models, preemption, rundir, summary
from fmnist_jax import config as config_lib
from fmnist_jax import data as data_lib
from fmnist_jax import progress as progress_lib
from fmnist_jax import steps as steps_lib
from fmnist_jax.errors import Interrupted, RunError, TrainingError
from fmnist_jax.steps import (  # noqa: F401 - the names a Flax reader looks for here
    Steps,
    TrainAccumulator,
    check_divisible,
    create_optimizer,
    create_train_state,
    eval_step,
    evaluate,
    is_regression,
    train_step,
)

# Fields whose change makes an existing workdir's checkpoints unusable or its curves meaningless.
ARCHITECTURE_FIELDS = ("model", "num_classes", "hidden_size", "dataset", "optimizer")
make_mesh = distributed.make_mesh


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Run:
    """What the loop of one invocation works with."""

    config: ml_collections.ConfigDict
    workdir: Path
    dataset: data_lib.Dataset
    steps: Steps
    manager: ocp.CheckpointManager
    writers: dict
    history: list[dict]
    on_eval: Callable[[dict], None] | None = None
    writer: bool = True  # this process writes the run directory's files (process 0)
    progress: object | None = None  # progress.LiveProgress for API callers


def _load_data(config) -> data_lib.Dataset:
    """The config's data set; with several processes process 0 loads (and so prepares TFDS)
    first, then the others."""
    if not distributed.is_writer():
        distributed.barrier("fmnist_data_prepared")
        return data_lib.load(config)
    dataset = data_lib.load(config)
    distributed.barrier("fmnist_data_prepared")
    return dataset


def _initial_state(config, dataset, steps: Steps):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    model = models.create_model(config)
    state = create_train_state(config, model, dataset.train["inputs"].shape[1:], init_rng)
    return distributed.replicate(state, steps.replicated), dropout_rng


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: data_lib.Dataset | None = None,
    on_eval: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> tuple[train_state.TrainState, list[dict]]:
    """Trains and evaluates the model `config` describes; resumes from `workdir` if it can.

    `dataset` overrides `data.load(config)` (for callers holding their own arrays). `on_eval`
    is called with each evaluation record; `progress` shows a live line (steps/s, ETA, last
    evaluation) for notebooks and scripts, where absl's progress lines are hidden. Returns the final train state and the evaluation
    history (the records of metrics.jsonl, the resumed part included). Raises
    `errors.Interrupted` after saving a checkpoint when SIGTERM or SIGINT asks it to stop.
    """
    config_lib.validate(config)
    workdir, writer = Path(workdir), distributed.is_writer()
    if writer:
        rundir.prepare(workdir)
    rundir.check_same_run(workdir, config, ARCHITECTURE_FIELDS)
    lock = rundir.writer_lock(workdir) if writer else contextlib.nullcontext()
    try:
        with lock:
            live = progress_lib.LiveProgress(config.num_train_steps) if progress else None
            return _train(config, workdir, dataset or _load_data(config), on_eval, writer, live)
    except Exception as e:
        if not rundir.disk_full(e):
            raise
        kept = rundir.finalized_step_folders(workdir)  # no orbax manager: one process
        raise RunError(
            f"{workdir}: no space left on device; the last finished checkpoint"
            f" ({f'step {kept[-1]}' if kept else 'none yet'}) is kept and the same command"
            " resumes from it once there is space"
        ) from None


def _train(config, workdir: Path, dataset, on_eval, writer: bool, live=None):
    mesh = make_mesh()
    check_divisible(config, mesh)
    steps = Steps(config, mesh)
    state, dropout_rng = _initial_state(config, dataset, steps)
    distributed.barrier("fmnist_workdir_ready")
    finished = rundir.set_aside_unfinished(workdir, rename=writer)
    distributed.barrier("fmnist_checkpoints_checked")
    with rundir.checkpoint_manager(workdir, config.max_checkpoints_to_keep) as manager:
        acc = steps.empty_accumulator()
        initial_step, restored = checkpoints.restore_latest_intact(
            manager, workdir, finished, state, acc, writer
        )
        if restored is not None:
            state, acc = restored[checkpoints.STATE], restored[checkpoints.ACCUMULATOR]
        history = rundir.read_history(workdir, initial_step)
        if initial_step >= config.num_train_steps and rundir.read_json(
            workdir / rundir.SUMMARY_FILE
        ):
            if writer:
                logging.info("%s is trained to step %d already", workdir, initial_step)
            return state, history
        if initial_step and writer:
            logging.info("resuming %s from step %d", workdir, initial_step)
        if writer:
            rundir.write_history(workdir, history)
            rundir.write_config(workdir, config.to_dict())
        writers = rundir.open_writers(
            workdir, config.to_dict(), history, initial_step, just_logging=not writer
        )
        live = live if writer else None
        run = Run(config, workdir, dataset, steps, manager, writers, history, on_eval, writer, live)
        try:
            with distributed.exit_on_peer_failure(workdir):
                state, timing = _loop(run, state, acc, dropout_rng)
        finally:
            for w in writers.values():
                w.close()
            if live:
                live.close()
    if writer:
        rundir.write_summary(workdir, summary.summarize(config, history, dataset, timing))
    return state, history


class _Quiet:
    """Stands in for CLU's progress and profile actions on processes other than 0."""

    def __call__(self, step: int) -> None:
        pass

    def timed(self, name: str):
        del name
        return contextlib.nullcontext()


def _actions(run: Run, first_step: int):
    """CLU's periodic actions: progress (steps/s, ETA) and, if configured, a profile."""
    if not run.writer:
        return _Quiet(), _Quiet()
    from clu import periodic_actions

    every = run.config.get("progress_every_steps", 0)
    report = periodic_actions.ReportProgress(
        num_train_steps=run.config.num_train_steps,
        writer=run.writers["train"],
        every_steps=every or None,
        every_secs=None if every else 30.0,
    )
    if not run.config.profile_steps:
        return report, _Quiet()
    profile = periodic_actions.Profile(
        logdir=str(run.workdir),
        num_profile_steps=run.config.profile_steps,
        profile_duration_ms=None,
        first_profile=first_step + run.config.profile_first_step,
        every_secs=None,
    )
    return report, profile


def _loop(run: Run, state, acc, dropout_rng):
    """Steps from the state's step to `num_train_steps`; returns (state, timing numbers)."""
    config, initial_step = run.config, int(state.step)
    num_steps = config.num_train_steps
    feed = feeds.make_feed(run.steps, run.dataset, config, initial_step)
    report, profile = _actions(run, initial_step)
    start, eval_time, first = time.time(), 0.0, None
    step = initial_step
    if run.progress:
        run.progress.start(initial_step)
    with preemption.StopRequest() as stop:
        for end in feeds.chunk_ends(step, num_steps, feed.chunk, config.eval_every_steps):
            state, acc = feed.train(state, acc, dropout_rng, end - step)
            if first is None:
                jax.block_until_ready(acc)  # the first chunk includes compilation
                first = (end - step, time.time() - start)
            for s in range(step + 1, end + 1):
                report(s)
                profile(s)
            step = end
            if run.progress:
                run.progress(step)
            if step % config.eval_every_steps == 0 or step == num_steps:
                acc.check_finite()  # a host read: waits for the steps in flight
                t = time.time()
                with report.timed("eval"):
                    _evaluate_and_log(run, step, acc.metrics, state, feed)
                eval_time += time.time() - t
                acc = run.steps.empty_accumulator()
            saved = step % config.checkpoint_every_steps == 0 or step == num_steps
            if saved:
                checkpoints.save(run.manager, run.workdir, step, state, acc, run.writer)
            if step < num_steps and stop.requested(step):
                _stop(run, stop, step, state, acc, saved)
    run.manager.wait_until_finished()
    timing = _timing(config, initial_step, time.time() - start, eval_time, first or (0, 0.0))
    return state, {**timing, "steps_per_chunk": feed.chunk}


def _stop(run: Run, stop, step: int, state, acc, saved: bool) -> None:
    """Saves the step reached (unless just saved) and raises Interrupted."""
    if not saved:
        acc.check_finite()  # never save a non-finite state: the losses, then the weights
        if not bool(steps_lib.all_finite(state.params)):
            raise TrainingError(
                f"the weights after step {step} are not finite; stopped on {stop.name} without"
                " saving this state (the last good checkpoint is kept)"
            )
        checkpoints.save(run.manager, run.workdir, step, state, acc, run.writer)
    run.manager.wait_until_finished()
    message = (
        f"{stop.name} at step {step}/{run.config.num_train_steps}: checkpoint saved in"
        f" {run.workdir}; the same command resumes from it"
    )
    if run.writer:
        logging.warning("%s", message)
    raise Interrupted(message, stop.signum)


def _timing(config, initial_step: int, wall: float, eval_time: float, first: tuple) -> dict:
    """Wall time and speed; the first chunk (`first` = (steps, seconds)) includes compilation
    and is left out of the rates."""
    first_steps, first_s = first
    timed_steps = config.num_train_steps - initial_step - first_steps
    steady = wall - eval_time - first_s
    rate = timed_steps * config.batch_size / steady if timed_steps > 0 and steady > 0 else None
    return {
        "resumed_from_step": initial_step,
        "wall_time_s": round(wall, 2),
        "first_step_s": round(first_s, 3),
        "eval_time_s": round(eval_time, 2),
        "images_per_sec": None if rate is None else round(rate, 1),
        "steps_per_sec": None if rate is None else round(rate / config.batch_size, 2),
    }


def _evaluate_and_log(run: Run, step: int, train_metrics, state, feed) -> None:
    """Test-split evaluation at `step`, logged everywhere a reader looks."""
    config = run.config
    train = {f"train_{k}": float(v) for k, v in train_metrics.compute().items()}
    test = feed.evaluate(state)
    if not all(math.isfinite(v) for v in test.values()):
        raise TrainingError(
            f"the weights after step {step} are not finite (test loss {test['loss']}); stopped"
            " without saving this state (lower the learning rate; the last good checkpoint is"
            " kept)"
        )
    epoch = step / data_lib.steps_per_epoch(run.dataset.train, config.batch_size)
    record = {"step": step, "epoch": epoch, **train, **{f"test_{k}": v for k, v in test.items()}}
    run.history.append(record)
    if run.writer:
        rundir.append_record(run.workdir, record)
        rundir.write_record(run.writers, record)
        logging.info("%s", progress_lib.format_record(record, config.num_train_steps))
    if run.progress:
        run.progress.evaluated(record)
    if run.on_eval:
        run.on_eval(record)


# --------------------------------------------------------------------------- trained models


def load_trained(workdir: str | Path, step: int | None = None):
    """(config, model, params) of the run in `workdir`, from its latest (or given) intact
    finished checkpoint; RunError when the workdir holds no run, no finished checkpoint, or
    only damaged ones."""
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(rundir.read_config(workdir))
    finished = rundir.require_finished(workdir)
    model = models.create_model(config)
    if config.model == "linear_regression":
        input_shape = (config.regression.num_features,)
    else:
        input_shape = (*data_lib.IMAGE_SHAPE, 1)
    # As arrays (the step too), like the state the loop saved: the checksum covers dtypes.
    state = jax.device_put(create_train_state(config, model, input_shape, jax.random.PRNGKey(0)))
    accumulator = TrainAccumulator.empty(is_regression(config))
    restored = checkpoints.restore_for_reading(workdir, step, state, accumulator, finished)
    return config, model, restored.params
