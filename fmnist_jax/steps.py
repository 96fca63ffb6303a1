"""The jitted train and eval steps, pure functions of (state, batch), and what they return.

`train_step` is one optimizer step (dropout key `fold_in(dropout_rng, step)`); the loop runs it
through `accumulate_train_step`, which also folds the step's metrics into a `TrainAccumulator`
that stays on the device until the next evaluation, with the first step whose loss was not
finite: the loop never waits on the host between evaluations. `Steps` compiles them for a mesh
(batch sharded over `data`, everything else replicated).
"""

from functools import partial

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmnist_jax import data as data_lib
from fmnist_jax import distributed, replicas
from fmnist_jax.errors import ConfigError, TrainingError

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


@flax.struct.dataclass
class TrainAccumulator:
    """What the device sums between two evaluations: the train metrics, and the first step
    whose loss was not finite (-1 while none was) with that loss."""

    metrics: metrics.Collection
    first_nonfinite_step: jax.Array
    nonfinite_loss: jax.Array

    @classmethod
    def empty(cls, regression: bool) -> "TrainAccumulator":
        collection = RegressionMetrics if regression else ClassificationMetrics
        return cls(collection.empty(), jnp.array(-1, jnp.int32), jnp.array(0.0, jnp.float32))

    def check_finite(self) -> None:
        """Raises TrainingError naming the first step whose loss was not finite, and with
        several replicas the replica (a host read: the loop calls it at evaluations only).
        Fields may carry a leading replica axis."""
        steps = np.atleast_1d(np.asarray(self.first_nonfinite_step))
        bad = np.flatnonzero(steps >= 0)
        if not len(bad):
            return
        replica = int(bad[np.argmin(steps[bad])])
        loss = float(np.atleast_1d(np.asarray(self.nonfinite_loss))[replica])
        which = f" of replica {replica} (of {len(steps)})" if len(steps) > 1 else ""
        raise TrainingError(
            f"the training loss{which} became {loss} at step {int(steps[replica])}; stopped"
            " without saving a state past the last checkpoint (lower the learning rate; the"
            " last good checkpoint is kept)"
        )


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every value of a pytree (the params) is finite, as one device boolean."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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


# --------------------------------------------------------------------------- device-resident


def _device_batch(images, targets, idx, sharding):
    """The batch of examples `idx` gathered from splits held on the device, inputs as
    `data.to_model_inputs` makes them, split over the mesh like a host batch."""
    x = images[idx]
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    return jax.lax.with_sharding_constraint({"inputs": x, "targets": targets[idx]}, sharding)


def train_chunk(state, acc, idx, images, targets, dropout_rng, *, regression: bool, sharding):
    """`len(idx)` train steps as one `lax.scan`, step k on the examples `idx[k]` of the
    training split held on the device: the same steps as `accumulate_train_step` on host
    batches, with no host round-trip between them."""

    def body(carry, step_idx):
        state, acc = carry
        batch = _device_batch(images, targets, step_idx, sharding)
        return accumulate_train_step(state, batch, dropout_rng, acc, regression=regression), None

    (state, acc), _ = jax.lax.scan(body, (state, acc), idx)
    return state, acc


def evaluate_resident(state, idx, mask, images, targets, *, regression: bool, sharding):
    """`eval_step` over every padded batch of a split held on the device, merged in order,
    as one `lax.scan`."""
    collection = RegressionMetrics if regression else ClassificationMetrics

    def body(total, xs):
        batch_idx, batch_mask = xs
        batch = _device_batch(images, targets, batch_idx, sharding)
        batch["mask"] = jax.lax.with_sharding_constraint(batch_mask, sharding)
        return total.merge(eval_step(state, batch, regression=regression)), None

    total, _ = jax.lax.scan(body, collection.empty(), (idx, mask))
    return total


# --------------------------------------------------------------------------- devices


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
    """The jitted train and eval steps for one config and mesh, over the replica axis.

    Train state, accumulator and dropout keys carry a leading replica axis (sharded over the
    mesh's `replica` axis), train batches are [replicas, batch, ...] (batch over `data`), and
    a test batch is shared by every replica. One process hands its numpy batches straight to
    them (placed by `in_shardings` in C++, ~170 us a step cheaper than a Python-side
    `device_put`); with several processes each feeds its rows of the global batch (`batch`).
    """

    def __init__(self, config, mesh: Mesh):
        self.regression = is_regression(config)
        self.num_replicas = r = config.get("num_replicas", 1)
        how = replicas.choose_map(
            config.get("replica_map", "auto"), config.model, jax.default_backend()
        )
        self.replica_map = how
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.per_replica = NamedSharding(mesh, PartitionSpec("replica"))
        self.sharded = NamedSharding(mesh, PartitionSpec("replica", "data"))
        self.eval_sharded = NamedSharding(mesh, PartitionSpec("data"))
        self.multi_process = jax.process_count() > 1
        rep, own, shard = self.replicated, self.per_replica, self.sharded
        regression = {"regression": self.regression}
        self.train = jax.jit(
            replicas.over_replicas(partial(accumulate_train_step, **regression), r, (0,) * 4, how),
            in_shardings=(own, shard, own, own),
            out_shardings=(own, own),
            donate_argnums=(0, 3),
        )
        self.eval = jax.jit(
            replicas.over_replicas(partial(eval_step, **regression), r, (0, None), how),
            in_shardings=(own, self.eval_sharded),
            out_shardings=own,
        )
        resident = {**regression, "sharding": NamedSharding(mesh, PartitionSpec("data"))}
        self.train_chunk = jax.jit(
            replicas.over_replicas(
                partial(train_chunk, **resident), r, (0, 0, 1, None, None, 0), how
            ),
            in_shardings=(own, own, rep, rep, rep, own),
            out_shardings=(own, own),
            donate_argnums=(0, 1),
        )
        self.evaluate_resident = jax.jit(
            replicas.over_replicas(
                partial(evaluate_resident, **resident), r, (0, None, None, None, None), how
            ),
            in_shardings=(own, rep, rep, rep, rep),
            out_shardings=own,
        )

    def rows(self, batch_size: int) -> slice | None:
        """This process's rows of a global batch (None: one process, all rows)."""
        return distributed.local_rows(batch_size) if self.multi_process else None

    def batch(self, batch: dict, batch_size: int):
        """What the train step takes: the numpy batch [replicas, rows, ...], or with several
        processes this process's rows as global arrays."""
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
        return self.place(replicas.stack([empty] * self.num_replicas))


def per_replica(collection: metrics.Collection) -> list[dict[str, float]]:
    """A metrics collection with a leading replica axis, computed per replica (CLU computes
    an unreplicated collection: `vmap` hands it each replica's), one {name: float} each."""
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
