"""The minimum-L1 search ("minl1"): the smallest L1 noise reaching p(target) >= threshold.

For one image x and target t it minimises, over x' in [0, 1]^d,

    hinge(x') + weight * ||x' - x||_1,   hinge = max(logit(threshold) + AIM - m(x'), 0)

where m = log p(t | x') - log(1 - p(t | x')) is the target's log-odds: p(t) >= threshold exactly
when m >= logit(threshold). The hinge is zero once the threshold is passed, so only the L1 term
pulls there and the iterates settle on the boundary with as little L1 as the weight allows.
Steps are proximal (FISTA): a gradient step on the hinge, scaled so that its largest pixel
moves by `learning_rate`; soft-thresholding of x' - x by learning_rate * weight; clipping to
[0, 1] (together the exact proximal map of the L1 term and the box); then FISTA's momentum
extrapolation, whose point, clipped, is the next one evaluated. The weight is therefore
dimensionless: the L1 weight of the objective in units of the hinge's largest pixel gradient,
so one value suits every image and model.

The weight is searched per image over `config.rounds` rounds of `max_steps // rounds` steps,
starting at `config.l1_weight`: after a round that held the threshold in its second half it
grows (x2 until a round fails, then the geometric mean of the bracket), after one that did not
it shrinks the same way; each round restarts from the best point found so far (or from x).

The search keeps the best point: the smallest L1 among the evaluated points with
p(target) >= threshold, and the weight it was found with; a search that never reached the
threshold returns its last point. It is a `pool.Search`, so the batch program is the same
single while loop as the descent methods'; a slot moves to its next round or image on its own.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fmnist_jax.adversarial.pool import Search
from fmnist_jax.adversarial.presets import AttackConfig

# How far past logit(threshold) the hinge aims, in log-odds: iterates that land just short of
# the aim still pass the threshold.
AIM = 0.05
# What counts as reaching the threshold inside the search: a hair past it, so that the batch
# program's own forward pass of the returned point (the reported p) agrees.
PASSED = 1e-4
GROWTH = 2.0  # the weight's factor while one side of the bracket is open
DECAY = 0.9  # the step falls linearly over a round to 1 - DECAY of learning_rate
TINY = 1e-12  # a zero gradient (the threshold passed) leaves only the L1 shrink


class MinL1State(NamedTuple):
    """One image's minimum-L1 search (the `pool` carry of one slot)."""

    point: jax.Array  # the point evaluated last, in [0, 1]
    grad: jax.Array  # gradient of the hinge at `point`
    p_target: jax.Array  # p(target | point)
    prox: jax.Array  # the last proximal iterate (FISTA's x_k)
    momentum: jax.Array  # FISTA's t_k
    weight: jax.Array  # this round's L1 weight, in units of g0
    low: jax.Array  # the largest weight that reached the threshold (0: none yet)
    high: jax.Array  # the smallest weight that did not (inf: none yet)
    reached: jax.Array  # whether this round reached the threshold
    round: jax.Array
    round_step: jax.Array
    step: jax.Array  # steps (model calls) so far
    best: jax.Array  # the best point, or the last one while none reached the threshold
    best_l1: jax.Array  # its L1 (inf while none)
    best_p: jax.Array
    best_weight: jax.Array  # the weight it was found with
    found: jax.Array


def log_odds(logits_fn, x_adv, targets) -> jax.Array:
    """log p(t) - log(1 - p(t)) per image of a batch (p(t) = sigmoid of it): one forward pass."""
    logits = logits_fn(x_adv)
    is_target = jnp.arange(logits.shape[-1]) == targets[:, None]
    others = jnp.where(is_target, -jnp.inf, logits)
    return jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1) - jax.nn.logsumexp(others, axis=-1)


def _hinge(x_adv, targets, logits_fn, aim):
    """The batch's summed hinges (each depends on its own image only) and the log-odds."""
    m = log_odds(logits_fn, x_adv, targets)
    return jnp.sum(jnp.maximum(aim - m, 0.0)), m


_hinge_and_grad = jax.value_and_grad(_hinge, has_aux=True)


def soft_threshold(delta: jax.Array, amount) -> jax.Array:
    """The proximal map of amount * ||delta||_1: shrink every entry towards 0 by `amount`."""
    return jnp.sign(delta) * jnp.maximum(jnp.abs(delta) - amount, 0.0)


