"""The jitted train and eval steps, pure functions of (state, batch), and `Steps` for a mesh."""

from functools import partial
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmnist_jax import data as data_lib
from fmnist_jax import distributed, models, optimizers, population, replicas
from fmnist_jax.errors import ConfigError, TrainingError


@flax.struct.dataclass
class ClassificationMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Accuracy


@flax.struct.dataclass
class RegressionMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")


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


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the model's other collections and a member's call arguments."""

    model_state: Any = flax.struct.field(default_factory=dict)
    hyperparams: Any = flax.struct.field(default_factory=dict)

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}


def create_train_state(config, model, input_shape, rng: jax.Array, varied=()) -> TrainState:
    """The initial state from `rng` for inputs [batch, *input_shape], `varied` fields as values."""
    variables = dict(model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False))
    params = variables.pop("params")
    call = set(models.call_arguments(model))
    hyper = {f: jnp.asarray(config[f], jnp.float32) for f in varied if f in call}
    injected = ("learning_rate", *(f for f in varied if f not in call)) if varied else ()
    tx = optimizers.create_optimizer(config, injected)
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, model_state=variables, hyperparams=hyper
    )


def train_step(state: TrainState, batch, dropout_rng, *, regression: bool):
    """One optimizer step on `batch`; the dropout key is `fold_in(dropout_rng, step)`."""
    rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        outputs, updates = state.apply_fn(
            {"params": params, **state.model_state},
            batch["inputs"],
            train=True,
            rngs={"dropout": rng},
            mutable=list(state.model_state),
            **state.hyperparams,
        )
        losses = per_example_loss(outputs, batch["targets"], regression)
        return losses.mean(), (outputs, losses, updates)

    grads, (outputs, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, model_state={**state.model_state, **updates})
    return state, batch_metrics(outputs, batch["targets"], losses, regression)


def eval_step(state: TrainState, batch, *, regression: bool):
    """Metrics of one padded batch in eval mode; padding (mask False) does not count."""
    outputs = state.apply_fn(state.variables, batch["inputs"], train=False)
    losses = per_example_loss(outputs, batch["targets"], regression)
    return batch_metrics(outputs, batch["targets"], losses, regression, mask=batch["mask"])


@flax.struct.dataclass
class TrainAccumulator:
    """Train metrics since the last evaluation; the first non-finite step (-1: none), its loss."""

    metrics: metrics.Collection
    first_nonfinite_step: jax.Array
    nonfinite_loss: jax.Array

    @classmethod
    def empty(cls, regression: bool) -> "TrainAccumulator":
        collection = RegressionMetrics if regression else ClassificationMetrics
        return cls(collection.empty(), jnp.array(-1, jnp.int32), jnp.array(0.0, jnp.float32))

    def check_finite(self, names) -> None:
        """Raises `diverged` for the first non-finite step (a host read: at evaluations only)."""
        steps = np.atleast_1d(np.asarray(self.first_nonfinite_step))
        bad = np.flatnonzero(steps >= 0)
        if len(bad):
            m = int(bad[np.argmin(steps[bad])])
            loss = float(np.atleast_1d(np.asarray(self.nonfinite_loss))[m])
            raise diverged(names[m], int(steps[m]), f"the training loss became {loss}")


def diverged(who: str, step: int, what: str) -> TrainingError:
    """The one error of a run whose numbers stopped being finite."""
    return TrainingError(
        f"{who}: {what} at step {step}; stopped without saving this state (lower the learning"
        " rate; the last good checkpoint is kept)"
    )


@jax.jit
def all_finite(tree) -> jax.Array:
    """Per member (the leading axis of `tree`), one device boolean: all its values finite."""
    leaves = [jnp.isfinite(x).reshape(x.shape[0], -1).all(1) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all(0)


def accumulate_train_step(state, batch, dropout_rng, acc: TrainAccumulator, *, regression: bool):
    """`train_step`, its metrics merged into `acc` on the device."""
    state, step_metrics = train_step(state, batch, dropout_rng, regression=regression)
    loss = step_metrics.loss.total
    first = (acc.first_nonfinite_step < 0) & ~jnp.isfinite(loss)
    return state, TrainAccumulator(
        acc.metrics.merge(step_metrics),
        jnp.where(first, state.step, acc.first_nonfinite_step).astype(jnp.int32),
        jnp.where(first, loss, acc.nonfinite_loss),
    )


def _device_batch(images, targets, idx, sharding):
    """The batch of examples `idx` of splits on the device, sharded like a host batch."""
    x = data_lib.to_model_inputs(images[idx])
    return jax.lax.with_sharding_constraint({"inputs": x, "targets": targets[idx]}, sharding)


def train_chunk(state, acc, idx, images, targets, dropout_rng, *, regression: bool, sharding):
    """`len(idx)` `accumulate_train_step`s as one scan, step k on the device's examples `idx[k]`."""

    def body(carry, step_idx):
        state, acc = carry
        batch = _device_batch(images, targets, step_idx, sharding)
        return accumulate_train_step(state, batch, dropout_rng, acc, regression=regression), None

    (state, acc), _ = jax.lax.scan(body, (state, acc), idx)
    return state, acc


