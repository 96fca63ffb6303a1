"""Tests of fmnist_jax.adversarial.search: the objective's gradient against its closed form,
the batched while loop's invariants (alone == in a batch, pool size changes nothing, batch ==
Python loop, one while loop whatever max_steps), the baselines' constraints, and bad input.

Most tests attack a linear softmax model (logits = x W + b) on random images: it compiles
fast and its gradient has a closed form. Its weights are like a trained model's input
sensitivities: large on a few salient pixels, small on the rest.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmnist_jax import data
from fmnist_jax.adversarial import presets, search
from fmnist_jax.errors import ConfigError

NUM_PIXELS = 28 * 28
DEFAULT = presets.METHODS[presets.DEFAULT_METHOD]  # the default method's config


def linear_params(seed: int = 0, salient: int = 60, weak: float = 0.02):
    """W: N(0, 1) on `salient` random pixels, N(0, weak^2) elsewhere; b: N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, weak, (NUM_PIXELS, 10))
    w[rng.choice(NUM_PIXELS, salient, replace=False)] = rng.normal(0, 1.0, (salient, 10))
    b = rng.normal(0, 0.1, 10)
    return jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)


def linear_logits_fn(w, b):
    return lambda x: x.reshape(x.shape[0], -1) @ w + b


@pytest.fixture(scope="module")
def problem():
    """A linear model, 8 random images in [0, 1], their predicted labels, fixed targets."""
    w, b = linear_params()
    logits_fn = linear_logits_fn(w, b)
    images = np.random.default_rng(1).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    labels = np.asarray(jnp.argmax(logits_fn(images), -1), np.int32)
    targets = np.asarray(search.draw_targets(jax.random.key(3), jnp.asarray(labels)))
    return logits_fn, images, labels, targets


@pytest.fixture(scope="module")
def default_fn(problem):
    """The default method's batch program on the linear model, compiled once for the module
    (max_steps is a traced argument, so budgets differ without recompiling)."""
    return search.make_attack(problem[0], DEFAULT)


@pytest.fixture(scope="module")
def median_steps(problem, default_fn):
    """The median number of steps the default method needs on `problem`."""
    _, images, labels, targets = problem
    result = default_fn(images, labels, jax.random.key(0), targets)
    assert np.all(result.success)
    steps = np.asarray(result.steps)
    assert steps.min() < np.median(steps) < steps.max()
    return int(np.median(steps))


def p_target(logits_fn, images, targets):
    probs = jax.nn.softmax(logits_fn(jnp.asarray(images)), -1)
    return np.asarray(probs[np.arange(len(targets)), targets])


# --------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("reduction, pixel_weight", [("sum", 0.05), ("mean", 0.05 / NUM_PIXELS)])
def test_gradient_and_loss_match_their_closed_form(reduction, pixel_weight):
    w, b = linear_params(seed=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (28, 28, 1)).astype(np.float32)
    x_adv = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    target, logits_fn = 7, linear_logits_fn(w, b)
    grad = search.input_gradient(logits_fn, x_adv, x, target, 0.05, reduction)

    p = jax.nn.softmax(x_adv.reshape(-1) @ w + b)
    onehot = np.eye(10)[target]
    expected = (w @ (p - onehot)).reshape(x.shape) + pixel_weight * np.sign(x_adv - x)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)

    loss = search.objective(logits_fn, x_adv, x, target, 0.05, reduction)
    expected_loss = -np.log(p[target]) + pixel_weight * np.abs(x_adv - x).sum()
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)


def test_targets_are_uniform_over_the_wrong_labels():
    labels = jnp.asarray(np.arange(9000) % 10, jnp.int32)
    targets = np.asarray(search.draw_targets(jax.random.key(0), labels))
    assert not np.any(targets == np.asarray(labels))
    for label in range(10):
        counts = np.bincount(targets[np.asarray(labels) == label], minlength=10)
        assert counts[label] == 0
        wrong = np.delete(counts, label)  # 900 draws over 9 labels: 100 expected each
        assert wrong.min() > 60 and wrong.max() < 140, counts


# --------------------------------------------------------------------------- invariants


def test_pixels_stay_in_the_clip_box_and_the_input_is_untouched(problem):
    logits_fn, images, labels, _ = problem
    before = images.copy()
    big_steps = presets.AttackConfig(update="gd", learning_rate=1.0, max_steps=20)
    result = search.attack(logits_fn, images, labels, key=jax.random.key(0), config=big_steps)
    np.testing.assert_array_equal(images, before)
    x_adv = np.asarray(result.adversarial)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.any(x_adv == 0.0) or np.any(x_adv == 1.0)  # the clip was needed
    free = big_steps.replace(clip=None)
    unclipped = search.attack(logits_fn, images, labels, key=jax.random.key(0), config=free)
    assert (
        np.asarray(unclipped.adversarial).min() < 0 or np.asarray(unclipped.adversarial).max() > 1
    )


