"""The minimum-L1 search ("minl1"): the smallest ||x' - x||_1 in the box reaching p(target).

Each step linearises the target's log-odds m (one model call) and takes the proximal step of the
L1 norm plus the box whose linear model lands on the aim (`prox_step`); eta falls as `schedule`
says. docs/attack.md has the method and the measurements behind the constants.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fmnist_jax.adversarial.pool import Search
from fmnist_jax.adversarial.presets import AttackConfig

MARGIN = 0.05  # the aim past the threshold, in log-odds (falling as eta does)
PASSED = 1e-4  # a hair past the threshold, so the batch program's own forward pass agrees
CYCLES = 2  # eta's geometric falls over the budget, each from the best point
FINAL = 0.01  # eta's last value in a cycle, as a fraction of learning_rate
REFINE = 1 / 6  # the budget's last part: a boundary refinement from the best point ...
REFINE_ETA = (0.04, 0.002)  # ... with eta falling between these fractions of learning_rate
FACTORS = (0.0, 0.125, 0.5, 2.0, 8.0)  # multiples of the last multiplier a step picks from
START_MU, MIN_MU, MAX_MU = 4.0, 1e-3, 1e6  # the multiplier, in units of 1 / max|g|
SMOOTHING = 0.7  # weight of the previous average of the linear model's overestimate
TINY = 1e-12


class MinL1State(NamedTuple):
    """One image's minimum-L1 search (a `pool` slot's carry); `best*` is the smallest-L1 point
    past the threshold (the last point while none is), `grad` and `m` belong to `point`."""

    point: jax.Array
    grad: jax.Array
    m: jax.Array
    mu: jax.Array  # the last multiplier, in units of 1 / max|g|
    weight: jax.Array  # the L1 weight it stands for: max|g| / mu, per unit of log-odds
    aimed: jax.Array  # what the linear model promised m(point) to be
    overshoot: jax.Array  # average of aimed - m over the last steps
    step: jax.Array  # model calls so far
    best: jax.Array
    best_l1: jax.Array  # inf while none
    best_m: jax.Array
    best_weight: jax.Array
    found: jax.Array


def _summed_log_odds(x_adv, targets, logits_fn):
    """(sum, each) of the batch's log-odds m = log p(t) - log(1 - p(t)), one forward pass (each
    image's m depends on that image only, so the sum's gradient is each one's)."""
    logits = logits_fn(x_adv)
    is_target = jnp.arange(logits.shape[-1]) == targets[:, None]
    others = jnp.where(is_target, -jnp.inf, logits)
    m = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1) - jax.nn.logsumexp(others, axis=-1)
    return jnp.sum(m), m


_log_odds_and_grad = jax.value_and_grad(_summed_log_odds, has_aux=True)


def soft_threshold(delta: jax.Array, amount) -> jax.Array:
    """The proximal map of amount * ||delta||_1: shrink every entry towards 0 by `amount`."""
    return jnp.sign(delta) * jnp.maximum(jnp.abs(delta) - amount, 0.0)


def prox_step(delta, g, eta, mu, low, high, need):
    """(d, mu): the proximal step d = clip(S_eta(delta + eta * mu * g / max|g|), low, high)
    whose g . d is `need`, mu chosen among mu * FACTORS and the bracketing pair interpolated;
    the nearest end when `need` lies outside what they reach."""
    push = g / jnp.maximum(jnp.max(jnp.abs(g)), TINY)
    mus = mu * jnp.asarray(FACTORS, delta.dtype)
    pushed = delta + eta * mus.reshape((-1,) + (1,) * delta.ndim) * push
    candidates = jnp.clip(soft_threshold(pushed, eta), low, high)
    gain = jnp.sum((g * candidates).reshape(len(FACTORS), -1), axis=1)  # nondecreasing in mu
    k = jnp.clip(jnp.sum(gain < need), 1, len(FACTORS) - 1)
    a = jnp.clip((need - gain[k - 1]) / jnp.maximum(gain[k] - gain[k - 1], TINY), 0.0, 1.0)
    d = candidates[k - 1] + a * (candidates[k] - candidates[k - 1])
    return d, jnp.clip(mus[k - 1] + a * (mus[k] - mus[k - 1]), MIN_MU, MAX_MU)


