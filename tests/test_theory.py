"""Tests for `fmnist_jax.theory`: the exercise's section 1 as checks on values, and its command
line.

Folding tests run in float64 (the `x64` fixture) so that "the same function" can be asserted to
~1e-12; the sigmoid tests (the custom-VJP `layers.sigmoid` against the naive form) run in the
project's float32.
"""

import collections
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import folding, layers, models, theory
from tests.conftest import REPO

EXACT = 1e-12  # relative to the output's scale, in float64


@pytest.fixture
def x64():
    """float64 inside the test, restored afterwards."""
    with jax.enable_x64(True):
        yield


def _max_rel_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(a))))


def _net_pair(threshold_model, relu_model, fold, x_shape, seed, threshold_scale=1.0):
    """(input, thresholded params, thresholded output, folded output) for a random network."""
    x = theory.random_inputs(x_shape, seed)
    params = theory.random_params(threshold_model, x, seed, threshold_scale)
    y = threshold_model.apply({"params": params}, x)
    return x, params, y, relu_model.apply({"params": fold(params)}, x)


def _primitives(f) -> collections.Counter:
    jaxpr = jax.make_jaxpr(jax.grad(f))(jnp.float32(1.0)).jaxpr
    return collections.Counter(eqn.primitive.name for eqn in jaxpr.eqns)


# ---------------------------------------------------------------------------------------------
# 1.2 sigmoid


_SIGMOIDS = (theory.naive_sigmoid, theory.sigmoid)


def test_theory_measures_the_sigmoid_of_the_layers():
    assert theory.sigmoid is layers.sigmoid


def _grads_and_reference(lo, hi, num):
    """float32 gradients of both sigmoids on a grid, and sigma' in float64, computed stably."""
    xs = jnp.linspace(lo, hi, num, dtype=jnp.float32)
    x = np.asarray(xs, np.float64)
    e = np.exp(-np.abs(x))
    grads = [np.asarray(jax.vmap(jax.grad(f))(xs), np.float64) for f in _SIGMOIDS]
    return x, *grads, e / (1.0 + e) ** 2


def test_both_gradients_match_sigma_prime_to_float32_precision():
    x, naive, custom, exact = _grads_and_reference(-80.0, 80.0, 3201)
    np.testing.assert_allclose(theory.sigmoid(x), theory.naive_sigmoid(x), atol=1e-7)
    np.testing.assert_allclose(naive, exact, rtol=0, atol=6e-8)
    np.testing.assert_allclose(custom, exact, rtol=0, atol=1.2e-7)  # y - y^2 cancels for x > 0
    np.testing.assert_allclose(custom, naive, rtol=0, atol=1.2e-7)


def test_relative_accuracy_custom_on_the_left_tail_naive_on_the_right():
    # Left: sigma(x) is tiny and exact, so sigma - sigma^2 is too; the naive chain rule's
    # (1 + e^-x)^-2 underflows to 0 below x = -43.7. Right: sigma(x) rounds to 1, so
    # sigma - sigma^2 = 0 from x = 16.6, while the naive e^-x / (1 + e^-x)^2 stays accurate.
    x, naive, custom, exact = _grads_and_reference(-80.0, 80.0, 3201)
    left, right = x <= 0, x > 0
    np.testing.assert_allclose(custom[left], exact[left], rtol=1e-6)
    np.testing.assert_allclose(naive[right], exact[right], rtol=1e-6)
    assert np.all(naive[x < -43.7] == 0.0) and np.all(exact[x < -43.7] > 1e-35)
    assert np.all(custom[x > 16.7] == 0.0) and np.all(exact[x > 16.7] > 1e-35)
    assert np.max(np.abs(custom - exact)[right] / exact[right]) > 1e-4


@pytest.mark.parametrize("x", [-1000.0, -100.0, -88.8])
def test_naive_gradient_is_nan_past_exp_overflow_custom_is_zero(x):
    # exp(-x) overflows to inf for x < -88.72: (1 + inf)^-2 * inf in the chain rule is NaN.
    assert np.isnan(jax.grad(theory.naive_sigmoid)(jnp.float32(x)))
    assert float(jax.grad(theory.sigmoid)(jnp.float32(x))) == 0.0


