"""Exercise 2.5's targeted adversarial search as one jitted, vmapped XLA program; pure JAX.

For an image x and a target label t != label(x), gradient steps on the input x' minimise

    CE(model(x'), t) + l1_weight * ||x' - x||_1            (l1_weight 0.05 in the exercise)

until p(t | x') >= threshold (0.95) or `max_steps` (every step with `early_stop=False`). One
search (`search`) is a `lax.while_loop`. A batch (`make_attack`, `attack`) is one compiled
program: a while loop over a pool of slots (`pool.run_pool`), each a vmapped search
(`pooled_search`); a search that ends writes its result out and its slot loads the next image,
so each image stops on its own and nobody waits for the longest search. The preset "minl1"
runs the minimum-L1 search of `minimal.py` in the same program instead. Targets are drawn inside the
program, uniform over the wrong labels. A failed search returns its last iterate with success False.
`p_target_history` replays searches step by step for the curves.

The model enters as `logits_fn(x_batch) -> logits`, e.g.
`lambda x: model.apply({'params': params}, x, train=False)`; the rules as an `AttackConfig`
(`fmnist_jax.adversarial.presets`). Nothing here reads files, logs or touches the process.
"""

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
from fmnist_jax.adversarial.minimal import minl1_search
from fmnist_jax.adversarial.pool import Search, over_devices, run_pool
from fmnist_jax.adversarial.presets import (
    DEFAULT_METHOD,
    METHODS,
    UPDATES,
    AttackConfig,
    pool_size_for,
    validate,
)
from fmnist_jax.errors import ConfigError

LogitsFn = Callable[[jax.Array], jax.Array]
# A pixel counts as changed (L0) when the change survives rounding to a uint8 grey level.
L0_TOLERANCE = 0.5 / 255


# --------------------------------------------------------------------------- the objective


def _objective_and_p(x_adv, x, target, logits_fn: LogitsFn, l1_weight: float):
    """(CE(logits_fn(x'), target) + l1_weight * ||x' - x||_1, p(target | x')) for one image."""
    logits = logits_fn(x_adv[None])[0]
    log_p = jax.nn.log_softmax(logits)
    loss = -log_p[target] + l1_weight * jnp.sum(jnp.abs(x_adv - x))
    return loss, jnp.exp(log_p[target])


# The one gradient of the objective w.r.t. the input that every search uses.
_value_and_grad = jax.value_and_grad(_objective_and_p, argnums=0, has_aux=True)


def pixel_l1_weight(l1_weight: float, l1_reduction: str, x) -> float:
    """The weight of |x'_i - x_i| for one pixel: l1_weight, or l1_weight / pixels for "mean"."""
    return l1_weight / math.prod(jnp.shape(x)) if l1_reduction == "mean" else l1_weight


def objective(
    logits_fn: LogitsFn, x_adv, x, target, l1_weight: float = 0.05, l1_reduction: str = "sum"
) -> jax.Array:
    """The exercise's loss for one image: CE towards `target` plus l1_weight * ||x' - x||_1
    (divided by the number of pixels for l1_reduction "mean")."""
    weight = pixel_l1_weight(l1_weight, l1_reduction, x)
    return _objective_and_p(x_adv, x, target, logits_fn, weight)[0]


def input_gradient(
    logits_fn: LogitsFn, x_adv, x, target, l1_weight: float = 0.05, l1_reduction: str = "sum"
) -> jax.Array:
    """d objective / d x' for one image (the subgradient sign(0) = 0 at x' = x)."""
    weight = pixel_l1_weight(l1_weight, l1_reduction, x)
    return _value_and_grad(x_adv, x, target, logits_fn, weight)[1]


def draw_targets(key: jax.Array, labels: jax.Array, num_classes: int = 10) -> jax.Array:
    """One target per label, uniform over the `num_classes - 1` wrong labels."""
    shift = jax.random.randint(key, jnp.shape(labels), 1, num_classes)
    return ((labels + shift) % num_classes).astype(jnp.int32)


# --------------------------------------------------------------------------- one search


class SearchState(NamedTuple):
    """The loop carry of one search; `grad` and `p_target` belong to `x_adv`."""

    x_adv: jax.Array
    grad: jax.Array
    p_target: jax.Array
    step: jax.Array
    opt_state: optax.OptState


def optimizer(config: AttackConfig) -> optax.GradientTransformation:
    """The optax update rule a config names."""
    if config.update == "gd":
        return optax.sgd(config.learning_rate)
    if config.update == "sign":
        return optax.sign_sgd(config.learning_rate)
    if config.update == "adam":
        return optax.adam(config.learning_rate)
    raise ConfigError(f"unknown update {config.update!r}; choose one of {UPDATES}")


