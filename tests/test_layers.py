"""Tests for `fmnist_jax.layers`: the 2x2 max-pool's values and hand-written gradient, the
convolution's written-out gradients, and the sigmoid whose gradient reuses its forward value
(its comparison with the naive form is in test_theory.py)."""

import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import layers, models


def reference_pool(x):
    """The 2x2 pool as a reshape and a max, differentiated by JAX itself."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(x, axis=(2, 4))


@pytest.mark.parametrize("shape", [(2, 14, 14, 3), (1, 7, 7, 2), (3, 28, 28, 32), (1, 5, 4, 1)])
def test_values_match_flax_max_pool(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    np.testing.assert_array_equal(
        layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    )


@pytest.mark.parametrize("shape", [(2, 14, 14, 3), (1, 7, 7, 2), (1, 5, 4, 1)])
def test_gradient_matches_autodiff_of_reshape_max(shape):
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    cotangent = jax.random.normal(
        jax.random.PRNGKey(2), (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    )

    def grad(pool):
        return jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * cotangent)))(x)

    got, expected = grad(layers.max_pool_2x2), grad(reference_pool)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    if shape[1] % 2:  # the dropped last row gets no gradient
        assert not np.any(np.asarray(got)[:, -1])
    # each window sends its gradient to exactly one input (random values: no ties)
    assert int(jnp.sum(got != 0)) == cotangent.size


def test_ties_share_the_gradient_like_autodiff():
    x = jnp.array([[1.0, 1.0], [0.5, 1.0]]).reshape(1, 2, 2, 1)  # three-way tie
    x = jnp.concatenate([x, jnp.zeros_like(x)], axis=-1)  # and an all-zero window
    got = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x) * 3.0))(x)
    expected = jax.grad(lambda x: jnp.sum(reference_pool(x) * 3.0))(x)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got[0, :, :, 0], [[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(got[0, :, :, 1], [[0.75, 0.75], [0.75, 0.75]])


def test_convnet_gradient_is_unchanged_by_the_new_pool(monkeypatch):
    """The ConvNet's parameter gradient equals the one through the reshape-and-max pool it
    replaced (the runs quoted in the README were trained with that one)."""
    model = models.ConvNet()
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 28, 28, 1))
    params = model.init(jax.random.PRNGKey(4), x)["params"]

    def loss(params):
        logits = model.apply({"params": params}, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), jnp.arange(4)])

    new = jax.grad(loss)(params)
    traced = []
    monkeypatch.setattr(models, "max_pool_2x2", lambda x: traced.append(x) or reference_pool(x))
    old = jax.grad(loss)(params)
    assert len(traced) == 2  # both pools of the ConvNet went through the reference
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- convolution


def _conv_pair(lhs, rhs, padding):
    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def patched(x, w):
        return layers.conv(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    return xla, patched


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "padding"),
    [
        ((4, 28, 28, 1), (3, 3, 1, 32), "SAME"),  # the ConvNet's first layer
        ((2, 9, 7, 3), (3, 3, 3, 5), "SAME"),
        ((2, 9, 7, 2), (3, 2, 2, 4), "VALID"),
        ((2, 8, 8, 2), (3, 3, 2, 4), ((2, 0), (1, 1))),
        ((2, 14, 14, 32), (3, 3, 32, 8), "SAME"),  # like the second layer: kernel grad by conv
        ((2, 9, 7, 16), (3, 2, 16, 4), ((2, 0), (0, 1))),
    ],
)
def test_written_out_gradients_match_xla(x_shape, w_shape, padding):
    """Forward bit for bit; the input gradient (by taps or by the flipped kernel) and the kernel
    gradient (by the Eigen-layout convolution) equal autodiff's."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(5), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    xla, patched = _conv_pair(x, w, padding)
    np.testing.assert_array_equal(jax.jit(patched)(x, w), jax.jit(xla)(x, w))
    g = jax.random.normal(kg, xla(x, w).shape)

    def grads(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) * g), argnums=(0, 1)))(x, w)

    (dx, dw), (dx_ref, dw_ref) = grads(patched), grads(xla)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


