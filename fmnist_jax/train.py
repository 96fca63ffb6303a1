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
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state

from fmnist_jax import config as config_lib
from fmnist_jax import data as data_lib
from fmnist_jax import distributed, models, rundir, summary
from fmnist_jax.errors import RunError, TrainingError
from fmnist_jax.steps import (  # noqa: F401 - the names a Flax reader looks for here
    Steps,
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


# --------------------------------------------------------------------------- checkpoints


def restore_step(manager, step: int, state):
    """Checkpoint `step` restored into `state`'s structure (shapes, dtypes, shardings)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - any failure becomes one clear line
        raise TrainingError(
            f"{manager.directory}/{step} cannot be restored into this config's model and"
            f" optimizer ({str(e).splitlines()[0][:160]}); use another --workdir"
        ) from None


def restore_latest(manager, state):
    """The latest checkpoint restored into `state`'s structure, or None if there is none."""
    step = manager.latest_step()
    return None if step is None else restore_step(manager, step, state)


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
) -> tuple[train_state.TrainState, list[dict]]:
    """Trains and evaluates the model `config` describes; resumes from `workdir` if it can.

    `dataset` overrides `data.load(config)` (for callers holding their own arrays). `on_eval`
    is called with each evaluation record. Returns the final train state and the evaluation
    history (the records of metrics.jsonl, the resumed part included).
    """
    config_lib.validate(config)
    workdir, writer = Path(workdir), distributed.is_writer()
    rundir.check_same_run(workdir, config, ARCHITECTURE_FIELDS)
    dataset = dataset or _load_data(config)
    mesh = make_mesh()
    check_divisible(config, mesh)
    steps = Steps(config, mesh)
    state, dropout_rng = _initial_state(config, dataset, steps)
    if writer:
        workdir.mkdir(parents=True, exist_ok=True)
    distributed.barrier("fmnist_workdir_ready")
    rundir.set_aside_unfinished(workdir, rename=writer)
    distributed.barrier("fmnist_checkpoints_checked")
    with rundir.checkpoint_manager(workdir, config.max_checkpoints_to_keep) as manager:
        restored = restore_latest(manager, state)
        state = state if restored is None else restored
        initial_step = int(state.step)
        if initial_step and writer:
            logging.info("resuming %s from step %d", workdir, initial_step)
        history = rundir.read_history(workdir, initial_step)
        if writer:
            rundir.write_history(workdir, history)
            rundir.write_config(workdir, config.to_dict())
        writers = rundir.open_writers(workdir, config.to_dict(), history, just_logging=not writer)
        run = Run(config, workdir, dataset, steps, manager, writers, history, on_eval, writer)
        try:
            with distributed.exit_on_peer_failure(workdir):
                state, timing = _loop(run, state, dropout_rng)
        finally:
            for w in writers.values():
                w.close()
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

    report = periodic_actions.ReportProgress(
        num_train_steps=run.config.num_train_steps, writer=run.writers["train"], every_secs=30
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


def _loop(run: Run, state, dropout_rng):
    """Steps from the state's step to `num_train_steps`; returns (state, timing numbers)."""
    config, initial_step = run.config, int(state.step)
    num_steps, batch_size = config.num_train_steps, config.batch_size
    rows = run.steps.rows(batch_size)
    batches = data_lib.train_batches(run.dataset.train, batch_size, config.seed, initial_step, rows)
    report, profile = _actions(run, initial_step)
    acc, start, eval_time, first_step_time = run.steps.empty_accumulator(), time.time(), 0.0, 0.0
    for step in range(initial_step + 1, num_steps + 1):
        batch = run.steps.batch(next(batches), batch_size)
        state, acc = run.steps.train(state, batch, dropout_rng, acc)
        if step == initial_step + 1:
            jax.block_until_ready(acc)  # the first step includes compilation
            first_step_time = time.time() - start
        report(step)
        profile(step)
        if step % config.eval_every_steps == 0 or step == num_steps:
            t = time.time()
            acc.check_finite()
            with report.timed("eval"):
                _evaluate_and_log(run, step, acc.metrics, state)
            eval_time += time.time() - t
            acc = run.steps.empty_accumulator()
        if step % config.checkpoint_every_steps == 0 or step == num_steps:
            run.manager.save(step, args=ocp.args.StandardSave(state))
    run.manager.wait_until_finished()
    return state, _timing(config, initial_step, time.time() - start, eval_time, first_step_time)


def _timing(config, initial_step: int, wall: float, eval_time: float, first_step: float) -> dict:
    timed_steps = config.num_train_steps - initial_step - 1  # the first includes compilation
    steady = wall - eval_time - first_step
    rate = timed_steps * config.batch_size / steady if timed_steps > 0 and steady > 0 else None
    return {
        "resumed_from_step": initial_step,
        "wall_time_s": round(wall, 2),
        "first_step_s": round(first_step, 3),
        "eval_time_s": round(eval_time, 2),
        "images_per_sec": None if rate is None else round(rate, 1),
        "steps_per_sec": None if rate is None else round(rate / config.batch_size, 2),
    }


def _evaluate_and_log(run: Run, step: int, train_metrics, state) -> None:
    """Test-split evaluation at `step`, logged everywhere a reader looks."""
    config = run.config
    train = {f"train_{k}": float(v) for k, v in train_metrics.compute().items()}
    test = evaluate(run.steps, state, run.dataset.test, config.eval_batch_size)
    epoch = step / data_lib.steps_per_epoch(run.dataset.train, config.batch_size)
    record = {"step": step, "epoch": epoch, **train, **{f"test_{k}": v for k, v in test.items()}}
    run.history.append(record)
    if run.writer:
        rundir.append_record(run.workdir, record)
        rundir.write_record(run.writers, record)
        logging.info("step %d/%d: %s", step, config.num_train_steps, _format_record(record))
    if run.on_eval:
        run.on_eval(record)


def _format_record(record: dict) -> str:
    return ", ".join(
        f"{k}={v:.4f}" for k, v in record.items() if k not in ("step", "epoch") and v is not None
    )


# --------------------------------------------------------------------------- trained models


def load_trained(workdir: str | Path, step: int | None = None):
    """(config, model, params) of the run in `workdir`, from its latest (or given) finished
    checkpoint; RunError when the workdir holds no run or no finished checkpoint."""
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(rundir.read_config(workdir))
    steps = rundir.finished_steps(workdir)
    if not steps:
        raise RunError(f"{workdir}/checkpoints: no finished checkpoint here; train first")
    if step is not None and step not in steps:
        raise RunError(f"{workdir}/checkpoints: no finished checkpoint at step {step}: {steps}")
    step = steps[-1] if step is None else step
    model = models.create_model(config)
    if config.model == "linear_regression":
        input_shape = (config.regression.num_features,)
    else:
        input_shape = (*data_lib.IMAGE_SHAPE, 1)
    state = create_train_state(config, model, input_shape, jax.random.PRNGKey(0))
    with rundir.checkpoint_manager(workdir, config.get("max_checkpoints_to_keep", 3)) as manager:
        restored = restore_step(manager, step, state)
    return config, model, restored.params
