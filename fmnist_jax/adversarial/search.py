"""Exercise 2.5's targeted search as one jitted program (pure JAX): descent on
CE(model(x'), t) + l1_weight * ||x' - x||_1 until p(t | x') >= threshold or `max_steps`, a
failed search returning its last iterate; a batch runs in `pool.run_pool` (docs/attack.md)."""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import data
from fmnist_jax.adversarial.minimal import minl1_search, soft_threshold
from fmnist_jax.adversarial.pool import Search, over_devices, run_pool
from fmnist_jax.adversarial.presets import (
    DEFAULT_METHOD,
    METHODS,
    AttackConfig,
    pool_size_for,
    validate,
)
from fmnist_jax.errors import ConfigError

LogitsFn = Callable[[jax.Array], jax.Array]
L0_TOLERANCE = 0.5 / 255  # a change the L0 counts survives rounding to a uint8 grey level


def _objective_and_p(x_adv, x, targets, logits_fn: LogitsFn, l1_weight: float):
    """(sum of each image's CE(logits_fn(x'), t) + l1_weight * ||x' - x||_1, p(t | x') each)."""
    log_p = jax.nn.log_softmax(logits_fn(x_adv))
    log_pt = jnp.take_along_axis(log_p, targets[:, None], axis=1)[:, 0]
    l1 = jnp.sum(jnp.abs(x_adv - x).reshape(x.shape[0], -1), axis=1)
    return jnp.sum(-log_pt + l1_weight * l1), jnp.exp(log_pt)


_value_and_grad = jax.value_and_grad(_objective_and_p, has_aux=True)


def pixel_l1_weight(l1_weight: float, l1_reduction: str, x) -> float:
    """The weight of |x'_i - x_i| for one pixel: l1_weight, or l1_weight / pixels for "mean"."""
    return l1_weight / math.prod(jnp.shape(x)) if l1_reduction == "mean" else l1_weight


def objective(
    logits_fn: LogitsFn, x_adv, x, target, l1_weight: float = 0.05, l1_reduction: str = "sum"
) -> jax.Array:
    """The exercise's loss for one image (l1_reduction "mean": the L1 over the pixels)."""
    weight = pixel_l1_weight(l1_weight, l1_reduction, x)
    return _objective_and_p(x_adv[None], x[None], jnp.asarray(target)[None], logits_fn, weight)[0]


input_gradient = jax.grad(objective, argnums=1)  # d objective / d x' (JAX's |.|'(0) is 1)


def draw_targets(key: jax.Array, labels: jax.Array, num_classes: int = 10) -> jax.Array:
    """One target per label, uniform over the `num_classes - 1` wrong labels."""
    shift = jax.random.randint(key, jnp.shape(labels), 1, num_classes)
    return ((labels + shift) % num_classes).astype(jnp.int32)


class SearchState(NamedTuple):
    """The loop carry of one search; `grad` and `p_target` belong to `x_adv` (None before the
    model has seen it)."""

    x_adv: jax.Array
    grad: jax.Array
    p_target: jax.Array
    step: jax.Array
    opt_state: optax.OptState


def optimizer(config: AttackConfig) -> optax.GradientTransformation:
    """The optax update rule a config names (`validate` has checked the name)."""
    rules = {"gd": optax.sgd, "sign": optax.sign_sgd, "adam": optax.adam}
    return rules[config.update](config.learning_rate)


def constrain(x_new: jax.Array, x: jax.Array, config: AttackConfig) -> jax.Array:
    """Proximal L1 step, L-inf projection and pixel clipping, as the config asks."""
    delta = x_new - x
    if config.proximal:
        weight = pixel_l1_weight(config.l1_weight, config.l1_reduction, x)
        delta = soft_threshold(delta, config.learning_rate * weight)
    if config.epsilon is not None:
        delta = jnp.clip(delta, -config.epsilon, config.epsilon)
    x_new = x + delta
    if config.clip is not None:
        x_new = jnp.clip(x_new, *config.clip)
    return x_new