def test_drawn_targets_differ_from_labels_and_follow_the_key(problem, default_fn):
    _, images, labels, _ = problem
    a = default_fn(images, labels, jax.random.key(5), max_steps=10)
    b = default_fn(images, labels, jax.random.key(5), max_steps=10)
    c = default_fn(images, labels, jax.random.key(6), max_steps=10)
    assert not np.any(np.asarray(a.targets) == labels)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.targets, c.targets)


def test_sample_already_at_its_target_stops_at_step_zero():
    w, b = linear_params()
    b = b.at[3].set(20.0)  # every image is class 3 with p ~ 1
    logits_fn = linear_logits_fn(w, b)
    images = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 4], np.int32)
    targets = np.array([3, 5, 3, 6], np.int32)
    result = search.attack(logits_fn, images, labels, targets=targets)
    np.testing.assert_array_equal(np.asarray(result.steps)[[0, 2]], [0, 0])
    np.testing.assert_array_equal(np.asarray(result.adversarial)[[0, 2]], images[[0, 2]])
    np.testing.assert_array_equal(np.asarray(result.l1)[[0, 2]], [0.0, 0.0])
    assert np.all(np.asarray(result.success)[[0, 2]])
    assert np.all(np.asarray(result.steps)[[1, 3]] > 0)


def test_success_flag_matches_p_target_recomputed_outside(problem, default_fn, median_steps):
    logits_fn, images, labels, targets = problem
    result = default_fn(images, labels, jax.random.key(0), targets, max_steps=median_steps)
    p = p_target(logits_fn, result.adversarial, targets)
    np.testing.assert_allclose(result.p_target, p, rtol=1e-5)
    np.testing.assert_array_equal(result.success, p >= DEFAULT.threshold)
    failed = ~np.asarray(result.success)
    assert failed.any() and (~failed).any()
    # A failed sample returns its last iterate: moved away from x, nowhere near zeros.
    assert np.all(np.asarray(result.steps)[failed] == median_steps)
    assert np.all(np.asarray(result.l1)[failed] > 0.5)
    assert np.all(np.asarray(result.adversarial)[failed].mean(axis=(1, 2, 3)) > 0.3)


# --------------------------------------------------------------------------- batch consistency


def test_single_search_equals_its_sample_in_the_batch(problem, default_fn):
    """`search.search` (one image's while loop, the benchmark's baseline) takes the steps
    the batch program gives that image and ends at the same x'."""
    logits_fn, images, labels, targets = problem
    config = DEFAULT
    batch = default_fn(images, labels, jax.random.key(0), targets)
    one = jax.jit(lambda x, t: search.search(logits_fn, x, t, config, config.max_steps))
    for i in (0, 5):
        state = one(jnp.asarray(images[i]), int(targets[i]))
        assert int(state.step) == int(batch.steps[i])
        np.testing.assert_allclose(state.x_adv, batch.adversarial[i], atol=1e-6)
        assert float(state.p_target) == pytest.approx(float(batch.p_target[i]), rel=1e-5)


def test_program_compiled_apart_from_a_call_gives_the_same_result(problem, default_fn):
    """What the runner does to time compilation separately: lower and compile `program` on
    `arguments`, then run the compiled program."""
    _, images, labels, targets = problem
    args = default_fn.arguments(images, labels, jax.random.key(0), targets)
    compiled = default_fn.program.lower(*args).compile()
    apart, called = compiled(*args), default_fn(images, labels, jax.random.key(0), targets)
    for field, x, y in zip(search.AttackResult._fields, apart, called):
        np.testing.assert_array_equal(x, y, err_msg=field)


def test_sample_alone_equals_sample_in_batch(problem, default_fn):
    _, images, labels, targets = problem
    fn = default_fn
    batch = fn(images, labels, jax.random.key(0), targets)
    for i in (0, 5):
        alone = fn(images[i : i + 1], labels[i : i + 1], jax.random.key(0), targets[i : i + 1])
        assert int(alone.steps[0]) == int(batch.steps[i])
        np.testing.assert_allclose(alone.adversarial[0], batch.adversarial[i], atol=1e-6)


@pytest.mark.parametrize("pool_size", [1, 3])
def test_pool_size_does_not_change_results(problem, default_fn, pool_size):
    """With fewer slots than images, slots are refilled as searches end; with pool_size >= N
    (the module's fixture) all run at once. Same searches either way."""
    logits_fn, images, labels, targets = problem
    config = DEFAULT
    everything = default_fn(images, labels, jax.random.key(0), targets)
    pooled = search.attack(
        logits_fn, images, labels, targets=targets, config=config, pool_size=pool_size
    )
    np.testing.assert_array_equal(pooled.steps, everything.steps)
    np.testing.assert_allclose(pooled.adversarial, everything.adversarial, atol=1e-6)
    np.testing.assert_allclose(pooled.p_target, everything.p_target, rtol=1e-5)