NHWC = ("NHWC", "HWIO", "NHWC")
PASSED_THROUGH = {  # convolutions whose gradients `layers.conv` leaves to XLA: (x, w, arguments)
    "strided": ((2, 8, 8, 16), (3, 3, 16, 4), {"window_strides": (2, 2), "padding": "SAME"}),
    "kernel dilation": ((2, 9, 9, 3), (3, 3, 3, 4), {"padding": "SAME", "rhs_dilation": (2, 2)}),
    "input dilation": (
        (2, 5, 5, 3), (3, 3, 3, 4), {"padding": ((2, 2), (1, 1)), "lhs_dilation": (2, 2)},
    ),
    "groups": ((2, 8, 8, 4), (3, 3, 2, 6), {"padding": "SAME", "feature_group_count": 2}),
    "padding over k-1": ((2, 8, 8, 3), (3, 3, 3, 4), {"padding": ((3, 0), (1, 1))}),
    "NCHW": (
        (2, 3, 8, 8), (4, 3, 3, 3),
        {"padding": "SAME", "dimension_numbers": ("NCHW", "OIHW", "NCHW")},
    ),
    "1-d": ((2, 16, 3), (3, 3, 4), {"padding": "SAME", "dimension_numbers": ("NHC", "HIO", "NHC")}),
    "highest precision": (
        (2, 8, 8, 16), (3, 3, 16, 4),
        {"window_strides": (2, 2), "padding": "VALID", "precision": jax.lax.Precision.HIGHEST},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", PASSED_THROUGH)
def test_other_convolutions_are_passed_to_xla_unchanged(name):
    """The same program as `lax.conv_general_dilated` with the same arguments: one
    `conv_general_dilated` with the given strides, dilations, padding, groups, dimension
    numbers and precision, forward and differentiated alike, so the same values bit for bit."""
    x_shape, w_shape, kwargs = PASSED_THROUGH[name]
    kx, kw = jax.random.split(jax.random.PRNGKey(3))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    kwargs = {"dimension_numbers": NHWC, "window_strides": (1, 1)[: x.ndim - 2], **kwargs}

    def passed(x, w):
        return layers.conv(x, w, **kwargs)

    def lax(x, w):
        return jax.lax.conv_general_dilated(x, w, **kwargs)

    def loss(conv):
        return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))

    forward = jax.make_jaxpr(passed)(x, w)
    assert [e.primitive.name for e in forward.eqns] == ["conv_general_dilated"]
    params = forward.eqns[0].params
    expected = jax.lax.conv_dimension_numbers(x.shape, w.shape, kwargs["dimension_numbers"])
    assert params["dimension_numbers"] == expected
    assert params["feature_group_count"] == kwargs.get("feature_group_count", 1)
    if "precision" in kwargs:
        assert params["precision"] == (kwargs["precision"],) * 2
    assert str(forward) == str(jax.make_jaxpr(lax)(x, w))
    assert str(jax.make_jaxpr(loss(passed))(x, w)) == str(jax.make_jaxpr(loss(lax))(x, w))
    np.testing.assert_array_equal(jax.jit(passed)(x, w), jax.jit(lax)(x, w))
    for got, want in zip(jax.jit(loss(passed))(x, w), jax.jit(loss(lax))(x, w), strict=True):
        np.testing.assert_array_equal(got, want)


def test_written_out_gradients_are_cpu_only():
    """Lowered for a GPU or TPU, both gradients stay XLA's own convolutions (the branch of
    `lax.platform_dependent` for other platforms), without such a device here."""
    x, w = jnp.ones((2, 28, 28, 1)), jnp.ones((3, 3, 1, 32))
    _, patched = _conv_pair(x, w, "SAME")

    def ops(argnum, platform):
        grad = jax.jit(jax.grad(lambda x, w: jnp.sum(patched(x, w) ** 2), argnums=argnum))
        text = jax.export.export(grad, platforms=[platform])(x, w).mlir_module()
        return [text.count(f"stablehlo.{op}") for op in ("convolution", "dot_general", "transpose")]

    assert ops(0, "cpu") == [1, 1, 0]  # input gradient as a product over the taps
    assert ops(1, "cpu") == [2, 0, 3]  # kernel gradient: a convolution in Eigen's layout
    for platform in ("cuda", "tpu"):
        assert ops(0, platform) == ops(1, platform) == [2, 0, 0]  # forward and XLA's gradient


@pytest.mark.perf_canary
def test_canary_every_convolution_of_the_step_in_a_loop_is_in_eigen_layout():
    """Inside a loop (the attack's pool, device-resident chunks) XLA:CPU keeps autodiff's
    transposed layouts (`01oi`, `f01b_i01o`) and runs them on its generic emitter, ~8-25x
    slower; with `layers.conv` every convolution of the ConvNet's training step and of the
    attack's input gradient inside a `fori_loop` is NHWC x HWIO (`b01f_01io->b01f`)."""
    model = models.ConvNet(dropout_rate=0.25)
    x = jnp.ones((4, 28, 28, 1))
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p, x, key):
        return jnp.sum(model.apply({"params": p}, x, train=True, rngs={"dropout": key}) ** 2)

    def train(p):
        def body(i, p):
            g = jax.grad(loss)(p, x, jax.random.fold_in(jax.random.PRNGKey(1), i))
            return jax.tree.map(lambda a, b: a - 0.01 * b, p, g)

        return jax.lax.fori_loop(0, 3, body, p)

    def attack(x):
        def objective(x):
            return jnp.sum(model.apply({"params": params}, x) ** 2)

        return jax.lax.fori_loop(0, 3, lambda i, x: x - 0.01 * jax.grad(objective)(x), x)

    for fn, arg in ((train, params), (attack, x)):
        hlo = jax.jit(fn).lower(arg).compile().as_text()
        labels = re.findall(r"convolution\(.*dim_labels=([^,\s]+)", hlo)
        assert labels and set(labels) == {"b01f_01io->b01f"}, labels


# --------------------------------------------------------------------------- sigmoid


def test_sigmoid_values_are_jax_nn_sigmoid():
    x = jnp.linspace(-100.0, 100.0, 2001, dtype=jnp.float32)
    np.testing.assert_array_equal(layers.sigmoid(x), jax.nn.sigmoid(x))


def test_sigmoid_gradient_is_sigma_minus_sigma_squared_of_the_forward_value():
    x = jnp.linspace(-30.0, 30.0, 601, dtype=jnp.float32)
    y = jax.nn.sigmoid(x)
    grad = jax.vmap(jax.grad(layers.sigmoid))(x)
    np.testing.assert_allclose(grad, y - y * y, rtol=1e-6, atol=0)
    cotangent = jnp.arange(601, dtype=jnp.float32)
    _, vjp = jax.vjp(layers.sigmoid, x)
    np.testing.assert_allclose(vjp(cotangent)[0], cotangent * (y - y * y), rtol=1e-6)


def test_sigmoid_gradient_program_is_the_logistic_and_two_products():
    jaxpr = jax.make_jaxpr(jax.grad(layers.sigmoid))(jnp.float32(1.0)).jaxpr
    primitives = collections.Counter(eqn.primitive.name for eqn in jaxpr.eqns)
    assert primitives == {"logistic": 1, "mul": 2, "sub": 1}
