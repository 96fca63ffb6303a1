"""The one train loop every experiment shares; experiments differ only in their config.

`train_and_evaluate(config, workdir)` trains data-parallel over all local devices (a 1-D `data`
mesh: batch sharded, parameters replicated), evaluates every `eval_every_steps` steps on the
whole test split, writes TensorBoard events to `workdir/train` and `workdir/test` (same tags, so
TensorBoard overlays them), `metrics.jsonl`, orbax checkpoints in `workdir/checkpoints`,
`config.json` and at the end `summary.json`. Rerunning on the same workdir resumes.
"""

import dataclasses
import importlib.metadata
import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metrics
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmnist_jax import config as config_lib
from fmnist_jax import data as data_lib
from fmnist_jax import models, runtime
from fmnist_jax.errors import TrainingError

# Fields whose change makes an existing workdir's checkpoints unusable or its curves meaningless.
ARCHITECTURE_FIELDS = ("model", "num_classes", "hidden_size", "dataset", "optimizer")


# --------------------------------------------------------------------------- metrics


@flax.struct.dataclass
class ClassificationMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Accuracy


@flax.struct.dataclass
class RegressionMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")


def is_regression(config) -> bool:
    return config.model == "linear_regression"


def per_example_loss(outputs: jax.Array, targets: jax.Array, regression: bool) -> jax.Array:
    """Squared error for regression, softmax cross-entropy for classification."""
    if regression:
        return jnp.square(outputs - targets)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, targets)


def batch_metrics(outputs, targets, losses, regression: bool, mask=None) -> metrics.Collection:
    if regression:
        return RegressionMetrics.single_from_model_output(loss=losses, mask=mask)
    return ClassificationMetrics.single_from_model_output(
        loss=losses, logits=outputs, labels=targets, mask=mask
    )


# --------------------------------------------------------------------------- state and steps


def create_optimizer(config) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    if config.optimizer == "momentum":
        return optax.sgd(config.learning_rate, momentum=config.momentum)
    return optax.sgd(config.learning_rate)


def create_train_state(config, model, input_shape, rng: jax.Array) -> train_state.TrainState:
    """Initializes parameters from `rng` for inputs shaped [batch, *input_shape]."""
    params = model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)["params"]
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=create_optimizer(config)
    )


def train_step(state, batch, dropout_rng, *, regression: bool):
    """One optimizer step on `batch`; the dropout key is `fold_in(dropout_rng, step)`."""
    rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        outputs = state.apply_fn(
            {"params": params}, batch["inputs"], train=True, rngs={"dropout": rng}
        )
        losses = per_example_loss(outputs, batch["targets"], regression)
        return losses.mean(), (outputs, losses)

    grads, (outputs, losses) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, batch_metrics(outputs, batch["targets"], losses, regression)


def eval_step(state, batch, *, regression: bool):
    """Metrics of one padded batch; padding (mask False) does not count."""
    outputs = state.apply_fn({"params": state.params}, batch["inputs"], train=False)
    losses = per_example_loss(outputs, batch["targets"], regression)
    return batch_metrics(outputs, batch["targets"], losses, regression, mask=batch["mask"])


# --------------------------------------------------------------------------- devices


def make_mesh() -> Mesh:
    """A 1-D mesh named `data` over all local devices."""
    return Mesh(np.array(jax.local_devices()), ("data",))


def check_divisible(config, mesh: Mesh) -> None:
    n = mesh.size
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % n:
            raise config_lib.ConfigError(
                f"config.{field}={config[field]} is not divisible by the {n} devices; choose a"
                f" multiple of {n} (batches are split evenly across devices, never padded)"
            )


