"""Tests of fmnist_jax.adversarial: the objective's gradient against its closed form, the
batched while loop's invariants, the baselines' constraints, and the command line end to end.

Most tests attack a linear softmax model (logits = x W + b) on random images: it compiles
fast and its gradient has a closed form. Its weights are like a trained model's input
sensitivities: large on a few salient pixels, small on the rest.
"""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmnist_jax import adversarial as adv
from fmnist_jax import data, train
from fmnist_jax.config import ConfigError, load_experiment
from tests.conftest import REPO

NUM_PIXELS = 28 * 28


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
    targets = np.asarray(adv.draw_targets(jax.random.key(3), jnp.asarray(labels)))
    return logits_fn, images, labels, targets


@pytest.fixture(scope="module")
def default_fn(problem):
    """The default method's batch program on the linear model, compiled once for the module
    (max_steps is a traced argument, so budgets differ without recompiling)."""
    return adv.make_attack(problem[0], adv.METHODS[adv.DEFAULT_METHOD])


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
def test_gradient_matches_closed_form(reduction, pixel_weight):
    w, b = linear_params(seed=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (28, 28, 1)).astype(np.float32)
    x_adv = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    target, logits_fn = 7, linear_logits_fn(w, b)
    grad = adv.input_gradient(logits_fn, x_adv, x, target, 0.05, reduction)

    p = jax.nn.softmax(x_adv.reshape(-1) @ w + b)
    onehot = np.eye(10)[target]
    expected = (w @ (p - onehot)).reshape(x.shape) + pixel_weight * np.sign(x_adv - x)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)

    loss = adv.objective(logits_fn, x_adv, x, target, 0.05, reduction)
    expected_loss = -np.log(p[target]) + pixel_weight * np.abs(x_adv - x).sum()
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)


def test_targets_are_uniform_over_the_wrong_labels():
    labels = jnp.asarray(np.arange(9000) % 10, jnp.int32)
    targets = np.asarray(adv.draw_targets(jax.random.key(0), labels))
    assert not np.any(targets == np.asarray(labels))
    for label in range(10):
        counts = np.bincount(targets[np.asarray(labels) == label], minlength=10)
        assert counts[label] == 0
        wrong = np.delete(counts, label)  # 900 draws over 9 labels: 100 expected each
        assert wrong.min() > 60 and wrong.max() < 140, counts


# --------------------------------------------------------------------------- invariants


def test_box_kept_and_input_unchanged(problem):
    logits_fn, images, labels, _ = problem
    before = images.copy()
    big_steps = adv.AttackConfig(update="gd", learning_rate=1.0, max_steps=20)
    result = adv.attack(logits_fn, images, labels, key=jax.random.key(0), config=big_steps)
    np.testing.assert_array_equal(images, before)
    x_adv = np.asarray(result.adversarial)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.any(x_adv == 0.0) or np.any(x_adv == 1.0)  # the clip was needed
    free = big_steps.replace(clip=None)
    unclipped = adv.attack(logits_fn, images, labels, key=jax.random.key(0), config=free)
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
    result = adv.attack(logits_fn, images, labels, targets=targets)
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
    np.testing.assert_array_equal(result.success, p >= adv.METHODS[adv.DEFAULT_METHOD].threshold)
    failed = ~np.asarray(result.success)
    assert failed.any() and (~failed).any()
    # A failed sample returns its last iterate: moved away from x, nowhere near zeros.
    assert np.all(np.asarray(result.steps)[failed] == median_steps)
    assert np.all(np.asarray(result.l1)[failed] > 0.5)
    assert np.all(np.asarray(result.adversarial)[failed].mean(axis=(1, 2, 3)) > 0.3)


# --------------------------------------------------------------------------- batch consistency


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
    config = adv.METHODS[adv.DEFAULT_METHOD]
    everything = default_fn(images, labels, jax.random.key(0), targets)
    pooled = adv.attack(
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
        adv.AttackConfig(update="gd", learning_rate=0.05, max_steps=6),
        adv.AttackConfig(
            update="adam", learning_rate=0.02, max_steps=6, proximal=True, epsilon=0.03
        ),
    ],
    ids=["gd", "adam-proximal-epsilon"],
)
def test_batch_program_equals_python_loop_of_single_steps(problem, config):
    logits_fn, images, labels, targets = problem
    result = adv.attack(logits_fn, images, labels, targets=targets, config=config)
    step = jax.jit(lambda x, t, s: adv.search_step(logits_fn, x, t, config, s))
    for i in range(3):
        x, t = jnp.asarray(images[i]), int(targets[i])
        state, steps = adv.init_state(logits_fn, x, t, config), 0
        while steps < config.max_steps and state.p_target < config.threshold:
            state, steps = step(x, t, state), steps + 1
        assert steps == int(result.steps[i])
        np.testing.assert_allclose(state.x_adv, result.adversarial[i], atol=1e-5)


