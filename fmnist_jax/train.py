"""The one train loop every experiment shares; experiments differ only in their config.

`train_and_evaluate(config, workdir)` trains data-parallel over every device of every process
(a 2-D (`replica`, `data`) mesh: members over `replica`, each batch sharded over `data`,
parameters replicated within a member; see `fmnist_jax.distributed`),
evaluates every `eval_every_steps` steps on the whole test split, and writes the run directory:
config.json, metrics.jsonl and at the end summary.json (`fmnist_jax.rundir`), TensorBoard events
in `train/` and `test/` (`fmnist_jax.events`; same tags, so TensorBoard overlays them) and
orbax checkpoints (`fmnist_jax.checkpoints`). Rerunning on the same workdir resumes.

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
from fmnist_jax.errors import Interrupted, RunError, TrainingError, UsageError

# Fields whose change makes an existing workdir's checkpoints unusable or its curves meaningless.
ARCHITECTURE_FIELDS = (
    "model", "num_classes", "hidden_size", "dataset", "optimizer", "num_replicas", "grid",
)  # fmt: skip


@dataclasses.dataclass
class LoopContext:
    """What the loop of one invocation works with."""

    config: ml_collections.ConfigDict
    workdir: Path
    dataset: data_lib.Dataset
    steps: steps_lib.Steps
    manager: ocp.CheckpointManager
    writers: dict
    history: list[dict]
    on_eval: Callable[[dict], None] | None = None
    writer: bool = True  # this process writes the run directory's files (process 0)
    progress: object | None = None  # progress.LiveProgress for API callers
    # Each member's fields in metrics.jsonl's records ({} each without a population), and
    # its name for error messages (None without a population).
    members: list[dict] = dataclasses.field(init=False)
    names: list[str] | None = dataclasses.field(init=False)

    def __post_init__(self):
        identities = population.members(self.config)
        self.members, self.names = [{}] * len(identities), None
        if population.is_population(self.config):
            self.members = [{k: v for k, v in m.items() if k != "replica"} for m in identities]
            self.names = [
                f"member {i} ({population.member_name(m)})" for i, m in enumerate(identities)
            ]


def initial_state(config, input_shape, steps: steps_lib.Steps):
    """(state, dropout keys): each member's initial train state for inputs shaped
    [batch, *input_shape] and its dropout key, from its seed (and grid point) as for a plain
    run of that seed, stacked on a leading member axis and placed for `steps`."""
    model = models.create_model(config)
    member = population.is_population(config)
    states, dropout_rngs = [], []
    for m in population.members(config):
        point = population.hyperparameters(m)
        init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(m["seed"]))
        c = population.point_config(config, point)
        states.append(steps_lib.create_train_state(c, model, input_shape, init_rng, member))
        dropout_rngs.append(dropout_rng)
    state = replicas.stack(states)
    return steps.place(state), steps.place(replicas.stack(dropout_rngs))


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
    evaluation) for notebooks and scripts, where absl's progress lines are hidden. Returns the
    final train state (with `config.num_replicas` > 1 a leading replica axis:
    `replicas.take(state, k)` is replica k) and the evaluation history (the records of
    metrics.jsonl, one per evaluation and replica, the resumed part included). Raises
    `errors.Interrupted` after saving a checkpoint when SIGTERM or SIGINT asks it to stop."""
    config_lib.validate(config)
    config = population.resolved(config)
    workdir, writer = Path(workdir), distributed.is_writer()
    try:
        with contextlib.ExitStack() as held:
            # Process 0 prepares the workdir, takes its lock and loads (so prepares TFDS)
            # first, then the others load: a failure on any process ends every process here.
            with distributed.failing_together("fmnist_workdir_ready"):
                if writer:
                    rundir.prepare(workdir)
                rundir.check_same_run(workdir, config, ARCHITECTURE_FIELDS)
                if writer:
                    held.enter_context(rundir.writer_lock(workdir))
                    dataset = dataset or data_lib.load(config)
            with distributed.failing_together("fmnist_data_prepared"):
                dataset = dataset or data_lib.load(config)
            live = progress_lib.LiveProgress(config.num_train_steps) if progress else None
            return _train(config, workdir, dataset, on_eval, writer, live)
    except Exception as e:
        if not rundir.disk_full(e):
            raise
        kept = checkpoints.finalized_step_folders(workdir)  # no orbax manager: one process
        raise RunError(
            f"{workdir}: no space left on device; the last finished checkpoint"
            f" ({f'step {kept[-1]}' if kept else 'none yet'}) is kept and the same command"
            " resumes from it once there is space"
        ) from None