def test_finished_samples_do_not_change_with_a_larger_budget(problem, default_fn, median_steps):
    _, images, labels, targets = problem
    fn, n = default_fn, median_steps
    short = fn(images, labels, jax.random.key(0), targets, max_steps=n)
    long = fn(images, labels, jax.random.key(0), targets, max_steps=2 * n)
    done = np.asarray(short.success)
    assert done.any() and not done.all()
    np.testing.assert_array_equal(
        np.asarray(long.adversarial)[done], np.asarray(short.adversarial)[done]
    )
    np.testing.assert_array_equal(np.asarray(long.steps)[done], np.asarray(short.steps)[done])
    assert np.all(np.asarray(long.steps)[~done] > n)


@pytest.mark.parametrize(
    "config",
    [
        presets.AttackConfig(update="gd", learning_rate=0.05, max_steps=6),
        presets.AttackConfig(
            update="adam", learning_rate=0.02, max_steps=6, proximal=True, epsilon=0.03
        ),
    ],
    ids=["gd", "adam-proximal-epsilon"],
)
def test_batch_program_equals_python_loop_of_single_steps(problem, config):
    logits_fn, images, labels, targets = problem
    result = search.attack(logits_fn, images, labels, targets=targets, config=config)
    step = jax.jit(lambda x, t, s: search.search_step(logits_fn, x, t, config, s))
    for i in range(3):
        x, t = jnp.asarray(images[i]), int(targets[i])
        state, steps = search.init_state(logits_fn, x, t, config), 0
        while steps < config.max_steps and state.p_target < config.threshold:
            state, steps = step(x, t, state), steps + 1
        assert steps == int(result.steps[i])
        np.testing.assert_allclose(state.x_adv, result.adversarial[i], atol=1e-5)


def test_history_replays_the_search_step_by_step(problem, default_fn, median_steps):
    logits_fn, images, labels, targets = problem
    result = default_fn(images, labels, jax.random.key(0), targets)
    n = int(np.max(result.steps))
    config = DEFAULT
    history = np.asarray(search.p_target_history(logits_fn, images, targets, config, n))
    assert history.shape == (n + 1, len(images))
    np.testing.assert_allclose(history[-1], result.p_target, rtol=1e-5)
    first_hit = np.argmax(history >= config.threshold, axis=0)
    np.testing.assert_array_equal(first_hit, result.steps)


def test_pgd_and_fgsm_stay_in_the_epsilon_ball(problem):
    logits_fn, images, labels, targets = problem
    for name in ("fgsm", "pgd"):
        config = presets.method_config(name, epsilon=0.05)
        result = search.attack(logits_fn, images, labels, targets=targets, config=config)
        assert float(np.max(result.linf)) <= 0.05 + 1e-6, name
        assert np.all(np.asarray(result.steps) <= config.max_steps), name
    assert config.max_steps == 100 and presets.method_config("fgsm", max_steps=50).max_steps == 1


def test_l1_term_makes_the_noise_smaller_and_sparser(problem):
    """The exercise's L1 term (0.05, summed over pixels) against none, same model and targets:
    the weak pixels, whose gradient is below 0.05, stay put."""
    logits_fn, images, labels, targets = problem
    config = presets.AttackConfig(
        update="gd", learning_rate=0.01, max_steps=500, l1_reduction="sum"
    )
    norms = {}
    for lam in (0.0, 0.05):
        result = search.attack(
            logits_fn, images, labels, targets=targets, config=config.replace(l1_weight=lam)
        )
        assert np.all(result.success)
        norms[lam] = (np.asarray(result.l1), np.asarray(result.l0))
    assert np.all(norms[0.05][0] < norms[0.0][0]), norms
    assert np.mean(norms[0.05][0]) < 0.85 * np.mean(norms[0.0][0]), norms
    assert np.mean(norms[0.05][1]) < 0.5 * np.mean(norms[0.0][1]), norms


# --------------------------------------------------------------------------- one program