def test_history_replays_the_search(problem, default_fn, median_steps):
    logits_fn, images, labels, targets = problem
    result = default_fn(images, labels, jax.random.key(0), targets)
    n = int(np.max(result.steps))
    config = adv.METHODS[adv.DEFAULT_METHOD]
    history = np.asarray(adv.p_target_history(logits_fn, images, targets, config, n))
    assert history.shape == (n + 1, len(images))
    np.testing.assert_allclose(history[-1], result.p_target, rtol=1e-5)
    first_hit = np.argmax(history >= config.threshold, axis=0)
    np.testing.assert_array_equal(first_hit, result.steps)


def test_pgd_and_fgsm_stay_in_the_epsilon_ball(problem):
    logits_fn, images, labels, targets = problem
    for name in ("fgsm", "pgd"):
        config = adv.method_config(name, epsilon=0.05)
        result = adv.attack(logits_fn, images, labels, targets=targets, config=config)
        assert float(np.max(result.linf)) <= 0.05 + 1e-6, name
        assert np.all(np.asarray(result.steps) <= config.max_steps), name
    assert config.max_steps == 100 and adv.method_config("fgsm", max_steps=50).max_steps == 1


def test_l1_term_makes_the_noise_smaller_and_sparser(problem):
    """The exercise's L1 term (0.05, summed over pixels) against none, same model and targets:
    the weak pixels, whose gradient is below 0.05, stay put."""
    logits_fn, images, labels, targets = problem
    config = adv.AttackConfig(update="gd", learning_rate=0.01, max_steps=500, l1_reduction="sum")
    norms = {}
    for lam in (0.0, 0.05):
        result = adv.attack(
            logits_fn, images, labels, targets=targets, config=config.replace(l1_weight=lam)
        )
        assert np.all(result.success)
        norms[lam] = (np.asarray(result.l1), np.asarray(result.l0))
    assert np.all(norms[0.05][0] < norms[0.0][0]), norms
    assert np.mean(norms[0.05][0]) < 0.85 * np.mean(norms[0.0][0]), norms
    assert np.mean(norms[0.05][1]) < 0.5 * np.mean(norms[0.0][1]), norms


def test_summary_counts_successful_samples_only():
    def record(success, steps, l1, clean=1):
        p = 0.96 if success else 0.5
        norms = {"l1": l1, "l2": l1 / 10, "linf": 0.1}
        return {
            "success": success,
            "steps": steps,
            "p_target": p,
            "label": 1,
            "clean_predicted": clean,
            **norms,
        }

    records = [record(True, 10, 4.0), record(True, 30, 8.0), record(False, 300, 50.0, clean=2)]
    s = adv.summarize(records, wall_time_s=2.0, compile_time_s=1.0)
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert s["median_steps"] == 20 and s["mean_steps"] == 20
    assert s["median_l1"] == 6.0 and s["mean_l2"] == pytest.approx(0.6)
    assert s["mean_p_target"] == pytest.approx((0.96 * 2 + 0.5) / 3)
    assert s["clean_accuracy"] == pytest.approx(2 / 3)
    assert s["attacks_per_sec"] == 1.5
    none = adv.summarize([record(False, 5, 1.0)], 1.0, 0.0)
    assert none["success_rate"] == 0 and none["median_l1"] is None


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
        fn = adv.make_attack(logits_fn, adv.AttackConfig(max_steps=max_steps))
        closed = jax.make_jaxpr(fn.program)(images, labels, jax.random.key(0), None, max_steps)
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
    result = adv.attack(logits_fn, images, labels, key=jax.random.key(0))
    assert np.mean(np.asarray(result.clean_predicted) == labels) > 0.9
    won = np.asarray(result.success)
    assert won.mean() >= 0.9
    # x' is still nearer x than the mean image of the target class is: not a class swap.
    inputs, classes = data.to_model_inputs(split["inputs"]), split["targets"]
    means = np.stack([inputs[classes == c].mean(0) for c in range(10)])
    gap = np.linalg.norm((images - means[np.asarray(result.targets)]).reshape(64, -1), axis=1)
    assert np.all(np.asarray(result.l2)[won] < gap[won])
    assert np.median(np.asarray(result.steps)[won]) < adv.METHODS[adv.DEFAULT_METHOD].max_steps / 2


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
def test_bad_config_raises(problem, changes, message):
    logits_fn = problem[0]
    with pytest.raises(ConfigError, match=message):
        adv.make_attack(logits_fn, adv.AttackConfig().replace(**changes))