def descent(logits_fn: LogitsFn, config: AttackConfig, max_steps) -> Search:
    """The descent search of one image as a `pool.Search`: each step an optax update, then
    `constrain`, then the model's p(target) and gradient at the new point."""

    def start(x, t):
        return SearchState(x, None, None, jnp.zeros((), jnp.int32), optimizer(config).init(x))

    def advance(state, x, t):
        updates, opt_state = optimizer(config).update(state.grad, state.opt_state, state.x_adv)
        x_adv = constrain(optax.apply_updates(state.x_adv, updates), x, config)
        return SearchState(x_adv, None, None, state.step + 1, opt_state)

    def finish(pre, x, t):  # a batch: one forward and backward pass for every slot
        l1_weight = 0.0 if config.proximal else config.l1_weight  # else the prox step applies it
        weight = pixel_l1_weight(l1_weight, config.l1_reduction, x[0])
        (_, p), g = _value_and_grad(pre.x_adv, x, t, logits_fn, weight)
        return pre._replace(grad=g, p_target=p)

    def running(state):
        going = state.step < max_steps
        return going & (state.p_target < config.threshold) if config.early_stop else going

    return Search(start, advance, finish, running, lambda s: (s.x_adv, s.step, s.p_target))


def _alone(fn, *args):
    """`fn` of a batch of one: a leading axis added to every argument, taken off the result."""
    return jax.tree.map(lambda v: v[0], fn(*jax.tree.map(lambda v: jnp.asarray(v)[None], args)))


def init_state(logits_fn: LogitsFn, x, target, config: AttackConfig) -> SearchState:
    """The search's start: x' = x, with its gradient and p(target)."""
    steps = descent(logits_fn, config, config.max_steps)
    return _alone(steps.finish, steps.start(x, target), x, target)


def search_step(logits_fn: LogitsFn, x, target, config: AttackConfig, state: SearchState):
    """One update of x', then the gradient and p(target) at the new point."""
    steps = descent(logits_fn, config, config.max_steps)
    return _alone(steps.finish, steps.advance(state, x, target), x, target)


def search(logits_fn: LogitsFn, x, target, config: AttackConfig, max_steps) -> SearchState:
    """One search as a while loop: stops at p(target) >= threshold or after max_steps."""
    return jax.lax.while_loop(
        descent(logits_fn, config, max_steps).running,
        lambda s: search_step(logits_fn, x, target, config, s),
        init_state(logits_fn, x, target, config),
    )


def p_target_history(logits_fn: LogitsFn, images, targets, config: AttackConfig, num_steps: int):
    """p(target) after 0..num_steps of `search`'s steps (a `lax.scan`; a sample stops changing
    at the threshold, as in the while loop) for a few samples, as [num_steps + 1, N]."""

    def one(x, t):
        def body(state, _):
            new = search_step(logits_fn, x, t, config, state)
            running = (state.p_target < config.threshold) | (not config.early_stop)
            state = jax.tree.map(lambda a, b: jnp.where(running, a, b), new, state)
            return state, state.p_target

        start = init_state(logits_fn, x, t, config)
        _, ps = jax.lax.scan(body, start, None, length=num_steps)
        return jnp.concatenate([start.p_target[None], ps])

    return jax.jit(jax.vmap(one, out_axes=1))(images, jnp.asarray(targets, jnp.int32))


class AttackResult(NamedTuple):
    """Per-sample outputs of a batched search (leading axis: sample)."""

    adversarial: jax.Array  # the last iterate x', success or not
    targets: jax.Array
    steps: jax.Array
    success: jax.Array  # p_target >= threshold
    p_target: jax.Array
    predicted: jax.Array  # argmax class of x' and its probability
    p_predicted: jax.Array
    clean_predicted: jax.Array  # the same for the untouched x
    clean_p_predicted: jax.Array
    l0: jax.Array
    l1: jax.Array
    l2: jax.Array
    linf: jax.Array
    l1_weight: jax.Array | None = None  # minl1: the weight its returned point was found with


def noise_norms(delta: jax.Array) -> dict[str, jax.Array]:
    """L0 (pixels changed by more than half a grey level), L1, L2 and L-inf per sample."""
    flat = delta.reshape(delta.shape[0], -1)
    return {
        "l0": jnp.sum(jnp.abs(flat) > L0_TOLERANCE, axis=1).astype(jnp.int32),
        "l1": jnp.sum(jnp.abs(flat), axis=1),
        "l2": jnp.sqrt(jnp.sum(flat**2, axis=1)),
        "linf": jnp.max(jnp.abs(flat), axis=1),
    }


def _searches(logits_fn, config, pool_size, images, targets, max_steps):
    """(x', steps, p_target or None, per-pixel L1 weight) of every image: one pool."""
    if config.update == "minl1":
        search_ = minl1_search(logits_fn, config, max_steps)
        x_adv, steps, weight = run_pool(search_, images, targets, pool_size)
        return x_adv, steps, None, weight
    search_ = descent(logits_fn, config, max_steps)
    x_adv, steps, p = run_pool(search_, images, targets, pool_size)
    pixel_weight = pixel_l1_weight(config.l1_weight, config.l1_reduction, images[0])
    return x_adv, steps, p, jnp.full(steps.shape, pixel_weight, images.dtype)


