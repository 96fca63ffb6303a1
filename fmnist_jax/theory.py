"""The exercise's section 1, executable: `python -m fmnist_jax.theory` prints the numbers.

1.1 Parameterized ReLU f(o; t) = max{t, o}. Since max{t, o} = relu(o - t) + t, a network with
thresholds computes the same function as a plain-ReLU network whose layer biases are shifted:
b_l <- b_l - t_l, and the next layer absorbs the constant: b_{l+1} <- b_{l+1} + sum_j w_ij t_j.
`fold_thresholds` does this on parameters. It is exact through Dense layers, VALID convolutions,
2x2 max-pooling (max(x + t) = max(x) + t for a per-channel t) and flattening. It is not exact
for a zero-padded SAME convolution after a thresholded layer: the border taps see the padding's 0
where the folded net would need the shift (`same_padding_gap` gives the error exactly); padding
the thresholded activation with t ('SAME_THRESHOLD') restores exactness. With dropout it is exact
at test time only: see `ThresholdMLP`.

1.2 A sigmoid whose backward pass reuses the forward value: sigma'(x) = sigma(x) - sigma(x)^2
(`fmnist_jax.layers.sigmoid`, re-exported here). Its gradient program has 4 equations against
the naive 1 / (1 + exp(-x))'s 10, and it stays finite where the naive chain rule gives NaN
(x < -88.72 in float32); see `sigmoid_tail_gradients` for where each form loses accuracy.
(This module must not import `fmnist_jax.models`, which imports it; both take the pool and the
sigmoid from `fmnist_jax.layers`.)
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from fmnist_jax import cli
from fmnist_jax.layers import max_pool_2x2, sigmoid

# ----------------------------------------------------------------------------------------------
# 1.2 Sigmoid derivative (`sigmoid` itself lives with the other layers, in `fmnist_jax.layers`)


def naive_sigmoid(x: jax.Array) -> jax.Array:
    """1 / (1 + exp(-x)) written out, so that autodiff differentiates every operation."""
    return 1.0 / (1.0 + jnp.exp(-x))


def count_equations(jaxpr: jax.extend.core.Jaxpr) -> int:
    """Number of primitive applications in `jaxpr`.

    An equation that wraps sub-jaxprs (`jit`, `custom_jvp_call`, ...) counts as the equations
    inside it, not as one: wrapping a function in `jax.jit` does not change its count.
    """
    total = 0
    for eqn in jaxpr.eqns:
        inner = [count_equations(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)]
        total += sum(inner) if inner else 1
    return total


def gradient_equation_count(f, x: float = 1.0) -> int:
    """`count_equations` of the jaxpr of `jax.grad(f)` at a float32 scalar (forward included)."""
    return count_equations(jax.make_jaxpr(jax.grad(f))(jnp.float32(x)).jaxpr)


def jaxpr_equation_counts() -> dict[str, int]:
    """Equations in the gradient programs of the naive sigmoid and of the custom-VJP `sigmoid`."""
    return {
        "naive": gradient_equation_count(naive_sigmoid),
        "custom": gradient_equation_count(sigmoid),
    }


def sigmoid_tail_gradients(xs: Sequence[float] = (-1000.0, -100.0, -50.0, 20.0, 1000.0)) -> dict:
    """float32 gradients {x: (naive, custom)} at large |x|.

    The naive chain rule is NaN below x = -88.72 (exp(-x) = inf, and 0 * inf) and 0 below -43.7
    ((1 + e^-x)^-2 underflows); sigma - sigma^2 stays finite, and is 0 only where sigma(x) rounds
    to 1 (x > 16.6) or flushes to 0 (x < -87.3); its absolute error stays under 1.2e-7.
    """
    naive, custom = jax.grad(naive_sigmoid), jax.grad(sigmoid)
    return {x: (float(naive(jnp.float32(x))), float(custom(jnp.float32(x)))) for x in xs}


# ----------------------------------------------------------------------------------------------
# 1.1 Parameterized ReLU: models


class ThresholdReLU(nn.Module):
    """x -> max{t, x} with a learnable threshold per feature (the last axis); t starts at 0.

    Per feature is the general case: one threshold per unit of a Dense layer (a single shared t,
    as in the exercise, is the special case of equal entries) and one per channel of a conv layer
    (a conv bias is per channel, so per-position thresholds would not fold into it).
    """

    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        t = self.param("threshold", nn.initializers.zeros, x.shape[-1:], self.param_dtype)
        return jnp.maximum(t, x)


def _activate(x: jax.Array, thresholded: bool) -> tuple[jax.Array, jax.Array]:
    """ReLU, or max{t, .} by a new ThresholdReLU; returns the output and its floor (0 or t)."""
    if not thresholded:
        return nn.relu(x), jnp.zeros(x.shape[-1:], x.dtype)
    activation = ThresholdReLU()
    y = activation(x)
    return y, activation.variables["params"]["threshold"]


class _MLPBase(nn.Module):
    hidden_sizes: Sequence[int] = (512,)
    num_outputs: int = 10
    dropout_rate: float = 0.0
    thresholded: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for size in self.hidden_sizes:
            x, _ = _activate(nn.Dense(size)(x), self.thresholded)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs)(x)


class ReluMLP(_MLPBase):
    """flatten -> [Dense -> ReLU -> Dropout] per hidden size -> Dense(num_outputs).

    Layers `Dense_0..Dense_n`, the names of `ThresholdMLP`'s, so folded parameters load directly.
    """


class ThresholdMLP(_MLPBase):
    """flatten -> [Dense -> max{t, .} -> Dropout] per hidden size -> Dense(num_outputs).

    One learnable threshold per hidden unit (`ThresholdReLU_i`). `fold_mlp` turns the parameters
    into a `ReluMLP`'s computing the same function, exactly with dropout off (`train=False`).
    With inverted dropout on and the same mask m (rate p), a dropped unit outputs 0 here but 0 + t
    in the shifted view of the ReLU net: the ReLU net's next pre-activation is off by
    sum_j w_ij t_j (1 - m_j / (1 - p)). That error has mean 0 over masks, so the two nets agree in
    expectation only up to the next nonlinearity (logits, if the dropout precedes the output
    layer); a ReLU after it breaks even that. Put differently, training the folded ReLU net with
    dropout trains this net with dropout towards t: kept units t + (h - t) / (1 - p), dropped t.
    """

    thresholded: ClassVar[bool] = True


def _conv3x3(x: jax.Array, features: int, padding: str, floor: jax.Array) -> jax.Array:
    """3x3 conv; 'SAME_THRESHOLD' is SAME with the input padded by `floor` instead of 0."""
    if padding == "SAME_THRESHOLD":
        x = jnp.pad(x - floor, ((0, 0), (1, 1), (1, 1), (0, 0))) + floor
        padding = "VALID"
    return nn.Conv(features, (3, 3), padding=padding)(x)


class _ConvNetBase(nn.Module):
    features: Sequence[int] = (32, 64)
    hidden_size: int = 128
    num_classes: int = 10
    padding: str = "SAME"
    dropout_rate: float = 0.0
    thresholded: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        floor = jnp.zeros((), x.dtype)  # the raw input is not shifted: its padding is 0
        for features in self.features:
            x, floor = _activate(_conv3x3(x, features, self.padding, floor), self.thresholded)
            x = max_pool_2x2(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x, _ = _activate(nn.Dense(self.hidden_size)(x), self.thresholded)
        return nn.Dense(self.num_classes)(x)


class ReluConvNet(_ConvNetBase):
    """[Conv 3x3 -> ReLU -> 2x2 max-pool -> Dropout] x2 -> flatten -> Dense -> ReLU -> Dense.

    With the defaults, the layers, names and shapes of `models.ConvNet`. `padding` is 'SAME'
    (zero-padded), 'VALID', or 'SAME_THRESHOLD', which pads with the activation's floor, here 0,
    and so is SAME.
    """


class ThresholdConvNet(_ConvNetBase):
    """`ReluConvNet` with max{t, .} activations: per-channel t after convs, per-unit after Dense.

    `padding`: 'SAME' zero-pads every conv's input; 'VALID' pads nothing; 'SAME_THRESHOLD' pads
    the raw image with 0 and each thresholded activation with its thresholds t. `fold_convnet`
    is exact for 'VALID' and 'SAME_THRESHOLD' (to a SAME `ReluConvNet`), not for 'SAME'. Dropout
    behaves as in `ThresholdMLP`: exact with `train=False`.
    """

    thresholded: ClassVar[bool] = True


# ----------------------------------------------------------------------------------------------
# 1.1 Parameterized ReLU: folding


def _shift_effect(kernel: jax.Array, shift: jax.Array) -> jax.Array:
    """A layer's output change when each input channel c is raised by shift[c], i.e. K^T t.

    The kernel's last two axes are (inputs, outputs). Its leading axes (conv taps), or the
    positions of a flattened NHWC map (inputs = positions * channels, channel fastest), are
    summed: every tap or position sees the same shift.
    """
    kernel = kernel.reshape(-1, shift.shape[0], kernel.shape[-1])
    return jnp.einsum("c,pco->o", shift, kernel)


def fold_thresholds(params: dict, chain: Sequence[tuple[str, str | None]]) -> dict:
    """Plain-ReLU parameters that compute the same function as thresholded `params`.

    `chain` lists the linear layers in order, each with the name of the threshold module after
    it (or None). max{t, o} = relu(o - t) + t, so each layer's bias loses t and the next layer's
    bias gains the constant's effect, sum_j w_ij t_j (summed over taps and positions too).
    """
    folded, shift = {}, None
    for layer, threshold in chain:
        kernel, bias = params[layer]["kernel"], params[layer]["bias"]
        if shift is not None:
            bias = bias + _shift_effect(kernel, shift)
        shift = None if threshold is None else params[threshold]["threshold"]
        if shift is not None:
            bias = bias - shift
        folded[layer] = {"kernel": kernel, "bias": bias}
    return folded


def _count(params: dict, prefix: str) -> int:
    return sum(name.startswith(prefix) for name in params)


def fold_mlp(params: dict) -> dict:
    """`ThresholdMLP` parameters -> `ReluMLP` parameters of the same function."""
    n = _count(params, "ThresholdReLU_")
    chain = [(f"Dense_{i}", f"ThresholdReLU_{i}") for i in range(n)] + [(f"Dense_{n}", None)]
    return fold_thresholds(params, chain)


def fold_convnet(params: dict) -> dict:
    """`ThresholdConvNet` parameters -> `ReluConvNet` parameters (exact unless SAME-padded)."""
    n = _count(params, "Conv_")
    chain = [(f"Conv_{i}", f"ThresholdReLU_{i}") for i in range(n)]
    chain += [("Dense_0", f"ThresholdReLU_{n}"), ("Dense_1", None)]
    return fold_thresholds(params, chain)


def same_padding_gap(kernel: jax.Array, shift: jax.Array, height: int, width: int) -> jax.Array:
    """The error folding makes at a zero-padded SAME 3x3 conv whose input was shifted by `shift`.

    The folded net zero-pads relu(o - t), which is the thresholded activation padded with t, not
    0; output pixels whose window reaches into the padding gain K^T t over those taps. Returns the
    (height, width, out) error of the folded pre-activation (plus its own shift): 0 inside.
    """
    inside = jnp.zeros((1, height, width, shift.shape[0]), kernel.dtype)
    ring = jnp.pad(inside - shift, ((0, 0), (1, 1), (1, 1), (0, 0))) + shift  # t outside, 0 in
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(ring, kernel, (1, 1), "VALID", dimension_numbers=dims)[0]


# ----------------------------------------------------------------------------------------------
# Random networks and the closing note's numbers


def _draw_leaf(name: str, shape: tuple, rng: np.random.Generator, threshold_scale: float):
    scale = {
        "kernel": 1.0 / math.sqrt(math.prod(shape[:-1])),
        "bias": 0.5,
        "threshold": threshold_scale,
    }[name]
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.result_type(float))


def random_params(model: nn.Module, x: jax.Array, seed: int, threshold_scale=1.0) -> dict:
    """`model`'s parameters drawn at random in the default float dtype (float64 under x64).

    Kernels N(0, 1/fan_in), biases N(0, 0.25), thresholds N(0, threshold_scale^2), so units are
    active, inactive and (for large thresholds) pinned to t or fully linear. Drawn by NumPy from
    `seed` on shapes from `jax.eval_shape`: nothing is compiled.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    drawn = [_draw_leaf(path[-1].key, leaf.shape, rng, threshold_scale) for path, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, drawn)


