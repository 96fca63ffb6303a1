"""The one train loop every experiment shares; docs/training.md: what it writes and resumes."""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax import (
    checkpoints,
    distributed,
    events,
    feeds,
    models,
    population,
    preemption,
    replicas,
    rundir,
    summary,
)
from fmnist_jax import config as config_lib
from fmnist_jax import data as data_lib
from fmnist_jax import progress as progress_lib
from fmnist_jax import steps as steps_lib
from fmnist_jax.errors import Interrupted, RunError, UsageError


@dataclasses.dataclass
class LoopContext:
    """What the loop of one invocation works with."""

    config: ml_collections.ConfigDict
    workdir: Path
    dataset: data_lib.Dataset
    steps: steps_lib.Steps
    manager: ocp.CheckpointManager
    writers: dict  # events.open_writers' writers
    history: list[dict]
    on_eval: Callable[[dict], None] | None = None
    is_writer: bool = True  # this process writes the run directory's files (process 0)
    live: progress_lib.LiveBar | None = None  # the API's progress bar
    # Per member: grid fields and seed for metrics.jsonl ({} if no population), name in errors.
    members: list[dict] = dataclasses.field(init=False)
    names: list[str] = dataclasses.field(init=False)

    def __post_init__(self):
        identities = population.members(self.config)
        pop = population.is_population(self.config)
        self.members = [
            {k: v for k, v in m.items() if k != "replica"} if pop else {} for m in identities
        ]
        self.names = [
            f"member {i} ({population.member_name(m)})" if len(identities) > 1 else "the run"
            for i, m in enumerate(identities)
        ]


def initial_state(config, model, input_shape, steps: steps_lib.Steps):
    """(state, dropout keys) of every member as its plain run starts, stacked and placed."""
    states, dropout_rngs = [], []
    for m in population.members(config):
        init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(m["seed"]))
        c = population.point_config(config, population.hyperparameters(m))
        varied = population.varied(config)
        states.append(steps_lib.create_train_state(c, model, input_shape, init_rng, varied))
        dropout_rngs.append(dropout_rng)
    return steps.place(replicas.stack(states)), steps.place(replicas.stack(dropout_rngs))


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: data_lib.Dataset | None = None,
    on_eval: Callable[[dict], None] | None = None,
    progress: bool = False,
):
    """Trains `config`'s model, resuming `workdir`; returns the final state (several members: a
    leading member axis) and metrics.jsonl's records. `dataset` overrides `data.load`, `on_eval`
    gets each record, `progress` shows a live bar; SIGTERM/SIGINT: a checkpoint, Interrupted."""
    config_lib.validate(config)
    config = population.resolved(config)
    workdir, is_writer = Path(workdir), distributed.is_writer()
    try:
        with contextlib.ExitStack() as held:
            # Process 0 prepares, locks and loads first; a failure anywhere ends every process.
            with distributed.failing_together("fmnist_workdir_ready"):
                if is_writer:
                    rundir.prepare(workdir)
                rundir.check_same_run(workdir, config.to_dict())
                if is_writer:
                    held.enter_context(rundir.writer_lock(workdir))
                    dataset = dataset or data_lib.load(config)
            with distributed.failing_together("fmnist_data_prepared"):
                dataset = dataset or data_lib.load(config)
            return _train(config, workdir, dataset, on_eval, is_writer, progress)
    except Exception as e:
        if not rundir.disk_full(e):
            raise
        kept = checkpoints.finished_steps(workdir)
        raise RunError(
            f"{workdir}: no space left on device; the last finished checkpoint"
            f" ({f'step {kept[-1]}' if kept else 'none yet'}) is kept and the same command"
            " resumes from it once there is space"
        ) from None


def _steps(config, model, input_shape, regression: bool) -> steps_lib.Steps:
    points = population.num_points(config)
    mesh = distributed.make_mesh(points if points > 1 else config.num_replicas)
    steps_lib.check_divisible(config, mesh)
    convolutional = models.has_convolution(model, input_shape)
    how = replicas.choose_map(config.replica_map, convolutional, jax.default_backend(), points > 1)
    return steps_lib.Steps(config, mesh, how, regression)


def build(config, input_shape):
    """(steps, state, dropout keys) of the config's members for inputs [batch, *input_shape]."""
    model = models.create_model(config)
    steps = _steps(config, model, input_shape, data_lib.is_regression(config))
    return (steps, *initial_state(config, model, input_shape, steps))


def _train(config, workdir: Path, dataset, on_eval, is_writer: bool, progress: bool):
    steps, state, dropout_rng = build(config, dataset.train["inputs"].shape[1:])
    distributed.barrier("fmnist_workdir_ready")
    checkpoints.set_aside_unfinished(workdir, rename=is_writer)
    distributed.barrier("fmnist_checkpoints_checked")
    with checkpoints.checkpoint_manager(workdir, config.max_checkpoints_to_keep) as manager:
        initial_step, state, acc = checkpoints.restore_latest(
            manager, workdir, state, steps.empty_accumulator(), set_aside_damaged=True
        )
        if initial_step > config.num_train_steps:
            raise UsageError(
                f"{workdir} is trained to step {initial_step}, past this config's"
                f" num_train_steps={config.num_train_steps}; raise num_train_steps to go on, or"
                " use another --workdir"
            )
        history = rundir.read_history(workdir, initial_step)
        if initial_step >= config.num_train_steps and rundir.read_json(
            workdir / rundir.SUMMARY_FILE
        ):
            if is_writer:
                logging.info("%s is trained to step %d already", workdir, initial_step)
            return _returned(state, config), history
        if initial_step and is_writer:
            logging.info("resuming %s from step %d", workdir, initial_step)
        if is_writer:
            rundir.write_history(workdir, history)
            rundir.write_config(workdir, config.to_dict())
        writers = events.open_writers(
            workdir, config.to_dict(), history, initial_step, just_logging=not is_writer
        )
        live = None
        if progress and is_writer:
            live = progress_lib.LiveBar(config.num_train_steps, initial_step)
        run = LoopContext(
            config, workdir, dataset, steps, manager, writers, history, on_eval, is_writer, live
        )
        try:
            with distributed.exit_on_peer_failure(workdir):
                state, timing = _loop(run, state, acc, dropout_rng)
        finally:
            for w in writers.values():
                w.close()
            if live:
                live.close()
    if is_writer:
        rundir.write_summary(workdir, summary.summarize(config, history, dataset, timing))
    return _returned(state, config), history