@pytest.mark.parametrize("x", [-88.7, 100.0, 1000.0])
def test_both_gradients_zero_where_exp_does_not_overflow(x):
    assert float(jax.grad(theory.naive_sigmoid)(jnp.float32(x))) == 0.0
    assert float(jax.grad(theory.sigmoid)(jnp.float32(x))) == 0.0


def test_sigmoid_tail_gradients_reports_the_measured_values():
    tails = theory.sigmoid_tail_gradients()
    assert list(tails) == [-1000.0, -100.0, -50.0, 20.0, 1000.0]
    assert np.isnan(tails[-1000.0][0]) and tails[-1000.0][1] == 0.0
    assert tails[-50.0][0] == 0.0 and tails[-50.0][1] == pytest.approx(np.exp(-50.0), rel=1e-5)
    assert tails[20.0][0] == pytest.approx(np.exp(-20.0), rel=1e-5) and tails[20.0][1] == 0.0
    assert tails[1000.0] == (0.0, 0.0)


def test_custom_gradient_has_fewer_jaxpr_equations_and_no_exp_or_div():
    # The custom gradient's own primitives (logistic, y - y * y) are tested in test_layers.py.
    counts = theory.jaxpr_equation_counts()
    assert counts == {"naive": 10, "custom": 4}
    naive = _primitives(theory.naive_sigmoid)
    assert naive["exp"] == 1 and naive["div"] == 1 and naive["integer_pow"] == 1


def test_count_equations_looks_inside_jit():
    plain = theory.gradient_equation_count(theory.naive_sigmoid)
    jitted_jaxpr = jax.make_jaxpr(jax.grad(jax.jit(theory.naive_sigmoid)))(1.0).jaxpr
    assert len(jitted_jaxpr.eqns) == 2  # two `jit` wrappers (forward, backward) at top level
    assert theory.count_equations(jitted_jaxpr) == plain == 10


# ---------------------------------------------------------------------------------------------
# 1.1 folding max{t, .} into ReLU: MLPs


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("hidden_sizes", [(8,), (16, 4), (5, 7, 3, 9)])
@pytest.mark.parametrize("threshold_scale", [0.1, 1.0, 100.0])
def test_fold_mlp_computes_the_same_function(hidden_sizes, threshold_scale):
    kwargs = {"hidden_sizes": hidden_sizes, "num_outputs": 3, "dropout_rate": 0.5}
    pair = (folding.ThresholdMLP(**kwargs), folding.ReluMLP(**kwargs), folding.fold_mlp)
    seed = len(hidden_sizes) + int(threshold_scale)
    x, params, y, y_folded = _net_pair(*pair, (6, 10), seed, threshold_scale)
    assert y.dtype == jnp.float64
    assert _max_rel_diff(y, y_folded) < EXACT  # dropout is off: train=False
    # The thresholds matter: the same weights without folding give another function.
    unfolded = {k: v for k, v in params.items() if not k.startswith("ThresholdReLU")}
    assert _max_rel_diff(y, pair[1].apply({"params": unfolded}, x)) > 1e-3


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("t", [-1e3, 1e3])
def test_fold_mlp_with_extreme_thresholds(t):
    # t = -1e3: every unit is linear; t = +1e3: every unit outputs t, the net is constant.
    kwargs = {"hidden_sizes": (16, 4), "num_outputs": 3}
    model = folding.ThresholdMLP(**kwargs)
    x = theory.random_inputs((6, 10), seed=1)
    params = theory.random_params(model, x, seed=1)
    params["ThresholdReLU_0"] = {"threshold": jnp.full((16,), t)}
    params["ThresholdReLU_1"] = {"threshold": jnp.full((4,), t)}
    y = model.apply({"params": params}, x)
    y_folded = folding.ReluMLP(**kwargs).apply({"params": folding.fold_mlp(params)}, x)
    assert _max_rel_diff(y, y_folded) < EXACT
    assert (float(jnp.ptp(y, axis=0).max()) == 0.0) == (t > 0)