def next_weight(weight, low, high, reached):
    """(weight, low, high) after a round: up after a success, down after a failure, by GROWTH
    while the bracket is open on that side, else to the bracket's geometric mean."""
    low = jnp.where(reached, weight, low)
    high = jnp.where(reached, high, weight)
    up = jnp.where(jnp.isinf(high), weight * GROWTH, jnp.sqrt(low * high))
    down = jnp.where(low > 0, jnp.sqrt(low * high), weight / GROWTH)
    return jnp.where(reached, up, down), low, high


def minl1_search(logits_fn, config: AttackConfig, max_steps) -> Search:
    """The minimum-L1 search of one image as a `pool.Search` (module docstring)."""
    passed = math.log(config.threshold / (1.0 - config.threshold)) + PASSED
    aim = passed - PASSED + AIM
    lo, hi = config.clip if config.clip is not None else (-jnp.inf, jnp.inf)
    round_steps = jnp.maximum(max_steps // config.rounds, 1)

    def evaluate(points, targets):
        """(log-odds, hinge gradient) of a batch: one forward and backward pass."""
        (_, m), g = _hinge_and_grad(points, targets, logits_fn, aim)
        return m, g

    def start(x, t):
        zero = jnp.zeros((), jnp.int32)
        inf = jnp.asarray(jnp.inf, x.dtype)
        return MinL1State(
            x, jnp.zeros_like(x), jnp.zeros((), x.dtype), x, jnp.ones((), x.dtype),
            jnp.asarray(config.l1_weight, x.dtype),
            jnp.zeros((), x.dtype), inf, jnp.asarray(False), zero, zero, zero,
            x, inf, jnp.zeros((), x.dtype), jnp.zeros((), x.dtype), jnp.asarray(False),
        )  # fmt: skip

    def step(s, x):
        """The next proximal iterate and the momentum point to evaluate."""
        lr = config.learning_rate * (1.0 - DECAY * s.round_step / round_steps)
        z = s.point - lr / jnp.maximum(jnp.max(jnp.abs(s.grad)), TINY) * s.grad
        prox = jnp.clip(x + soft_threshold(z - x, lr * s.weight), lo, hi)
        momentum = (1.0 + jnp.sqrt(1.0 + 4.0 * s.momentum**2)) / 2.0
        point = jnp.clip(prox + (s.momentum - 1.0) / momentum * (prox - s.prox), lo, hi)
        return s._replace(point=point, prox=prox, momentum=momentum, round_step=s.round_step + 1)

    def new_round(s, x):
        """The next round: the next weight, restarted at the best point (or x)."""
        weight, low, high = next_weight(s.weight, s.low, s.high, s.reached)
        origin = jnp.where(s.found, s.best, x)
        return s._replace(
            point=origin, prox=origin, momentum=jnp.ones_like(s.momentum), weight=weight,
            low=low, high=high, reached=jnp.asarray(False), round=s.round + 1,
            round_step=jnp.zeros_like(s.round_step),
        )  # fmt: skip

    def advance(s, x, t):
        ended = s.round_step >= round_steps
        return jax.tree.map(
            lambda a, b: jnp.where(ended, a, b), new_round(s, x), step(s, x)
        )._replace(step=s.step + 1)

    def finish(s, x, t):  # a batch: one model call for every slot
        m, g = evaluate(s.point, t)
        return jax.vmap(record)(s, x, m, g)

    def record(s, x, m, g):
        """`s` with the evaluation of its point: gradient, p, this round's verdict, the best."""
        p = jax.nn.sigmoid(m)
        l1 = jnp.sum(jnp.abs(s.point - x))
        hit = m >= passed
        late = s.round_step >= round_steps // 2  # a round's verdict: hits in its second half
        better = hit & (l1 < s.best_l1)
        keep = better | ~s.found  # the last point stands in until a success
        return s._replace(
            grad=g, p_target=p, reached=s.reached | (hit & late),
            best=jnp.where(keep, s.point, s.best), best_l1=jnp.where(better, l1, s.best_l1),
            best_p=jnp.where(keep, p, s.best_p),
            best_weight=jnp.where(keep, s.weight, s.best_weight), found=s.found | hit,
        )  # fmt: skip

    def running(s):
        return (s.round < config.rounds - 1) | (s.round_step < round_steps)

    def output(s):
        return s.best, s.step, s.best_p, s.best_weight

    return Search(start, advance, finish, running, output)
