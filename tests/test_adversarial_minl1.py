"""Tests of the minimum-L1 search (`adversarial.minimal`, preset "minl1"): the known minimum on
a linear two-class model (with room and against the box), the returned point against the
reported success, the box, a failed search, batch == alone, pool size, one while loop in the
program, and the proximal step's multiplier.

The linear model's log-odds of class 1 over class 0 is w . x + b: p(1) >= threshold exactly when
w . x' + b >= logit(threshold), and the smallest L1 change reaching that fills the pixels in
the order of |w|, each up to the box: with room, only the pixel with the largest |w| moves, by
(logit(threshold) - w . x - b) / max|w|.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax.adversarial import minimal, presets, search
from tests.test_adversarial_search import count_primitive, linear_logits_fn, linear_params

MINL1 = presets.METHODS["minl1"]
LOGIT = math.log(MINL1.threshold / (1 - MINL1.threshold))
DOMINANT, STRONG = 100, 5.0  # the dominant pixel and its weight; the others' are below 1
SECOND, NEXT = 200, 4.0  # the next pixel in |w| order, for the box-limited problem
# How close to the closed-form minimum the search ends: the aim's margin at the last step
# (MARGIN * REFINE_ETA[1] in log-odds, 1e-4) over |w| >= 4 is ~3e-5 of L1; the rest is the
# last steps' distance to the fixed point.
RTOL = 0.01
# The reported weight max|g| / mu is a ratio the refinement's multiplier moves by a hair: batch
# shapes change float32 summation order, so it agrees to 1e-3 where the points agree to 1e-5.
WEIGHT_RTOL = 1e-3


def two_class_problem(n: int = 4, shortfall: float = 1.25, room: float | None = None):
    """n random images whose log-odds of class 1 falls 0.5..2 short of the threshold (about
    `shortfall`), class 1 as target, and each one's smallest L1 change. Pixel DOMINANT sits at
    0.5 (its change, under 0.4, has room) or, with `room`, at 1 - room: then it fills up to
    the box and pixel SECOND (at 0.5) gives the rest."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.8, 0.8, 28 * 28)
    w[DOMINANT], w[SECOND] = STRONG, NEXT
    images = rng.uniform(0, 1, (400, 28 * 28))
    images[:, DOMINANT] = 0.5 if room is None else 1.0 - room
    images[:, SECOND] = 0.5
    bias = LOGIT - shortfall - np.median(images @ w)
    need = LOGIT - images @ w - bias
    chosen = (need > 0.5) & (need < 2.0)
    images, need = images[chosen][:n], need[chosen][:n]
    assert len(images) == n
    if room is None:
        minimum = need / STRONG
    else:
        assert np.all(need > STRONG * room)
        minimum = room + (need - STRONG * room) / NEXT
    weights = np.zeros((28 * 28, 2))
    weights[:, 1] = w
    b = np.array([0.0, bias])
    logits_fn = linear_logits_fn(jnp.asarray(weights, jnp.float32), jnp.asarray(b, jnp.float32))
    x = jnp.asarray(images.reshape(n, 28, 28, 1), jnp.float32)
    return logits_fn, x, np.zeros(n, np.int32), np.ones(n, np.int32), minimum


def p_of(logits_fn, images, targets):
    probs = jax.nn.softmax(logits_fn(jnp.asarray(images)), -1)
    return np.asarray(probs[np.arange(len(targets)), targets])


def changes(result, images):
    return np.abs(np.asarray(result.adversarial) - np.asarray(images)).reshape(len(images), -1)


@pytest.fixture(scope="module")
def linear():
    logits_fn, images, labels, targets, minimum = two_class_problem()
    result = search.attack(logits_fn, images, labels, targets=targets, config=MINL1)
    return logits_fn, images, labels, targets, minimum, result


def test_finds_the_known_minimum_on_one_pixel(linear):
    _, images, _, _, minimum, result = linear
    assert np.all(result.success)
    np.testing.assert_allclose(result.l1, minimum, rtol=RTOL)
    assert np.all(np.asarray(result.l1) >= minimum * (1 - 1e-4))  # never below: it is the minimum
    delta = changes(result, images)
    assert np.all(delta.argmax(axis=1) == DOMINANT)
    assert np.all(delta[:, DOMINANT] / delta.sum(axis=1) > 0.99)  # all but a trace on it
    assert np.all(np.asarray(result.l0) == 1)
    assert np.all(np.asarray(result.l1_weight) > 0)


def test_finds_the_known_minimum_against_the_box():
    """The dominant pixel has room 0.05 only: the minimum fills it to 1, then moves the next."""
    logits_fn, images, labels, targets, minimum = two_class_problem(room=0.05)
    result = search.attack(logits_fn, images, labels, targets=targets, config=MINL1)
    assert np.all(result.success)
    np.testing.assert_allclose(result.l1, minimum, rtol=RTOL)
    adversarial = np.asarray(result.adversarial).reshape(len(labels), -1)
    # Filled to the box (but for the last small steps' 1/4 eta a step), never past it.
    assert np.all((adversarial[:, DOMINANT] > 0.995) & (adversarial[:, DOMINANT] <= 1.0))
    delta = changes(result, images)
    assert np.all((delta[:, DOMINANT] + delta[:, SECOND]) / delta.sum(axis=1) > 0.99)