def test_bad_arguments_raise(problem, tmp_path):
    logits_fn, images, labels, _ = problem
    with pytest.raises(ConfigError, match="unknown method 'cw'"):
        adv.method_config("cw")
    with pytest.raises(ConfigError, match="threshold"):
        adv.method_config("sign", threshold=1.5)
    with pytest.raises(ConfigError, match="max_steps"):
        adv.make_attack(logits_fn, adv.AttackConfig())(images, labels, jax.random.key(0), None, 0)
    with pytest.raises(ConfigError, match="key"):
        adv.attack(logits_fn, images, labels)
    with pytest.raises(ConfigError, match="floats"):
        adv.attack(logits_fn, (images * 255).astype(np.uint8), labels, key=jax.random.key(0))
    with pytest.raises(ConfigError, match="targets must lie in 0..9"):
        adv.attack(logits_fn, images, labels, targets=np.full(len(labels), 10))
    with pytest.raises(ConfigError, match="labels must have shape"):
        adv.attack(logits_fn, images, labels[:3], key=jax.random.key(0))
    with pytest.raises(ConfigError, match="unknown method 'cw'"):
        adv.parse_methods("gd,cw")
    assert adv.parse_methods("all") == list(adv.METHODS)
    (tmp_path / "config.json").write_text(json.dumps(load_experiment("cnn", "test").to_dict()))
    with pytest.raises(train.TrainingError, match="checkpoint"):
        adv.run(tmp_path, tmp_path / "out")


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.adversarial", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_without_checkpoint_exits_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = load_experiment("cnn_dropout", "test")
    (workdir / "config.json").write_text(json.dumps(config.to_dict()))
    proc = run_cli("--workdir", workdir, "--output", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "checkpoints" in lines[0]
    assert not (tmp_path / "out").exists()


SUMMARY_KEYS = {
    "success_rate", "median_steps", "mean_steps", "mean_l1", "median_l1", "mean_l2",
    "median_l2", "mean_linf", "median_linf", "mean_p_target", "clean_accuracy", "wall_time_s",
    "attacks_per_sec",
}  # fmt: skip


def test_cli_end_to_end(tmp_path):
    """A tiny ConvNet run (8 steps on synthetic data, so p(target) stays low: the threshold
    is lowered to 0.12 for some searches to succeed), then the command line on 16 images."""
    workdir, output = tmp_path / "cnn_dropout", tmp_path / "adversarial"
    config = load_experiment("cnn_dropout", "test")
    config.num_train_steps = 8
    train.train_and_evaluate(config, workdir)
    methods = [adv.DEFAULT_METHOD, "pgd"]
    flags = [
        "--num_images=16",
        "--max_steps=60",
        "--threshold=0.12",
        "--method=" + ",".join(methods),
    ]
    proc = run_cli(f"--workdir={workdir}", f"--output={output}", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "success" in proc.stderr  # the progress lines (absl logs to stderr)

    summary = json.loads((output / "summary.json").read_text())
    assert set(summary["methods"]) == set(methods)
    assert summary["default_method"] == adv.DEFAULT_METHOD
    assert summary["num_images"] == 16 and summary["seed"] == 0
    assert summary["threshold"] == 0.12 and summary["workdir"] == str(workdir)
    for name, s in summary["methods"].items():
        assert SUMMARY_KEYS <= set(s), name
        assert 0.0 < s["success_rate"] <= 1.0 and s["attacks_per_sec"] > 0, name
        assert 0.0 <= s["clean_accuracy"] <= 1.0
        assert 0 < s["median_l1"] and 0 < s["median_linf"] <= 1.0
    assert summary["methods"]["pgd"]["median_linf"] <= 0.1 + 1e-6

    with open(output / "records.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 * len(methods)
    assert all(r["target"] != r["label"] for r in rows)
    for r in rows:
        assert (r["success"] == "True") == (float(r["p_target"]) >= 0.12)
        assert int(r["steps"]) <= 60
    by_method = [[(r["index"], r["target"]) for r in rows if r["method"] == m] for m in methods]
    assert by_method[0] == by_method[1]  # the same images and targets for every method
    for name in ("figure.png", "curves.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (output / name).stat().st_size > 10_000