def _attack_program(logits_fn, config, pool_size, devices, images, labels, key, targets, max_steps):
    if targets is None:
        num_classes = jax.eval_shape(logits_fn, images[:1]).shape[-1]
        targets = draw_targets(key, labels, num_classes)
    searches = functools.partial(_searches, logits_fn, config, pool_size)
    x_adv, steps, p, weight = over_devices(searches, devices, images, targets, max_steps)
    probs = jax.nn.softmax(logits_fn(x_adv), axis=-1)
    if config.update == "minl1":  # the returned point is the best one, not the last evaluated
        p = jnp.take_along_axis(probs, targets[:, None], axis=1)[:, 0]
    clean = jax.nn.softmax(logits_fn(images), axis=-1)
    return AttackResult(
        x_adv, targets, steps, p >= config.threshold, p,
        jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1),
        jnp.argmax(clean, axis=-1).astype(jnp.int32), jnp.max(clean, axis=-1),
        **noise_norms(x_adv - images), l1_weight=weight,
    )  # fmt: skip


def check_inputs(logits_fn: LogitsFn, images, labels, targets=None) -> None:
    """ConfigError for images not finite floats in [0, 1], labels/targets that do not fit."""
    data.check_images(images, floats_only=True)
    n = jnp.shape(images)[0]
    example = jax.ShapeDtypeStruct((1, *jnp.shape(images)[1:]), jnp.float32)
    num_classes = jax.eval_shape(logits_fn, example).shape[-1]
    for name, values in (("labels", labels), ("targets", targets)):
        if values is None:
            continue
        values = np.asarray(values)
        if values.shape != (n,):
            raise ConfigError(f"{name} must have shape ({n},) like the images, got {values.shape}")
        data.check_labels(values, num_classes, name)


@dataclasses.dataclass(frozen=True, eq=False)
class Attack:
    """What `make_attack` builds. `program` is the jitted function a call runs on
    `arguments(...)` (checked), so `program.lower(*args).compile()` compiles it apart."""

    logits_fn: LogitsFn
    config: AttackConfig
    pool_size: int
    program: Callable[..., AttackResult]
    devices: tuple  # one pool on each (`pool.over_devices`)

    def arguments(self, images, labels, key, targets=None, max_steps=None) -> tuple:
        """(images, labels, key, targets, max_steps) as `program` takes them; ConfigError for
        inputs it cannot run with. `max_steps` defaults to the config's."""
        max_steps = self.config.max_steps if max_steps is None else max_steps
        if isinstance(max_steps, int) and max_steps <= 0:
            raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
        check_inputs(self.logits_fn, images, labels, targets)
        if targets is not None:
            targets = jnp.asarray(targets, jnp.int32)
        return images, jnp.asarray(labels, jnp.int32), key, targets, max_steps

    def __call__(self, images, labels, key, targets=None, max_steps=None) -> AttackResult:
        return self.program(*self.arguments(images, labels, key, targets, max_steps))


def make_attack(
    logits_fn: LogitsFn, config: AttackConfig, pool_size: int | None = None, devices=None
) -> Attack:
    """The batch program `attack(images, labels, key, targets=None, max_steps=None)` -> an
    AttackResult (`key` draws targets unless given; `max_steps` is traced: no recompile), with
    `pool_size` slots (default `pool_size_for` the platform) on each of `devices` (local)."""
    validate(config)
    devices = tuple(jax.local_devices() if devices is None else devices)
    pool_size = pool_size_for(devices[0].platform) if pool_size is None else pool_size
    if not (isinstance(pool_size, int) and pool_size > 0):
        raise ConfigError(f"pool_size must be a positive integer, got {pool_size!r}")
    program = jax.jit(functools.partial(_attack_program, logits_fn, config, pool_size, devices))
    return Attack(logits_fn, config, pool_size, program, devices)


def attack(
    logits_fn, images, labels, *, key=None, targets=None, config=None, pool_size=None, devices=None
) -> AttackResult:
    """Runs one batched search (compiling it; `make_attack`'s arguments) with `config`
    (default: METHODS[DEFAULT_METHOD]); pass a PRNG `key` to draw targets, or `targets`."""
    config = config or METHODS[DEFAULT_METHOD]
    if key is None and targets is None:
        raise ConfigError("attack needs a PRNG key to draw targets, or explicit targets")
    key = jax.random.key(0) if key is None else key
    return make_attack(logits_fn, config, pool_size, devices)(images, labels, key, targets)