class Steps:
    """The jitted train and eval steps for one config and mesh."""

    def __init__(self, config, mesh: Mesh):
        regression = is_regression(config)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.sharded = NamedSharding(mesh, PartitionSpec("data"))
        self.train = jax.jit(
            partial(train_step, regression=regression),
            in_shardings=(self.replicated, self.sharded, self.replicated),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        self.eval = jax.jit(
            partial(eval_step, regression=regression),
            in_shardings=(self.replicated, self.sharded),
            out_shardings=self.replicated,
        )

    def put_batch(self, batch):
        """`batch` placed on the mesh ahead of time. The loop does not need it: the jitted
        steps take host (numpy) batches and place them by their `in_shardings` in C++,
        ~170 us a step cheaper than this Python-side `device_put` (linear regression's whole
        step is ~120 us)."""
        return jax.device_put(batch, self.sharded)


def evaluate(steps: Steps, state, split, batch_size: int) -> dict[str, float]:
    """Loss (and accuracy) over a whole split, every example counted once."""
    total = None
    for batch in data_lib.epoch_batches(split, batch_size, remainder="pad"):
        m = steps.eval(state, batch)
        total = m if total is None else total.merge(m)
    return {k: float(v) for k, v in total.compute().items()}


# --------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: Path, max_to_keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def _is_finalized(path: Path) -> bool:
    """Whether `path` is a step directory orbax finished writing (it writes this file last)."""
    return path.name.isdigit() and (path / "_CHECKPOINT_METADATA").is_file()


def set_aside_incomplete_checkpoints(checkpoint_dir: Path) -> None:
    """Renames step directories that orbax never finalized (no `_CHECKPOINT_METADATA`, say
    emptied or copied by hand) to `<step>.incomplete`, so they are neither picked as the latest
    step nor block saving that step anew. Saves cut short by a kill are never listed anyway:
    orbax writes them under a temporary name."""
    if not checkpoint_dir.is_dir():
        return
    for path in checkpoint_dir.iterdir():
        if path.name.isdigit() and not _is_finalized(path):
            aside = path.with_name(f"{path.name}.incomplete")
            logging.warning("checkpoint %s is incomplete; moved to %s", path, aside.name)
            path.rename(aside)


def restore_step(manager: ocp.CheckpointManager, step: int, state):
    """Checkpoint `step` restored into `state`'s structure (shapes, dtypes, shardings)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - any failure becomes one clear line
        raise TrainingError(
            f"{manager.directory}/{step} cannot be restored into this config's model and"
            f" optimizer ({str(e).splitlines()[0][:160]}); use another --workdir"
        ) from None


def restore_latest(manager: ocp.CheckpointManager, state):
    """The latest checkpoint restored into `state`'s structure, or None if there is none."""
    step = manager.latest_step()
    return None if step is None else restore_step(manager, step, state)


# --------------------------------------------------------------------------- run files


def check_workdir(workdir: Path, config) -> None:
    """Refuses a workdir whose saved config belongs to a different experiment architecture."""
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    for field in ARCHITECTURE_FIELDS:
        if field in saved and saved[field] != config[field]:
            raise TrainingError(
                f"{workdir} holds a run with {field}={saved[field]!r}, but this config has"
                f" {field}={config[field]!r}; use another --workdir or delete that one"
            )


def read_history(workdir: Path, up_to_step: int) -> list[dict]:
    """Evaluation records logged so far, dropping those after `up_to_step` (a resumed run
    repeats the steps after its checkpoint)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            logging.warning("%s: skipping an unreadable line: %.80s", path, line)
    return [r for r in records if r["step"] <= up_to_step]


def write_history(workdir: Path, history: list[dict]) -> None:
    tmp = workdir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    tmp.replace(workdir / "metrics.jsonl")


def append_history(workdir: Path, record: dict) -> None:
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def versions() -> dict[str, str]:
    """Installed versions of the stack, for summaries and reports."""
    names = ("jax", "jaxlib", "flax", "optax", "clu", "orbax-checkpoint", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def summarize(config, history: list[dict], dataset, timing: dict) -> dict:
    """The numbers a reader wants from a finished run, computed from its evaluation history."""
    last = history[-1]
    min_loss = min(history, key=lambda r: r["test_loss"])
    summary = {
        "name": config.name,
        "model": config.model,
        "dropout_rate": config.dropout_rate,
        "steps": last["step"],
        "steps_per_epoch": data_lib.steps_per_epoch(dataset.train, config.batch_size),
        "final_test_loss": last["test_loss"],
        "min_test_loss": min_loss["test_loss"],
        "min_test_loss_step": min_loss["step"],
        "final_train_loss": last["train_loss"],
        "final_test_accuracy": last.get("test_accuracy"),
        "best_test_accuracy": None,
        "best_test_accuracy_step": None,
        "final_train_accuracy": last.get("train_accuracy"),
    }
    if not is_regression(config):
        best = max(history, key=lambda r: r["test_accuracy"])
        summary["best_test_accuracy"] = best["test_accuracy"]
        summary["best_test_accuracy_step"] = best["step"]
    device = jax.local_devices()[0]
    summary.update(timing)
    summary.update(
        backend=jax.default_backend(),
        device_kind=device.device_kind,
        device_count=jax.local_device_count(),
        data=dataset.describe(),
        versions=versions(),
        runtime=runtime.describe(),
    )
    return summary


# --------------------------------------------------------------------------- the loop


def _write_record(writers, record: dict) -> None:
    for prefix, writer in writers.items():
        scalars = {k[len(prefix) + 1 :]: v for k, v in record.items() if k.startswith(prefix)}
        writer.write_scalars(record["step"], scalars)


def open_writers(workdir: Path, config, history: list[dict]) -> dict:
    """TensorBoard writers for `train/` and `test/`, holding exactly `history`.

    Event files cannot be truncated, so those of an interrupted run (which may hold steps past
    its last checkpoint) are replaced by a replay of the kept history: a resumed run's curves
    have each step once.
    """
    from clu import metric_writers  # imports TensorFlow: only where a run actually writes

    for name in ("train", "test"):
        for old in (workdir / name).glob("events.out.tfevents.*"):
            old.unlink()
    writers = {
        name: metric_writers.create_default_writer(workdir, collection=name)
        for name in ("train", "test")
    }
    writers["train"].write_hparams(_flat(config.to_dict()))
    for record in history:
        _write_record(writers, record)
    return writers


def _check_finite(step_metrics, step: int) -> None:
    loss = float(step_metrics.loss.total)
    if not math.isfinite(loss):
        raise TrainingError(
            f"the training loss became {loss} at step {step}; stopped without saving this state"
            " (lower the learning rate; the last good checkpoint is kept)"
        )


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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: data_lib.Dataset | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> train_state.TrainState:
    """Trains and evaluates the model `config` describes; resumes from `workdir` if it can.

    `dataset` overrides `data.load(config)` (for callers holding their own arrays). `on_eval`
    is called with each evaluation record. Returns the final train state.
    """
    config_lib.validate(config)
    workdir = Path(workdir)
    check_workdir(workdir, config)
    dataset = dataset or data_lib.load(config)
    mesh = make_mesh()
    check_divisible(config, mesh)
    steps = Steps(config, mesh)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    model = models.create_model(config)
    state = create_train_state(config, model, dataset.train["inputs"].shape[1:], init_rng)
    state = jax.device_put(state, steps.replicated)

    workdir.mkdir(parents=True, exist_ok=True)
    set_aside_incomplete_checkpoints(workdir / "checkpoints")
    with checkpoint_manager(workdir, config.max_checkpoints_to_keep) as manager:
        restored = restore_latest(manager, state)
        state = state if restored is None else restored
        initial_step = int(state.step)
        if initial_step:
            logging.info("resuming %s from step %d", workdir, initial_step)
        history = read_history(workdir, initial_step)
        write_history(workdir, history)
        write_json(workdir / "config.json", config.to_dict())
        writers = open_writers(workdir, config, history)
        run = Run(config, workdir, dataset, steps, manager, writers, history, on_eval)
        try:
            state, timing = _loop(run, state, dropout_rng)
        finally:
            for writer in writers.values():
                writer.close()
    write_json(workdir / "summary.json", summarize(config, history, dataset, timing))
    return state


def _loop(run: Run, state, dropout_rng):
    """Steps from the state's step to `num_train_steps`; returns (state, timing numbers)."""
    config, initial_step = run.config, int(state.step)
    num_steps = config.num_train_steps
    batches = data_lib.train_batches(
        run.dataset.train, config.batch_size, config.seed, initial_step
    )
    from clu import periodic_actions

    report = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=run.writers["train"], every_secs=30
    )
    train_metrics, start, eval_time, first_step_time = None, time.time(), 0.0, 0.0
    for step in range(initial_step + 1, num_steps + 1):
        state, step_metrics = run.steps.train(state, next(batches), dropout_rng)
        _check_finite(step_metrics, step)
        if step == initial_step + 1:
            first_step_time = time.time() - start
        train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
        report(step)
        if step % config.eval_every_steps == 0 or step == num_steps:
            t = time.time()
            with report.timed("eval"):
                _evaluate_and_log(run, step, train_metrics, state)
            eval_time += time.time() - t
            train_metrics = None
        if step % config.checkpoint_every_steps == 0 or step == num_steps:
            run.manager.save(step, args=ocp.args.StandardSave(state))
    run.manager.wait_until_finished()
    wall = time.time() - start
    timed_steps = num_steps - initial_step - 1  # the first step includes compilation
    steady = wall - eval_time - first_step_time
    return state, {
        "resumed_from_step": initial_step,
        "wall_time_s": round(wall, 2),
        "first_step_s": round(first_step_time, 3),
        "eval_time_s": round(eval_time, 2),
        "images_per_sec": round(timed_steps * config.batch_size / steady, 1)
        if timed_steps > 0 and steady > 0
        else None,
    }