def random_inputs(shape: Sequence[int], seed: int) -> jax.Array:
    """Standard normal inputs of `shape` in the default float dtype, drawn by NumPy."""
    rng = np.random.default_rng([seed, 1])
    return jnp.asarray(rng.standard_normal(tuple(shape)), jnp.result_type(float))


def fold_difference(
    threshold_model, relu_model, fold, x_shape: Sequence[int], seed: int = 0, threshold_scale=1.0
) -> float:
    """max |output difference| between a random thresholded net and its folded ReLU net."""
    x = random_inputs(x_shape, seed)
    params = random_params(threshold_model, x, seed, threshold_scale)
    y = threshold_model.apply({"params": params}, x)
    return float(jnp.max(jnp.abs(y - relu_model.apply({"params": fold(params)}, x))))


def conv1_gap(threshold_model, relu_model, fold, x_shape: Sequence[int], seed: int = 0):
    """Measured error of the folded net's second conv, and `same_padding_gap`'s prediction.

    The error is the folded Conv_1 pre-activation plus its threshold t_1 minus the thresholded
    net's Conv_1 pre-activation, per example: (batch, height, width, channels).
    """
    x = random_inputs(x_shape, seed)
    params = random_params(threshold_model, x, seed)
    _, z = threshold_model.apply({"params": params}, x, capture_intermediates=True)
    _, z_folded = relu_model.apply({"params": fold(params)}, x, capture_intermediates=True)
    z, z_folded = (v["intermediates"]["Conv_1"]["__call__"][0] for v in (z, z_folded))
    gap = z_folded + params["ThresholdReLU_1"]["threshold"] - z
    kernel, t0 = params["Conv_1"]["kernel"], params["ThresholdReLU_0"]["threshold"]
    return gap, same_padding_gap(kernel, t0, *gap.shape[1:3])