def constrain(x_new: jax.Array, x: jax.Array, config: AttackConfig) -> jax.Array:
    """Proximal L1 step, L-inf projection and pixel clipping, as the config asks."""
    delta = x_new - x
    if config.proximal:
        shrink = config.learning_rate * pixel_l1_weight(config.l1_weight, config.l1_reduction, x)
        delta = jnp.sign(delta) * jnp.maximum(jnp.abs(delta) - shrink, 0.0)
    if config.epsilon is not None:
        delta = jnp.clip(delta, -config.epsilon, config.epsilon)
    x_new = x + delta
    if config.clip is not None:
        x_new = jnp.clip(x_new, *config.clip)
    return x_new


def _gradient_weight(config: AttackConfig, x) -> float:
    """The per-pixel L1 weight inside the gradient: none when a proximal step handles it."""
    return 0.0 if config.proximal else pixel_l1_weight(config.l1_weight, config.l1_reduction, x)


def evaluate(logits_fn: LogitsFn, x_adv, x, target, config: AttackConfig):
    """(p(target | x'), gradient of the objective at x'): one forward and backward pass."""
    (_, p), g = _value_and_grad(x_adv, x, target, logits_fn, _gradient_weight(config, x))
    return p, g


def evaluate_batch(logits_fn: LogitsFn, x_adv, x, targets, config: AttackConfig):
    """`evaluate` for a batch ([B, ...]) as one forward and backward pass of the batch: the
    gradient of the sum of the images' objectives, each of which depends on its own image only.
    (~1.7x the image-steps/s of vmapping `evaluate` at batch 100 on a 2-core CPU.)"""
    weight = _gradient_weight(config, x[0])

    def total(x_adv):
        log_p = jax.nn.log_softmax(logits_fn(x_adv))
        log_pt = jnp.take_along_axis(log_p, targets[:, None], axis=1)[:, 0]
        l1 = jnp.sum(jnp.abs(x_adv - x).reshape(x.shape[0], -1), axis=1)
        return jnp.sum(-log_pt + weight * l1), jnp.exp(log_pt)

    (_, p), g = jax.value_and_grad(total, has_aux=True)(x_adv)
    return p, g


def propose(state: SearchState, x, config: AttackConfig):
    """The next x' (optax update, then `constrain`) and optimizer state; no model call."""
    updates, opt_state = optimizer(config).update(state.grad, state.opt_state, state.x_adv)
    return constrain(optax.apply_updates(state.x_adv, updates), x, config), opt_state


def init_state(logits_fn: LogitsFn, x, target, config: AttackConfig) -> SearchState:
    """The search's start: x' = x, with its gradient and p(target)."""
    p, g = evaluate(logits_fn, x, x, target, config)
    return SearchState(x, g, p, jnp.zeros((), jnp.int32), optimizer(config).init(x))


def search_step(logits_fn: LogitsFn, x, target, config: AttackConfig, state: SearchState):
    """One update of x', then the gradient and p(target) at the new point."""
    x_adv, opt_state = propose(state, x, config)
    p, g = evaluate(logits_fn, x_adv, x, target, config)
    return SearchState(x_adv, g, p, state.step + 1, opt_state)


def _running(state: SearchState, config: AttackConfig, max_steps) -> jax.Array:
    going = state.step < max_steps
    return going & (state.p_target < config.threshold) if config.early_stop else going


def search(logits_fn: LogitsFn, x, target, config: AttackConfig, max_steps) -> SearchState:
    """One search as a while loop: stops at p(target) >= threshold or after max_steps."""
    return jax.lax.while_loop(
        lambda s: _running(s, config, max_steps),
        lambda s: search_step(logits_fn, x, target, config, s),
        init_state(logits_fn, x, target, config),
    )


def p_target_history(logits_fn: LogitsFn, images, targets, config: AttackConfig, num_steps: int):
    """p(target) after 0..num_steps steps for a few samples, as [num_steps + 1, N].

    The same steps as `search`, unrolled by `lax.scan` so every step is recorded; a sample
    stops changing once it reaches the threshold, as in the while loop.
    """

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


# --------------------------------------------------------------------------- the batch program


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
    # The L1 weight of each search (minl1: the weight its returned point was found with).
    l1_weight: jax.Array | None = None


def noise_norms(delta: jax.Array) -> dict[str, jax.Array]:
    """L0 (pixels changed by more than half a grey level), L1, L2 and L-inf per sample."""
    flat = delta.reshape(delta.shape[0], -1)
    return {
        "l0": jnp.sum(jnp.abs(flat) > L0_TOLERANCE, axis=1).astype(jnp.int32),
        "l1": jnp.sum(jnp.abs(flat), axis=1),
        "l2": jnp.sqrt(jnp.sum(flat**2, axis=1)),
        "linf": jnp.max(jnp.abs(flat), axis=1),
    }