def _record(s: MinL1State, x, m, g, passed: float) -> MinL1State:
    """`s` with the evaluation of its point: gradient, m, the overshoot, the best point."""
    l1 = jnp.sum(jnp.abs(s.point - x))
    hit = m >= passed
    better = hit & (l1 < s.best_l1)
    keep = better | ~s.found  # the last point stands in until a success
    missed = SMOOTHING * s.overshoot + (1.0 - SMOOTHING) * (s.aimed - m)
    return s._replace(
        grad=g, m=m, overshoot=jnp.where(s.step > 0, missed, s.overshoot),
        best=jnp.where(keep, s.point, s.best), best_l1=jnp.where(better, l1, s.best_l1),
        best_m=jnp.where(keep, m, s.best_m),
        best_weight=jnp.where(keep, s.weight, s.best_weight), found=s.found | hit,
    )  # fmt: skip


def schedule(step, max_steps):
    """(eta / learning_rate, whether a phase starts) at `step`: CYCLES geometric falls from 1
    to FINAL, then the refinement, REFINE of the budget, from REFINE_ETA[0] to REFINE_ETA[1]."""
    fine = jnp.maximum(jnp.round(max_steps * REFINE).astype(jnp.int32), 1)
    cycle = jnp.maximum((max_steps - fine) // CYCLES, 1)
    refining = step >= cycle * CYCLES
    first, last = jnp.where(refining, REFINE_ETA[0], 1.0), jnp.where(refining, REFINE_ETA[1], FINAL)
    start = jnp.where(refining, cycle * CYCLES, step - step % cycle)
    length = jnp.where(refining, jnp.maximum(max_steps - cycle * CYCLES, 1), cycle)
    decay = first * (last / first) ** ((step - start) / length).astype(jnp.float32)
    return decay, (step == start) & (step > 0)


def minl1_search(logits_fn, config: AttackConfig, max_steps) -> Search:
    """The minimum-L1 search of one image as a `pool.Search` (module docstring)."""
    passed = math.log(config.threshold / (1.0 - config.threshold)) + PASSED
    lo, hi = config.clip if config.clip is not None else (-jnp.inf, jnp.inf)

    def start(x, t):
        zero, inf = jnp.zeros((), x.dtype), jnp.asarray(jnp.inf, x.dtype)
        return MinL1State(
            x, jnp.zeros_like(x), zero, jnp.asarray(START_MU, x.dtype), zero, zero, zero,
            jnp.zeros((), jnp.int32), x, inf, zero, zero, jnp.asarray(False),
        )  # fmt: skip

    def advance(s, x, t):
        """The next point: the proximal step whose linear model of m meets the aim."""
        decay, restart = schedule(s.step, max_steps)
        eta = config.learning_rate * decay
        delta = s.point - x
        aimed = passed + MARGIN * decay + jnp.maximum(s.overshoot, 0.0)
        need = aimed - s.m + jnp.sum(s.grad * delta)
        d, mu = prox_step(delta, s.grad, eta, s.mu, lo - x, hi - x, need)
        weight = jnp.max(jnp.abs(s.grad)) / mu
        # A new phase starts at the best point: evaluating it again costs one model call.
        restart = restart & s.found
        point = jnp.where(restart, s.best, jnp.clip(x + d, lo, hi))
        aimed = jnp.where(restart, s.best_m, aimed)  # its m, known: no overshoot to learn
        return s._replace(point=point, mu=mu, weight=weight, aimed=aimed, step=s.step + 1)

    def finish(s, x, t):  # a batch: one model call for every slot
        (_, m), g = _log_odds_and_grad(s.point, t, logits_fn)
        return jax.vmap(functools.partial(_record, passed=passed))(s, x, m, g)

    def output(s):
        return s.best, s.step, s.best_weight

    return Search(start, advance, finish, lambda s: s.step < max_steps, output)