COUNTEREXAMPLE = "ConvNet, SAME, padded with 0"


def fold_cases() -> dict[str, tuple]:
    """The report's cases: name -> (thresholded model, ReLU model, fold, input shape).

    Small nets with dropout layers (rate 0.25, off: `train=False`); all exact but COUNTEREXAMPLE.
    Images are 11x11, so VALID maps are 9 -> pool 4 -> 2 -> pool 1: the pools drop odd edges.
    """
    small = {"features": (4, 6), "hidden_size": 8, "num_classes": 4, "dropout_rate": 0.25}
    mlp = {"hidden_sizes": (16, 16, 16), "num_outputs": 4, "dropout_rate": 0.25}

    def convnets(padding: str, relu_padding: str) -> tuple:
        thresholded = ThresholdConvNet(padding=padding, **small)
        return thresholded, ReluConvNet(padding=relu_padding, **small), fold_convnet, (3, 11, 11, 1)

    return {
        "MLP, 3 hidden layers": (ThresholdMLP(**mlp), ReluMLP(**mlp), fold_mlp, (3, 20)),
        "ConvNet, VALID": convnets("VALID", "VALID"),
        "ConvNet, SAME, padded with t": convnets("SAME_THRESHOLD", "SAME"),
        COUNTEREXAMPLE: convnets("SAME", "SAME"),
    }


