"""Tests of the minimum-L1 search (`adversarial.minimal`, preset "minl1"): the known minimum on
a linear two-class model, the returned point against the reported success, the weight
search's monotonicity, batch == alone, pool size, and one while loop in the program.

The linear model's log-odds of class 1 over class 0 is w . x + b: p(1) >= threshold exactly when
w . x' + b >= logit(threshold), and the smallest L1 change reaching that moves only the pixel
with the largest |w| (if it has room): by (logit(threshold) - w . x - b) / max|w|.
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


def two_class_problem(n: int = 4, shortfall: float = 1.25):
    """n random images whose log-odds of class 1 falls 0.5..2 short of the threshold (about
    `shortfall`), class 1 as target, and each one's smallest L1 change: pixel DOMINANT sits at
    0.5, so its change (under 0.4) has room."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.8, 0.8, 28 * 28)
    w[DOMINANT] = STRONG
    images = rng.uniform(0, 1, (400, 28 * 28))
    images[:, DOMINANT] = 0.5
    bias = LOGIT - shortfall - np.median(images @ w)
    need = LOGIT - images @ w - bias
    images, need = images[(need > 0.5) & (need < 2.0)][:n], need[(need > 0.5) & (need < 2.0)][:n]
    assert len(images) == n
    weights = np.zeros((28 * 28, 2))
    weights[:, 1] = w
    b = np.array([0.0, bias])
    logits_fn = linear_logits_fn(jnp.asarray(weights, jnp.float32), jnp.asarray(b, jnp.float32))
    x = jnp.asarray(images.reshape(n, 28, 28, 1), jnp.float32)
    return logits_fn, x, np.zeros(n, np.int32), np.ones(n, np.int32), need / STRONG


def p_of(logits_fn, images, targets):
    probs = jax.nn.softmax(logits_fn(jnp.asarray(images)), -1)
    return np.asarray(probs[np.arange(len(targets)), targets])


@pytest.fixture(scope="module")
def linear():
    logits_fn, images, labels, targets, minimum = two_class_problem()
    result = search.attack(logits_fn, images, labels, targets=targets, config=MINL1)
    return logits_fn, images, labels, targets, minimum, result


def test_finds_the_known_minimum_on_one_pixel(linear):
    _, images, labels, _, minimum, result = linear
    assert np.all(result.success)
    np.testing.assert_allclose(result.l1, minimum, rtol=0.02)
    delta = np.abs(np.asarray(result.adversarial) - np.asarray(images)).reshape(len(labels), -1)
    assert np.all(delta.argmax(axis=1) == DOMINANT)
    assert np.all(delta[:, DOMINANT] / delta.sum(axis=1) > 0.95)  # almost all on that pixel
    assert np.all(np.asarray(result.l1_weight) > 0)


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
    # Every round's steps, and one more per restart.
    assert np.all(np.asarray(result.steps) == MINL1.max_steps + MINL1.rounds - 1)


def test_a_larger_weight_never_gives_a_larger_l1_at_success():
    """One round at a fixed weight, for increasing weights: the L1 of the best successful
    point does not grow with the weight (beyond the 2 % the iterates wobble by about the
    boundary), and the weight search ends no worse than a fixed weight does."""
    logits_fn, images, labels, targets, minimum = two_class_problem(n=2)
    one_round = MINL1.replace(rounds=1, max_steps=60)
    l1s = []
    for weight in (0.005, 0.02, 0.05, 0.2, 0.5):
        config = one_round.replace(l1_weight=weight)
        result = search.attack(logits_fn, images, labels, targets=targets, config=config)
        assert np.all(result.success), weight
        l1s.append(np.asarray(result.l1))
    l1s = np.stack(l1s)
    assert np.all(l1s[1:] <= 1.02 * l1s[:-1]), l1s
    assert np.all(l1s[0] > 1.2 * minimum), l1s  # the weight matters: a small one stays off
    searched = search.attack(logits_fn, images, labels, targets=targets, config=MINL1)
    assert np.all(np.asarray(searched.l1) <= 1.02 * l1s.min(axis=0))


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


def test_sample_alone_equals_sample_in_batch(ten_class):
    _, images, labels, targets, fn, batch = ten_class
    assert np.all(batch.success)
    for i in (0, 4):
        alone = fn(images[i : i + 1], labels[i : i + 1], jax.random.key(0), targets[i : i + 1])
        assert int(alone.steps[0]) == int(batch.steps[i])
        np.testing.assert_allclose(alone.adversarial[0], batch.adversarial[i], atol=1e-5)
        assert float(alone.l1_weight[0]) == pytest.approx(float(batch.l1_weight[i]))


@pytest.mark.parametrize("pool_size", [1, 4])
def test_pool_size_does_not_change_results(ten_class, pool_size):
    logits_fn, images, labels, targets, fn, batch = ten_class
    pooled = search.attack(
        logits_fn, images, labels, targets=targets, config=fn.config, pool_size=pool_size
    )
    np.testing.assert_array_equal(pooled.steps, batch.steps)
    np.testing.assert_allclose(pooled.adversarial, batch.adversarial, atol=1e-5)
    np.testing.assert_allclose(pooled.l1_weight, batch.l1_weight, rtol=1e-6)


def test_one_while_loop_in_the_compiled_program(ten_class):
    _, images, labels, targets, fn, _ = ten_class
    args = fn.arguments(images, labels, jax.random.key(0), targets)
    closed = jax.make_jaxpr(fn.program)(*args)
    assert count_primitive(closed.jaxpr, "while") == 1
    assert count_primitive(closed.jaxpr, "scan") == 0
    hlo = fn.program.lower(*args).compile().as_text()
    assert hlo.count(" while(") == 1, [line for line in hlo.splitlines() if " while(" in line]


def test_next_weight_brackets_the_threshold():
    up = minimal.next_weight(jnp.float32(1.0), jnp.float32(0.0), jnp.float32(jnp.inf), True)
    assert [float(v) for v in up] == [2.0, 1.0, math.inf]
    down = minimal.next_weight(jnp.float32(2.0), jnp.float32(1.0), jnp.float32(jnp.inf), False)
    assert [float(v) for v in down] == pytest.approx([math.sqrt(2.0), 1.0, 2.0])
    first_fail = minimal.next_weight(
        jnp.float32(1.0), jnp.float32(0.0), jnp.float32(jnp.inf), False
    )
    assert [float(v) for v in first_fail] == [0.5, 0.0, 1.0]