def _evaluate_and_log(run: Run, step: int, train_metrics, state) -> None:
    """Test-split evaluation at `step`, logged everywhere a reader looks."""
    config = run.config
    train = {f"train_{k}": float(v) for k, v in train_metrics.compute().items()}
    test = evaluate(run.steps, state, run.dataset.test, config.eval_batch_size)
    epoch = step / data_lib.steps_per_epoch(run.dataset.train, config.batch_size)
    record = {"step": step, "epoch": epoch, **train, **{f"test_{k}": v for k, v in test.items()}}
    run.history.append(record)
    append_history(run.workdir, record)
    _write_record(run.writers, record)
    logging.info("step %d/%d: %s", step, config.num_train_steps, _format_record(record))
    if run.on_eval:
        run.on_eval(record)


def _format_record(record: dict) -> str:
    return ", ".join(
        f"{k}={v:.4f}" for k, v in record.items() if k not in ("step", "epoch") and v is not None
    )


# --------------------------------------------------------------------------- trained models


def complete_steps(checkpoint_dir: Path) -> list[int]:
    """Steps with a finalized checkpoint in `checkpoint_dir`, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoint_dir.iterdir() if _is_finalized(p))


def load_trained(workdir: str | Path, step: int | None = None):
    """(config, model, params) of the run in `workdir`, from its latest (or given) checkpoint."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise TrainingError(f"{workdir}: no config.json here; is it a training run's workdir?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    steps = complete_steps(workdir / "checkpoints")
    if not steps:
        raise TrainingError(f"{workdir}/checkpoints: no finished checkpoint here; train first")
    step = steps[-1] if step is None else step
    model = models.create_model(config)
    if config.model == "linear_regression":
        input_shape = (config.regression.num_features,)
    else:
        input_shape = (*data_lib.IMAGE_SHAPE, 1)
    state = create_train_state(config, model, input_shape, jax.random.PRNGKey(0))
    with checkpoint_manager(workdir, config.max_checkpoints_to_keep) as manager:
        restored = restore_step(manager, step, state)
    return config, model, restored.params