def _border_and_interior(gap: jax.Array) -> dict[str, float]:
    return {
        "interior": float(jnp.max(jnp.abs(gap[:, 1:-1, 1:-1]))),
        "border": float(jnp.max(jnp.abs(gap.at[:, 1:-1, 1:-1].set(0.0)))),
    }


def fold_report(seed: int = 0) -> dict:
    """The closing note's numbers, folding in float64; the jaxpr counts are for float32.

    Returns the two jaxpr equation counts, max |logit difference| per folding case, the largest
    over the exact cases, the SAME zero-padding counterexample's and its second conv's largest
    error inside and on the border, and the float32 sigmoid gradients at large |x|.
    """
    with jax.enable_x64(True):
        diffs = {name: fold_difference(*case, seed=seed) for name, case in fold_cases().items()}
        measured, predicted = conv1_gap(*fold_cases()[COUNTEREXAMPLE], seed=seed)
        gap = _border_and_interior(measured)
        prediction_error = float(jnp.max(jnp.abs(measured - predicted)))
    return {
        "jaxpr_equations": jaxpr_equation_counts(),
        "fold_differences": diffs,
        "max_difference_exact": max(v for k, v in diffs.items() if k != COUNTEREXAMPLE),
        "max_difference_same_zero_padding": diffs[COUNTEREXAMPLE],
        "same_padding_conv1_gap": gap,
        "same_padding_prediction_error": prediction_error,
        "sigmoid_tail_gradients": {str(x): v for x, v in sigmoid_tail_gradients().items()},
    }