def evaluate_resident(state, idx, mask, images, targets, *, regression: bool, sharding):
    """`eval_step` over every padded batch of a split on the device, as one `lax.scan`."""
    collection = RegressionMetrics if regression else ClassificationMetrics

    def body(total, xs):
        batch_idx, batch_mask = xs
        batch = _device_batch(images, targets, batch_idx, sharding)
        batch["mask"] = jax.lax.with_sharding_constraint(batch_mask, sharding)
        return total.merge(eval_step(state, batch, regression=regression)), None

    total, _ = jax.lax.scan(body, collection.empty(), (idx, mask))
    return total


def check_divisible(config, mesh: Mesh) -> None:
    n = mesh.shape["data"]
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % n:
            raise ConfigError(
                f"config.{field}={config[field]} is not divisible by the {n} devices of the"
                f" mesh's data axis; choose a multiple of {n} (batches are split evenly across"
                " devices, never padded)"
            )


class Steps:
    """The jitted steps for one config and mesh, mapped over the members as `how` says."""

    def __init__(self, config, mesh: Mesh, how: str = "vmap", regression: bool = False):
        self.regression = regression
        self.num_replicas = r = config.get("num_replicas", 1)
        self.num_points = g = population.num_points(config)
        self.num_members = g * r
        self.replica_map = how
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.per_replica = NamedSharding(mesh, PartitionSpec("replica"))
        # A population's points share each seed's batch: batches are not split over points.
        self.sharded = NamedSharding(mesh, PartitionSpec("replica" if g == 1 else None, "data"))
        self.eval_sharded = NamedSharding(mesh, PartitionSpec("data"))
        self.multi_process = jax.process_count() > 1
        rep, own, shard = self.replicated, self.per_replica, self.sharded
        regression = {"regression": self.regression}

        def members(fn, in_axes, per_seed=()):
            return replicas.over_members(fn, g, r, in_axes, how, per_seed)

        self.train = jax.jit(
            members(partial(accumulate_train_step, **regression), (0,) * 4, per_seed=(1,)),
            in_shardings=(own, shard, own, own),
            out_shardings=(own, own),
            donate_argnums=(0, 3),
        )
        self.eval = jax.jit(
            members(partial(eval_step, **regression), (0, None)),
            in_shardings=(own, self.eval_sharded),
            out_shardings=own,
        )
        resident = {**regression, "sharding": NamedSharding(mesh, PartitionSpec("data"))}
        self.train_chunk = jax.jit(
            members(partial(train_chunk, **resident), (0, 0, 1, None, None, 0), per_seed=(2,)),
            in_shardings=(own, own, rep, rep, rep, own),
            out_shardings=(own, own),
            donate_argnums=(0, 1),
        )
        self.evaluate_resident = jax.jit(
            members(partial(evaluate_resident, **resident), (0, None, None, None, None)),
            in_shardings=(own, rep, rep, rep, rep),
            out_shardings=own,
        )

    def rows(self, batch_size: int) -> slice | None:
        """This process's rows of a global batch (None: one process, all rows)."""
        return distributed.local_rows(batch_size) if self.multi_process else None

    def batch(self, batch: dict, batch_size: int):
        """The numpy batch [replicas, rows, ...], or with several processes global arrays."""
        if not self.multi_process:
            return batch
        return distributed.to_global(batch, self.sharded, batch_size, axis=1)

    def eval_batch(self, batch: dict, batch_size: int):
        """What the eval step takes (one test batch for every replica)."""
        if not self.multi_process:
            return batch
        return distributed.to_global(batch, self.eval_sharded, batch_size)

    def place(self, tree):
        """Host values with a leading replica axis as the steps' per-replica arrays."""
        return distributed.replicate(tree, self.per_replica)

    def empty_accumulator(self) -> TrainAccumulator:
        empty = TrainAccumulator.empty(self.regression)
        return self.place(replicas.stack([empty] * self.num_members))


def per_replica(collection: metrics.Collection) -> list[dict[str, float]]:
    """A collection with a leading replica axis computed per replica: one {name: float} each."""
    values = jax.vmap(type(collection).compute)(collection)
    arrays = {k: np.asarray(v) for k, v in values.items()}
    count = len(next(iter(arrays.values())))
    return [{k: float(v[i]) for k, v in arrays.items()} for i in range(count)]


def evaluate(steps: Steps, state, split, batch_size: int) -> list[dict[str, float]]:
    """Loss (and accuracy) of each replica over a whole split, every example counted once."""
    total = None
    rows = steps.rows(batch_size)
    for batch in data_lib.epoch_batches(split, batch_size, remainder="pad", rows=rows):
        m = steps.eval(state, steps.eval_batch(batch, batch_size))
        total = m if total is None else total.merge(m)
    return per_replica(total)