def test_returned_point_satisfies_the_reported_success(linear):
    logits_fn, images, _, targets, _, result = linear
    p = p_of(logits_fn, result.adversarial, targets)
    np.testing.assert_allclose(result.p_target, p, rtol=1e-6)
    np.testing.assert_array_equal(result.success, p >= MINL1.threshold)
    norms = search.noise_norms(jnp.asarray(result.adversarial) - images)
    np.testing.assert_allclose(result.l1, norms["l1"], rtol=1e-6)


def test_a_failed_search_returns_its_last_point_with_success_false():
    reachable, images, labels, targets, _ = two_class_problem(n=2)

    def logits_fn(x):  # class 1 a thousand log-odds further off: out of reach
        return reachable(x) - jnp.asarray([0.0, 1e3])

    result = search.attack(logits_fn, images, labels, targets=targets, config=MINL1)
    assert not np.any(result.success)
    assert np.all(np.asarray(result.p_target) < MINL1.threshold)
    assert np.all(np.asarray(result.l1) > 1.0)  # it moved: the last point, not x
    assert np.all(np.asarray(result.steps) == MINL1.max_steps)  # every step, one model call each


@pytest.fixture(scope="module")
def ten_class():
    """The descent tests' 10-class linear model on 6 random images, random targets."""
    w, b = linear_params()
    logits_fn = linear_logits_fn(w, b)
    images = np.random.default_rng(1).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
    labels = np.asarray(jnp.argmax(logits_fn(images), -1), np.int32)
    targets = np.asarray(search.draw_targets(jax.random.key(3), jnp.asarray(labels)))
    config = MINL1.replace(max_steps=100)
    fn = search.make_attack(logits_fn, config, pool_size=6)
    return logits_fn, images, labels, targets, fn, fn(images, labels, jax.random.key(0), targets)


def test_never_a_point_outside_the_box(ten_class):
    """The images' pixels at 0 and 1 included: the searches push many of them outwards."""
    _, images, labels, targets, fn, batch = ten_class
    assert np.all(batch.success)
    for result in (batch, fn(np.round(images), labels, jax.random.key(0), targets)):
        adversarial = np.asarray(result.adversarial)
        assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


def test_sample_alone_equals_sample_in_batch(ten_class):
    _, images, labels, targets, fn, batch = ten_class
    for i in (0, 4):
        alone = fn(images[i : i + 1], labels[i : i + 1], jax.random.key(0), targets[i : i + 1])
        assert int(alone.steps[0]) == int(batch.steps[i])
        np.testing.assert_allclose(alone.adversarial[0], batch.adversarial[i], atol=1e-5)
        assert float(alone.l1_weight[0]) == pytest.approx(
            float(batch.l1_weight[i]), rel=WEIGHT_RTOL
        )


@pytest.mark.parametrize("pool_size", [1, 4])
def test_pool_size_does_not_change_results(ten_class, pool_size):
    logits_fn, images, labels, targets, fn, batch = ten_class
    pooled = search.attack(
        logits_fn, images, labels, targets=targets, config=fn.config, pool_size=pool_size
    )
    np.testing.assert_array_equal(pooled.steps, batch.steps)
    np.testing.assert_allclose(pooled.adversarial, batch.adversarial, atol=1e-5)
    np.testing.assert_allclose(pooled.l1_weight, batch.l1_weight, rtol=WEIGHT_RTOL)


def test_one_while_loop_in_the_compiled_program(ten_class):
    _, images, labels, targets, fn, _ = ten_class
    args = fn.arguments(images, labels, jax.random.key(0), targets)
    closed = jax.make_jaxpr(fn.program)(*args)
    assert count_primitive(closed.jaxpr, "while") == 1
    assert count_primitive(closed.jaxpr, "scan") == 0
    hlo = fn.program.lower(*args).compile().as_text()
    assert hlo.count(" while(") == 1, [line for line in hlo.splitlines() if " while(" in line]


def test_prox_step_meets_the_linear_aim_inside_the_box():
    """g . d = need whenever a bracketing pair of multipliers reaches it; d stays in the box;
    the multiplier is 0 when the shrink alone keeps the aim, and the largest one tried when
    the box caps the gain."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, 50), jnp.float32)
    g = jnp.asarray(rng.normal(0, 1, 50), jnp.float32)
    delta = jnp.clip(jnp.asarray(rng.normal(0, 0.2, 50), jnp.float32), -x, 1 - x)
    low, high, eta, mu = -x, 1 - x, 0.05, 4.0
    shrunk = jnp.clip(minimal.soft_threshold(delta, eta), low, high)  # the multiplier 0
    pushed = jnp.clip(
        minimal.soft_threshold(delta + eta * 8 * mu * g / jnp.abs(g).max(), eta), low, high
    )
    reach = (float(jnp.sum(g * shrunk)), float(jnp.sum(g * pushed)))
    for need in np.linspace(*reach, 5)[1:-1]:
        d, new_mu = minimal.prox_step(delta, g, eta, mu, low, high, need)
        assert float(jnp.sum(g * d)) == pytest.approx(need, rel=1e-4)
        assert bool(jnp.all((d >= low) & (d <= high)))
        assert 0 <= float(new_mu) <= 8 * mu
    d, new_mu = minimal.prox_step(delta, g, eta, mu, low, high, reach[0] - 1.0)
    np.testing.assert_allclose(d, shrunk)
    assert float(new_mu) == pytest.approx(minimal.MIN_MU)
    d, new_mu = minimal.prox_step(delta, g, eta, mu, low, high, reach[1] + 1.0)
    np.testing.assert_allclose(d, pushed, atol=1e-6)
    assert float(new_mu) == pytest.approx(8 * mu)
