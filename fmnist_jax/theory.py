"""The exercise's section 1, executable: `python -m fmnist_jax.theory` prints the numbers.

1.1 how exactly thresholded networks fold into plain-ReLU ones (`fmnist_jax.folding`), on random
networks in float64; 1.2 the gradient programs of the naive sigmoid and of `layers.sigmoid`.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from absl import flags

from fmnist_jax import cli, folding
from fmnist_jax.layers import sigmoid


def naive_sigmoid(x: jax.Array) -> jax.Array:
    """1 / (1 + exp(-x)) written out, so that autodiff differentiates every operation."""
    return 1.0 / (1.0 + jnp.exp(-x))


def count_equations(jaxpr: jax.extend.core.Jaxpr) -> int:
    """Number of primitive applications in `jaxpr`, counting inside sub-jaxprs (`jit`,
    `custom_jvp_call`, ...) rather than the wrapper itself."""
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
    """float32 gradients {x: (naive, custom)} at large |x|: the naive chain rule turns NaN
    (0 * inf) where exp(-x) overflows; sigma - sigma^2 stays finite."""
    naive, custom = jax.grad(naive_sigmoid), jax.grad(sigmoid)
    return {x: (float(naive(jnp.float32(x))), float(custom(jnp.float32(x)))) for x in xs}


def _draw_leaf(name: str, shape: tuple, rng: np.random.Generator, threshold_scale: float):
    scale = {
        "kernel": 1.0 / math.sqrt(math.prod(shape[:-1])),
        "bias": 0.5,
        "threshold": threshold_scale,
    }[name]
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.result_type(float))


def random_params(model: nn.Module, x: jax.Array, seed: int, threshold_scale=1.0) -> dict:
    """`model`'s parameters drawn by NumPy in the default float dtype (float64 under x64):
    kernels N(0, 1/fan_in), biases N(0, 0.25), thresholds N(0, threshold_scale^2)."""
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
    """Measured error of the folded net's Conv_1 pre-activation (plus t_1; [B, H, W, C]) against
    the thresholded net's, and `same_padding_gap`'s prediction of it."""
    x = random_inputs(x_shape, seed)
    params = random_params(threshold_model, x, seed)
    _, z = threshold_model.apply({"params": params}, x, capture_intermediates=True)
    _, z_folded = relu_model.apply({"params": fold(params)}, x, capture_intermediates=True)
    z, z_folded = (v["intermediates"]["Conv_1"]["__call__"][0] for v in (z, z_folded))
    gap = z_folded + params["ThresholdReLU_1"]["threshold"] - z
    kernel, t0 = params["Conv_1"]["kernel"], params["ThresholdReLU_0"]["threshold"]
    return gap, folding.same_padding_gap(kernel, t0, *gap.shape[1:3])


COUNTEREXAMPLE = "ConvNet, SAME, padded with 0"


def fold_cases() -> dict[str, tuple]:
    """The report's cases: name -> (thresholded model, ReLU model, fold, input shape); small nets
    with dropout off, all exact but COUNTEREXAMPLE; 11x11 images, so the pools drop odd edges."""
    small = {"features": (4, 6), "hidden_size": 8, "num_classes": 4, "dropout_rate": 0.25}
    mlp = {"hidden_sizes": (16, 16, 16), "num_outputs": 4, "dropout_rate": 0.25}

    def convnets(padding: str, relu_padding: str) -> tuple:
        thresholded = folding.ThresholdConvNet(padding=padding, **small)
        relu = folding.ReluConvNet(padding=relu_padding, **small)
        return thresholded, relu, folding.fold_convnet, (3, 11, 11, 1)

    mlps = folding.ThresholdMLP(**mlp), folding.ReluMLP(**mlp), folding.fold_mlp, (3, 20)
    return {
        "MLP, 3 hidden layers": mlps,
        "ConvNet, VALID": convnets("VALID", "VALID"),
        "ConvNet, SAME, padded with t": convnets("SAME_THRESHOLD", "SAME"),
        COUNTEREXAMPLE: convnets("SAME", "SAME"),
    }


def fold_report(seed: int = 0) -> dict:
    """Section 1's numbers: jaxpr equation counts and tail gradients (float32), max |logit
    difference| per folding case and the SAME counterexample's error (float64)."""
    with jax.enable_x64(True):
        diffs = {name: fold_difference(*case, seed=seed) for name, case in fold_cases().items()}
        measured, predicted = conv1_gap(*fold_cases()[COUNTEREXAMPLE], seed=seed)
        gap = {
            "interior": float(jnp.max(jnp.abs(measured[:, 1:-1, 1:-1]))),
            "border": float(jnp.max(jnp.abs(measured.at[:, 1:-1, 1:-1].set(0.0)))),
        }
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
    from fmnist_jax import rundir

    report = fold_report()
    print(format_report(report))
    out = flags.FLAGS.out
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json(out, report)
        print(f"wrote {out}")


def define_flags() -> None:
    flags.DEFINE_string("out", "", "Also write the numbers as JSON here (runs/theory.json).")


if __name__ == "__main__":
    cli.run(main, define_flags)