def count_primitive(jaxpr, name: str) -> int:
    """Occurrences of primitive `name` in a jaxpr and every jaxpr nested in its equations."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += count_primitive(inner, name)
    return count


def test_one_while_loop_independent_of_max_steps(problem):
    logits_fn, images, labels, _ = problem
    sizes = []
    for max_steps in (3, 3000):
        fn = search.make_attack(logits_fn, presets.AttackConfig(max_steps=max_steps))
        args = fn.arguments(images, labels, jax.random.key(0), None, max_steps)
        closed = jax.make_jaxpr(fn.program)(*args)
        assert count_primitive(closed.jaxpr, "while") == 1
        assert count_primitive(closed.jaxpr, "scan") == 0
        sizes.append(len(str(closed.jaxpr)))
    assert sizes[0] == sizes[1]


# --------------------------------------------------------------------------- a trained model


def train_softmax_regression(split, steps: int = 150):
    """A linear classifier trained on `split` with Adam; returns its logits function."""
    x = jnp.asarray(data.to_model_inputs(split["inputs"])).reshape(len(split["targets"]), -1)
    y = jnp.asarray(split["targets"])
    params = {"w": jnp.zeros((NUM_PIXELS, 10)), "b": jnp.zeros(10)}
    tx = optax.adam(0.01)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return linear_logits_fn(params["w"], params["b"])


def test_most_targets_reached_on_a_trained_model():
    split = data.synthetic_images(num_train=512, num_test=16).train
    logits_fn = train_softmax_regression(split)
    images, labels = data.to_model_inputs(split["inputs"][:64]), split["targets"][:64]
    result = search.attack(logits_fn, images, labels, key=jax.random.key(0))
    assert np.mean(np.asarray(result.clean_predicted) == labels) > 0.9
    won = np.asarray(result.success)
    assert won.mean() >= 0.9
    # x' is still nearer x than the mean image of the target class is: not a class swap.
    inputs, classes = data.to_model_inputs(split["inputs"]), split["targets"]
    means = np.stack([inputs[classes == c].mean(0) for c in range(10)])
    gap = np.linalg.norm((images - means[np.asarray(result.targets)]).reshape(64, -1), axis=1)
    assert np.all(np.asarray(result.l2)[won] < gap[won])
    assert np.median(np.asarray(result.steps)[won]) < DEFAULT.max_steps / 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"max_steps": 0}, "max_steps"),
        ({"update": "sgd_momentum"}, "unknown update"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"epsilon": 0.0}, "epsilon"),
    ],
)
def test_make_attack_refuses_a_config_it_cannot_run(problem, changes, message):
    logits_fn = problem[0]
    with pytest.raises(ConfigError, match=message):
        search.make_attack(logits_fn, presets.AttackConfig().replace(**changes))


def test_bad_arguments_raise(problem):
    logits_fn, images, labels, _ = problem
    with pytest.raises(ConfigError, match="max_steps"):
        search.make_attack(logits_fn, presets.AttackConfig())(
            images, labels, jax.random.key(0), None, 0
        )
    with pytest.raises(ConfigError, match="pool_size"):
        search.make_attack(logits_fn, presets.AttackConfig(), pool_size=0)
    with pytest.raises(ConfigError, match="key"):
        search.attack(logits_fn, images, labels)
    with pytest.raises(ConfigError, match="floats"):
        search.attack(logits_fn, (images * 255).astype(np.uint8), labels, key=jax.random.key(0))
    with pytest.raises(ConfigError, match="targets must lie in 0..9"):
        search.attack(logits_fn, images, labels, targets=np.full(len(labels), 10))
    with pytest.raises(ConfigError, match="labels must have shape"):
        search.attack(logits_fn, images, labels[:3], key=jax.random.key(0))


def test_fixed_steps_mode_runs_every_search_to_max_steps(problem):
    """early_stop=False (the benchmark's PGD-100): every search takes max_steps steps, the same
    steps a Python loop of single steps takes, whatever the pool size; success is still read
    at the end."""
    logits_fn, images, labels, targets = problem
    config = presets.method_config("pgd", max_steps=12).replace(early_stop=False)
    result = search.attack(logits_fn, images, labels, targets=targets, config=config)
    np.testing.assert_array_equal(result.steps, 12)
    pooled = search.attack(logits_fn, images, labels, targets=targets, config=config, pool_size=3)
    np.testing.assert_array_equal(pooled.adversarial, result.adversarial)
    step = jax.jit(lambda x, t, s: search.search_step(logits_fn, x, t, config, s))
    x, t = jnp.asarray(images[0]), int(targets[0])
    state = search.init_state(logits_fn, x, t, config)
    for _ in range(12):
        state = step(x, t, state)
    np.testing.assert_allclose(state.x_adv, result.adversarial[0], atol=1e-6)
    np.testing.assert_array_equal(result.success, np.asarray(result.p_target) >= config.threshold)
    early = search.attack(
        logits_fn, images, labels, targets=targets, config=config.replace(early_stop=True)
    )
    assert np.asarray(early.steps).min() < 12  # some stop early when allowed to