@pytest.mark.usefixtures("x64")
def test_fold_with_one_shared_threshold_is_the_exercises_formula():
    # The exercise: b_l <- b_l - t and b_{l+1,i} <- b_{l+1,i} + t * sum_j w_ij.
    kwargs, x = {"hidden_sizes": (7,), "num_outputs": 3}, jnp.zeros((1, 5))
    params = theory.random_params(folding.ThresholdMLP(**kwargs), x, seed=2)
    params["ThresholdReLU_0"] = {"threshold": jnp.full((7,), 0.75)}
    folded = folding.fold_mlp(params)
    np.testing.assert_allclose(folded["Dense_0"]["bias"], params["Dense_0"]["bias"] - 0.75)
    expected = params["Dense_1"]["bias"] + 0.75 * params["Dense_1"]["kernel"].sum(axis=0)
    np.testing.assert_allclose(folded["Dense_1"]["bias"], expected, rtol=1e-14)
    relu_shapes = jax.eval_shape(folding.ReluMLP(**kwargs).init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, folded) == jax.tree.map(jnp.shape, relu_shapes["params"])


# ---------------------------------------------------------------------------------------------
# 1.1 dropout: exact at test time only (the MLP tests above run with dropout layers, off)


def _dropout_pair(hidden_sizes, rate=0.5):
    """A ThresholdMLP with random params (thresholds N(0, 4)), its ReluMLP twin, and inputs."""
    kwargs = {"hidden_sizes": hidden_sizes, "num_outputs": 3, "dropout_rate": rate}
    model, relu = folding.ThresholdMLP(**kwargs), folding.ReluMLP(**kwargs)
    x = theory.random_inputs((4, 6), seed=3)
    params = theory.random_params(model, x, seed=3, threshold_scale=2.0)
    return model, relu, x, params


def _rngs(seed):
    # 'rbg' keys: the same masks in both nets as any key, and far cheaper to compile on CPU.
    return {"dropout": jax.random.key(seed, impl="rbg")}


@pytest.mark.usefixtures("x64")
def test_dropout_at_train_time_shifts_logits_by_the_dropped_thresholds():
    # Same key -> same mask m in both nets (same module names). With d = m / (1 - p), the
    # folded logits are off by ((1 - d) * t) @ W_out, which is 0 only where t = 0.
    model, relu, x, params = _dropout_pair((8,))
    variables = {"params": params}
    y, state = model.apply(variables, x, train=True, rngs=_rngs(7), capture_intermediates=True)
    kept = state["intermediates"]["Dropout_0"]["__call__"][0]
    d = kept / state["intermediates"]["ThresholdReLU_0"]["__call__"][0]
    assert set(np.unique(np.round(np.asarray(d), 12))) == {0.0, 2.0}
    y_folded = relu.apply({"params": folding.fold_mlp(params)}, x, train=True, rngs=_rngs(7))
    t, w = params["ThresholdReLU_0"]["threshold"], params["Dense_1"]["kernel"]
    np.testing.assert_allclose(y_folded - y, ((1.0 - d) * t) @ w, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(y_folded - y))) > 0.1


def _mean_logit_gap(model, relu, x, params, samples=4000):
    """(mean over dropout masks of folded - thresholded logits, its standard error)."""
    folded = folding.fold_mlp(params)

    @jax.jit
    @jax.vmap
    def gap(seed):
        y = model.apply({"params": params}, x, train=True, rngs=_rngs(seed))
        return relu.apply({"params": folded}, x, train=True, rngs=_rngs(seed)) - y

    gaps = gap(jnp.arange(samples))
    return gaps.mean(axis=0), gaps.std(axis=0) / np.sqrt(samples)