def _returned(state, config):
    return replicas.take(state, 0) if population.num_members(config) == 1 else state


def _loop(run: LoopContext, state, acc, dropout_rng):
    """Steps from the state's step to `num_train_steps`; returns (state, timing numbers)."""
    config, initial_step = run.config, int(state.step[0])  # every member is at this step
    num_steps = config.num_train_steps
    feed = feeds.make_feed(run.steps, run.dataset, config, initial_step)
    writer = events.progress_writer(run.writers) if run.is_writer else None
    report = progress_lib.ChunkProgress(
        num_steps, initial_step, writer, config.get("progress_every_steps", 0), name=config.name
    )
    profile = progress_lib.Profile(
        str(run.workdir), initial_step + config.profile_first_step, config.profile_steps
    )
    start, eval_time, first = time.time(), 0.0, None
    step = initial_step
    with preemption.StopRequest() as stop:
        for end in feeds.chunk_ends(step, num_steps, feed.chunk, config.eval_every_steps):
            if run.is_writer:
                profile(step)
            state, acc = feed.train(state, acc, dropout_rng, end - step)
            if first is None:
                jax.block_until_ready(acc)  # the first chunk includes compilation
                first = (end - step, time.time() - start)
            step = end
            if run.is_writer:
                report(step, wait=lambda acc=acc: jax.block_until_ready(acc))
            if run.live:
                run.live(step)
            if step % config.eval_every_steps == 0 or step == num_steps:
                acc.check_finite(run.names)  # a host read: waits for the steps in flight
                t = time.time()
                with report.timed("eval"):
                    _evaluate_and_log(run, step, acc.metrics, state, feed)
                eval_time += time.time() - t
                acc = run.steps.empty_accumulator()
            saved = step % config.checkpoint_every_steps == 0 or step == num_steps
            if saved:
                checkpoints.save(run.manager, run.workdir, step, state, acc, run.is_writer)
            if step < num_steps and stop.requested(step):
                _stop(run, stop, step, state, acc, saved)
    run.manager.wait_until_finished()
    wall = time.time() - start  # before reading what earlier processes recorded
    earlier = events.earlier_seconds(run.workdir, initial_step) if run.is_writer else 0.0
    timing = summary.timing(config, initial_step, wall, eval_time, first or (0, 0.0), earlier)
    return state, {**timing, "steps_per_chunk": feed.chunk}


def _stop(run: LoopContext, stop, step: int, state, acc, saved: bool) -> None:
    """Saves the step reached (unless just saved; a finite state only), raises Interrupted."""
    if not saved:
        acc.check_finite(run.names)
        finite = np.asarray(steps_lib.all_finite(state.params))
        if not finite.all():
            raise steps_lib.diverged(
                run.names[int(finite.argmin())], step, "the weights are not finite"
            )
        checkpoints.save(run.manager, run.workdir, step, state, acc, run.is_writer)
    run.manager.wait_until_finished()
    message = (
        f"{stop.name} at step {step}/{run.config.num_train_steps}: checkpoint saved in"
        f" {run.workdir}; the same command resumes from it"
    )
    if run.is_writer:
        logging.warning("%s", message)
    raise Interrupted(message, stop.signum)


def _evaluate_and_log(run: LoopContext, step: int, train_metrics, state, feed) -> None:
    """Test-split evaluation at `step`, each member's record logged everywhere a reader looks."""
    config = run.config
    trains = steps_lib.per_replica(train_metrics)
    tests = feed.evaluate(state)
    for name, test in zip(run.names, tests, strict=True):
        if not all(math.isfinite(v) for v in test.values()):
            raise steps_lib.diverged(name, step, f"the test loss became {test['loss']}")
    epoch = step / data_lib.steps_per_epoch(run.dataset.train, config.batch_size)
    records = [
        {
            "step": step,
            "epoch": epoch,
            "replica": m,
            **member,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"test_{k}": v for k, v in test.items()},
        }
        for m, (train, test, member) in enumerate(zip(trains, tests, run.members, strict=True))
    ]
    run.history.extend(records)
    if run.is_writer:
        for record in records:
            rundir.append_record(run.workdir, record)
            events.write_record(run.writers, record)
        line = progress_lib.format_records(records, config.num_train_steps)
        logging.info("%s: %s", config.name, line)  # named: two runs may share a terminal
    if run.live:
        run.live.evaluated(records)
    if run.on_eval:
        for record in records:
            run.on_eval(record)