def format_report(report: dict) -> str:
    """`fold_report`'s numbers as a plain-text table."""
    counts = report["jaxpr_equations"]
    lines = ["1.2 sigmoid gradient: equations in the jaxpr of jax.grad (forward included)"]
    lines += [f"  {'naive 1/(1+exp(-x))':44s} {counts['naive']:>10d}"]
    lines += [f"  {'custom_vjp, sigma - sigma^2':44s} {counts['custom']:>10d}"]
    lines += [f"{'1.2 float32 gradient at large |x|':46s} {'naive':>10s} {'custom':>10s}"]
    for x, (naive, custom) in report["sigmoid_tail_gradients"].items():
        lines += [f"  x = {float(x):<40g} {naive:>10g} {custom:>10g}"]
    lines += ["1.1 folding max{t, .} into ReLU: max |logit difference| (float64, dropout off)"]
    for name, diff in report["fold_differences"].items():
        lines += [f"  {name:44s} {diff:>10.3g}"]
    lines += [f"  {'largest over the exact cases':44s} {report['max_difference_exact']:>10.3g}"]
    lines += ["1.1 SAME padded with 0: max |error| of the folded second conv's pre-activation"]
    for where, value in report["same_padding_conv1_gap"].items():
        lines += [f"  {where:44s} {value:>10.3g}"]
    error = report["same_padding_prediction_error"]
    lines += [f"  {'|measured - same_padding_gap prediction|':44s} {error:>10.3g}"]
    return "\n".join(lines)


def main() -> None:
    """Prints `fold_report()` as a table and, with --out, writes it as JSON (what REPORT.md's
    theory section reads)."""
    from absl import flags

    from fmnist_jax import rundir

    report = fold_report()
    print(format_report(report))
    out = flags.FLAGS.out
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json(out, report)
        print(f"wrote {out}")


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("out", "", "Also write the numbers as JSON here (runs/theory.json).")
    cli.run(main)