def _predictions(logits_fn: LogitsFn, images):
    probs = jax.nn.softmax(logits_fn(images), axis=-1)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)


class Pre(NamedTuple):
    """A descent step's next point, before the model sees it."""

    x_adv: jax.Array
    opt_state: optax.OptState
    step: jax.Array


def descent(logits_fn: LogitsFn, config: AttackConfig, max_steps) -> Search:
    """`search`'s steps as a `pool.Search`: the same arithmetic, split around the model call."""

    def start(x, t):
        return Pre(x, optimizer(config).init(x), jnp.zeros((), jnp.int32))

    def advance(state, x, t):
        x_adv, opt_state = propose(state, x, config)
        return Pre(x_adv, opt_state, state.step + 1)

    def finish(pre, x, t):  # a batch: one model call for every slot
        p, g = evaluate_batch(logits_fn, pre.x_adv, x, t, config)
        return SearchState(pre.x_adv, g, p, pre.step, pre.opt_state)

    def output(state):
        return state.x_adv, state.step, state.p_target

    return Search(start, advance, finish, lambda s: _running(s, config, max_steps), output)


def pooled_search(logits_fn, images, targets, config: AttackConfig, max_steps, pool_size: int):
    """Every image's search in one while loop over `pool_size` slots: (x', steps, p_target).

    Each image gets exactly the steps `search` would give it; a slot never idles while images
    wait, so the work is the sum of the searches' steps, not N times the longest.
    """
    return run_pool(descent(logits_fn, config, max_steps), images, targets, pool_size)


def _searches(logits_fn, config, pool_size, images, targets, max_steps):
    """(x', steps, p_target or None, per-pixel L1 weight) of every image: one pool."""
    if config.update == "minl1":
        search_ = minl1_search(logits_fn, config, max_steps)
        x_adv, steps, weight = run_pool(search_, images, targets, pool_size)
        return x_adv, steps, None, weight
    x_adv, steps, p = pooled_search(logits_fn, images, targets, config, max_steps, pool_size)
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
    clean_predicted, clean_p = _predictions(logits_fn, images)
    return AttackResult(
        x_adv,
        targets,
        steps,
        p >= config.threshold,
        p,
        jnp.argmax(probs, axis=-1).astype(jnp.int32),
        jnp.max(probs, axis=-1),
        clean_predicted,
        clean_p,
        **noise_norms(x_adv - images),
        l1_weight=weight,
    )


def check_inputs(logits_fn: LogitsFn, images, labels, targets=None) -> None:
    """Raises ConfigError for images that are not finite floats in [0, 1] (`data.check_images`),
    or labels/targets that do not fit the images."""
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
    """What `make_attack` builds: `attack(images, labels, key, targets=None, max_steps=None)`.

    `program` is the jitted function a call runs; `arguments` turns a call's inputs into its
    arguments, checked, so that `program.lower(*args).compile()` compiles it apart from running
    it (the runner times the two) and `jax.make_jaxpr(program)(*args)` shows what runs.
    """

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
    """The batch program `attack(images, labels, key, targets=None, max_steps=None)`.

    images: float [N, ...] in the clip range; labels: int [N]; key: a PRNG key for the targets
    (ignored when `targets` is given). `max_steps` is a traced argument: changing it does not
    recompile. `pool_size` searches run side by side on each device (see `pooled_search`;
    None: `presets.pool_size_for` the device's platform, 32 on a CPU); with pool_size >= N all
    run at once and the batch takes as many steps as its longest search. `devices` (None: the
    process's local devices) share the images, one pool each (`pool.over_devices`).
    A call returns an AttackResult. Build it once and call it many times.
    """
    validate(config)
    devices = tuple(jax.local_devices() if devices is None else devices)
    pool_size = pool_size_for(devices[0].platform) if pool_size is None else pool_size
    if not (isinstance(pool_size, int) and pool_size > 0):
        raise ConfigError(f"pool_size must be a positive integer, got {pool_size!r}")
    program = jax.jit(functools.partial(_attack_program, logits_fn, config, pool_size, devices))
    return Attack(logits_fn, config, pool_size, program, devices)


def attack(
    logits_fn: LogitsFn,
    images,
    labels,
    *,
    key: jax.Array | None = None,
    targets=None,
    config: AttackConfig | None = None,
    pool_size: int | None = None,
    devices=None,
) -> AttackResult:
    """Runs one batched search (compiling it); pass `key` to draw targets, or `targets`."""
    config = config or METHODS[DEFAULT_METHOD]
    if key is None and targets is None:
        raise ConfigError("attack needs a PRNG key to draw targets, or explicit targets")
    key = jax.random.key(0) if key is None else key
    return make_attack(logits_fn, config, pool_size, devices)(images, labels, key, targets)
