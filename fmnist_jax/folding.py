"""The exercise's 1.1, the parameterized ReLU f(o; t) = max{t, o}: thresholded networks and
their folding into plain-ReLU networks that compute the same function.

Since max{t, o} = relu(o - t) + t, a network with thresholds computes the same function as a
plain-ReLU network whose layer biases are shifted: b_l <- b_l - t_l, and the next layer absorbs
the constant: b_{l+1} <- b_{l+1} + sum_j w_ij t_j. `fold_thresholds` does this on parameters.
`fmnist_jax.theory` measures it (`python -m fmnist_jax.theory`).
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.layers import max_pool_2x2

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