def _train(config, workdir: Path, dataset, on_eval, writer: bool, live=None):
    points = population.num_points(config)
    mesh = distributed.make_mesh(points if points > 1 else config.num_replicas)
    steps_lib.check_divisible(config, mesh)
    steps = steps_lib.Steps(config, mesh)
    state, dropout_rng = initial_state(config, dataset.train["inputs"].shape[1:], steps)
    distributed.barrier("fmnist_workdir_ready")
    finished = checkpoints.set_aside_unfinished(workdir, rename=writer)
    distributed.barrier("fmnist_checkpoints_checked")
    with checkpoints.checkpoint_manager(workdir, config.max_checkpoints_to_keep) as manager:
        initial_step, state, acc = checkpoints.restore_latest_intact(
            manager, workdir, finished, state, steps.empty_accumulator(), writer
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
            if writer:
                logging.info("%s is trained to step %d already", workdir, initial_step)
            return _returned(state, config), history
        if initial_step and writer:
            logging.info("resuming %s from step %d", workdir, initial_step)
        if writer:
            rundir.write_history(workdir, history)
            rundir.write_config(workdir, config.to_dict())
        writers = events.open_writers(
            workdir, config.to_dict(), history, initial_step, just_logging=not writer
        )
        live = live if writer else None
        run = LoopContext(
            config, workdir, dataset, steps, manager, writers, history, on_eval, writer, live
        )
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
    return _returned(state, config), history


def _returned(state, config):
    """The state `train_and_evaluate` returns: with one member that member, as a plain
    run's (no member axis), else all members stacked."""
    return replicas.take(state, 0) if population.num_members(config) == 1 else state


def _loop(run: LoopContext, state, acc, dropout_rng):
    """Steps from the state's step to `num_train_steps`; returns (state, timing numbers)."""
    config, initial_step = run.config, int(state.step[0])  # every replica is at this step
    num_steps = config.num_train_steps
    feed = feeds.make_feed(run.steps, run.dataset, config, initial_step)
    writer = events.progress_writer(run.writers) if run.writer else None
    report, profile = progress_lib.loop_actions(config, run.workdir, initial_step, writer)
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
                acc.check_finite(run.names)  # a host read: waits for the steps in flight
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
    timing = summary.timing(config, initial_step, time.time() - start, eval_time, first or (0, 0.0))
    return state, {**timing, "steps_per_chunk": feed.chunk}


def _stop(run: LoopContext, stop, step: int, state, acc, saved: bool) -> None:
    """Saves the step reached (unless just saved) and raises Interrupted."""
    if not saved:
        acc.check_finite(run.names)  # never save a non-finite state: the losses, then weights
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


def _evaluate_and_log(run: LoopContext, step: int, train_metrics, state, feed) -> None:
    """Test-split evaluation at `step`, each replica's record logged everywhere a reader
    looks."""
    config = run.config
    trains = steps_lib.per_replica(train_metrics)
    tests = feed.evaluate(state)
    for replica, test in enumerate(tests):
        if not all(math.isfinite(v) for v in test.values()):
            which = f" of replica {replica}" if len(tests) > 1 else ""
            which = f" of {run.names[replica]}" if run.names else which
            raise TrainingError(
                f"the weights{which} after step {step} are not finite (test loss"
                f" {test['loss']}); stopped without saving this state (lower the learning"
                " rate; the last good checkpoint is kept)"
            )
    epoch = step / data_lib.steps_per_epoch(run.dataset.train, config.batch_size)
    records = [
        {
            "step": step,
            "epoch": epoch,
            "replica": replica,
            **member,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"test_{k}": v for k, v in test.items()},
        }
        for replica, (train, test, member) in enumerate(
            zip(trains, tests, run.members, strict=True)
        )
    ]
    run.history.extend(records)
    if run.writer:
        for record in records:
            rundir.append_record(run.workdir, record)
            events.write_record(run.writers, record)
        logging.info("%s", progress_lib.format_records(records, config.num_train_steps))
    if run.progress:
        run.progress.evaluated(records)
    if run.on_eval:
        for record in records:
            run.on_eval(record)