@pytest.mark.usefixtures("x64")
def test_dropout_before_the_output_layer_is_exact_in_expectation_only():
    mean, stderr = _mean_logit_gap(*_dropout_pair((8,)))
    assert float(jnp.max(jnp.abs(mean) / stderr)) < 4.0  # zero mean, within Monte Carlo error
    assert float(jnp.min(stderr)) > 1e-3  # ... of a gap that is not zero per mask


@pytest.mark.usefixtures("x64")
def test_dropout_before_a_relu_is_not_exact_even_in_expectation():
    # Layer 2 is a plain ReLU (t = 0), so its dropout adds no error of its own: the mean gap is
    # layer 1's zero-mean error pushed through a ReLU, E[relu(z + e)] - relu(z) != 0.
    model, relu, x, params = _dropout_pair((8, 8))
    params["ThresholdReLU_1"] = {"threshold": jnp.zeros(8)}
    mean, stderr = _mean_logit_gap(model, relu, x, params)
    assert float(jnp.max(jnp.abs(mean) / stderr)) > 10.0
    assert float(jnp.max(jnp.abs(mean))) > 0.05


# ---------------------------------------------------------------------------------------------
# 1.1 folding in the ConvNet: exact for VALID, pooling, flatten, Dense; not for SAME with 0

EXACT_CASES = [name for name in theory.fold_cases() if name != theory.COUNTEREXAMPLE]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", EXACT_CASES)
@pytest.mark.parametrize("threshold_scale", [1.0, 30.0])
def test_report_cases_fold_exactly(name, threshold_scale):
    case = theory.fold_cases()[name]
    assert theory.fold_difference(*case, seed=4, threshold_scale=threshold_scale) < 1e-11


@pytest.mark.usefixtures("x64")
def test_folded_convnet_params_run_in_models_convnet():
    # The default sizes are the exercise's ConvNet: fold straight into `models.ConvNet`.
    model = folding.ThresholdConvNet(padding="SAME_THRESHOLD")
    x = theory.random_inputs((2, 28, 28, 1), seed=5)
    params = theory.random_params(model, x, seed=5)
    y = model.apply({"params": params}, x)
    y_folded = models.ConvNet().apply({"params": folding.fold_convnet(params)}, x)
    assert _max_rel_diff(y, y_folded) < EXACT


@pytest.mark.usefixtures("x64")
def test_same_zero_padding_breaks_folding_at_the_border():
    case = theory.fold_cases()[theory.COUNTEREXAMPLE]
    assert theory.fold_difference(*case, seed=6) > 0.05  # the logits differ
    gap, predicted = theory.conv1_gap(*case, seed=6)
    assert gap.shape == (3, 5, 5, 6)
    interior, border = gap[:, 1:-1, 1:-1], gap.at[:, 1:-1, 1:-1].set(0.0)
    assert float(jnp.max(jnp.abs(interior))) < 1e-12
    assert float(jnp.max(jnp.abs(border))) > 0.1
    np.testing.assert_allclose(gap, jnp.broadcast_to(predicted, gap.shape), atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_padding_with_the_threshold_removes_the_border_gap():
    gap, _ = theory.conv1_gap(*theory.fold_cases()["ConvNet, SAME, padded with t"], seed=6)
    assert float(jnp.max(jnp.abs(gap))) < 1e-12


# ---------------------------------------------------------------------------------------------
# The closing note's numbers


def test_fold_report_numbers():
    report = theory.fold_report()
    assert report["jaxpr_equations"] == {"naive": 10, "custom": 4}
    assert report["max_difference_exact"] < 1e-12
    assert report["max_difference_same_zero_padding"] > 0.05
    assert report["same_padding_conv1_gap"]["interior"] < 1e-12
    assert report["same_padding_conv1_gap"]["border"] > 0.1
    assert list(report["fold_differences"]) == list(theory.fold_cases())
    text = theory.format_report(report)
    assert theory.COUNTEREXAMPLE in text and "nan" in text
    assert not jax.config.jax_enable_x64  # the report's float64 does not leak


def test_cli_help_exits_0():
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.theory", "--help"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The exercise's section 1, executable")
