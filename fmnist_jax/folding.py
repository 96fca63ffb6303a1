"""The exercise's 1.1, the parameterized ReLU max{t, o}: thresholded networks, folded into
plain-ReLU networks of the same function (`fmnist_jax.theory` measures it).

max{t, o} = relu(o - t) + t, so each layer's bias loses t and the next one's gains
sum_j w_ij t_j (`fold_thresholds`). Exact through Dense, VALID convolutions, 2x2 max-pooling
and flattening; not through a zero-padded SAME convolution after a thresholded layer, whose
border sees 0 where t is needed (`same_padding_gap`), unless padded with t ('SAME_THRESHOLD').
With dropout, exact at test time only (`ThresholdMLP`).
"""

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.layers import max_pool_2x2


class ThresholdReLU(nn.Module):
    """x -> max{t, x} with a learnable threshold per feature (last axis), starting at 0: per unit
    of a Dense layer, per channel of a conv (as its bias is); the exercise's shared t is a case."""

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
    """flatten -> [Dense -> ReLU -> Dropout] per hidden size -> Dense(num_outputs); its layer
    names are `ThresholdMLP`'s, so folded parameters load directly."""


class ThresholdMLP(_MLPBase):
    """flatten -> [Dense -> max{t, .} -> Dropout] per hidden size -> Dense(num_outputs).

    `fold_mlp` gives a `ReluMLP` of the same function with dropout off. With dropout on (mask m,
    rate p) a dropped unit is 0 here but t in the folded net, whose next pre-activation is off by
    sum_j w_ij t_j (1 - m_j / (1 - p)): zero in expectation, up to the next nonlinearity only.
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
    """[Conv 3x3 -> ReLU -> 2x2 max-pool -> Dropout] x2 -> flatten -> Dense -> ReLU -> Dense:
    `models.ConvNet`'s layers and names; `padding` 'SAME', 'VALID' or 'SAME_THRESHOLD' (= SAME)."""


class ThresholdConvNet(_ConvNetBase):
    """`ReluConvNet` with max{t, .} activations; 'SAME_THRESHOLD' pads each thresholded
    activation with its t, and `fold_convnet` is exact for it and 'VALID', not 'SAME'."""

    thresholded: ClassVar[bool] = True


def _shift_effect(kernel: jax.Array, shift: jax.Array) -> jax.Array:
    """A layer's output change, K^T t, when each input channel c rises by shift[c]; summed over
    conv taps or the positions of a flattened NHWC map (channel fastest)."""
    kernel = kernel.reshape(-1, shift.shape[0], kernel.shape[-1])
    return jnp.einsum("c,pco->o", shift, kernel)


def fold_thresholds(params: dict, chain: Sequence[tuple[str, str | None]]) -> dict:
    """Plain-ReLU parameters computing the same function as thresholded `params`; `chain` lists
    the linear layers in order, each with the threshold module after it (or None)."""
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
    """The (height, width, out) error folding makes at a zero-padded SAME 3x3 conv whose input
    was shifted by `shift`: K^T t over the taps reaching into the padding, 0 inside."""
    inside = jnp.zeros((1, height, width, shift.shape[0]), kernel.dtype)
    ring = jnp.pad(inside - shift, ((0, 0), (1, 1), (1, 1), (0, 0))) + shift  # t outside, 0 in
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(ring, kernel, (1, 1), "VALID", dimension_numbers=dims)[0]
