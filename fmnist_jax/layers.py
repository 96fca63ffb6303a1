"""Layers with hand-written gradients: `max_pool_2x2` and `conv` (backward passes XLA:CPU runs
fast; docs/speed-cpu.md), and `sigmoid`, whose gradient reuses its forward value (exercise 1.2).
"""

import jax
import jax.numpy as jnp


def _upsample(y: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C], each value repeated over its 2x2 window."""
    return jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)


def _corners(x: jax.Array) -> list[jax.Array]:
    """The four [B, H, W, C] strided views of [B, 2H, 2W, C]: each window's four inputs."""
    return [x[:, i::2, j::2, :] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def _pool_even(x: jax.Array) -> jax.Array:
    a, b, c, d = _corners(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _pool_even_fwd(x: jax.Array):
    y = _pool_even(x)
    return y, (x, y)


def _pool_even_bwd(residuals, g: jax.Array):
    x, y = residuals
    ties = sum((corner == y).astype(g.dtype) for corner in _corners(x))
    return (jnp.where(x == _upsample(y), _upsample(g / ties), jnp.zeros_like(x)),)


_pool_even.defvjp(_pool_even_fwd, _pool_even_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """`nn.max_pool(x, (2, 2), strides=(2, 2))` (NHWC, VALID); the gradient goes to the inputs
    equal to the window's maximum, split equally among ties."""
    _, h, w, _ = x.shape
    return _pool_even(x[:, : h - h % 2, : w - w % 2, :])


NHWC = ("NHWC", "HWIO", "NHWC")


def _kernel_grad_by_conv(x, g, padding, precision=None):
    """d(loss)/d(kernel) of a stride-1 NHWC/HWIO convolution, as a convolution in Eigen's layout:
    the input's channels as the batch ([Cin, H, W, B]), the output gradient as the kernel."""
    dw = jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1), padding,
        dimension_numbers=NHWC, precision=precision,
    )  # fmt: skip
    return jnp.transpose(dw, (1, 2, 0, 3)).astype(g.dtype)


def _input_grad(g, w, padding, precision=None):
    """d(loss)/d(input) of a stride-1 NHWC/HWIO convolution: the output gradient convolved with
    the kernel flipped in space, in/out swapped (HWIO), padded by k - 1 - p on each side."""
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:2], padding, strict=True)]
    kernel = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    return jax.lax.conv_general_dilated(g, kernel, (1, 1), pads, dimension_numbers=NHWC,
                                        precision=precision)  # fmt: skip


def _input_grad_by_taps(g, w, padding, input_shape):
    """`_input_grad` for few input channels: one product of each output position's gradient
    with every tap ([B*Ho*Wo, Cout] x [Cout, kh*kw*Cin]), each tap added back where it read."""
    kh, kw, cin, cout = w.shape
    b, ho, wo, _ = g.shape
    taps = jax.lax.dot_general(
        g.reshape(b * ho * wo, cout), w.reshape(kh * kw * cin, cout), (((1,), (1,)), ((), ()))
    ).reshape(b, ho, wo, kh * kw, cin)
    padded = sum(
        jnp.pad(taps[:, :, :, i * kw + j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
        for i in range(kh)
        for j in range(kw)
    )
    (top, _), (left, _) = padding
    return padded[:, top : top + input_shape[1], left : left + input_shape[2], :].astype(g.dtype)


FEW_COLUMNS = 64  # kh*kw*Cin up to this: the input gradient by taps (`_input_grad_by_taps`)


def _gradients_apply(lhs, rhs, window_strides, padding, dilations, dimension_numbers, groups):
    """Whether `conv` writes this convolution's gradients out: NHWC/HWIO, stride 1, no
    dilation, one feature group, padding within 0..k-1 on each side."""
    ones = (1,) * (lhs.ndim - 2)
    if lhs.ndim != 4:
        return False
    layout = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or NHWC)
    return (
        layout == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        and tuple(window_strides) == ones
        and groups == 1
        and all(d is None or tuple(d) == ones for d in dilations)
        and all(0 <= p <= k - 1 for k, pair in zip(rhs.shape[:2], padding) for p in pair)
    )


def conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **unused,
):
    """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)` whose CPU gradients
    are written out in the layouts Eigen takes (`_input_grad`, `_input_grad_by_taps`,
    `_kernel_grad_by_conv`): inside a loop XLA:CPU keeps autodiff's layouts and runs them on its
    generic emitter, several times slower. The forward pass, GPU and TPU, and convolutions
    `_gradients_apply` rejects are XLA's own."""
    del unused
    dilations = (lhs_dilation, rhs_dilation)
    ones = (1,) * (lhs.ndim - 2)
    pads = padding  # "SAME"/"VALID" as pairs, as they are for stride 1 without dilation
    if lhs.ndim == rhs.ndim == 4 and isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], ones, padding)
    if isinstance(pads, str) or not _gradients_apply(
        lhs, rhs, window_strides, pads, dilations, dimension_numbers, feature_group_count
    ):
        return jax.lax.conv_general_dilated(  # the caller's padding: lax resolves a string
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, precision=precision,
        )  # fmt: skip
    padding = tuple(tuple(p) for p in pads)
    kh, kw, cin, _ = rhs.shape
    return _conv_with_cpu_gradients(padding, precision, kh * kw * cin <= FEW_COLUMNS)(lhs, rhs)


def _conv_with_cpu_gradients(padding, precision, few_columns: bool):
    """The stride-1 NHWC/HWIO convolution `conv` runs: XLA's forward pass, and on the CPU the
    gradients written out (`platform_dependent`; autodiff's on other platforms)."""
    ones = (1, 1)

    def forward(x, w):
        return jax.lax.conv_general_dilated(
            x, w, ones, padding, dimension_numbers=NHWC, precision=precision
        )

    def xla_input_grad(x, g, w):
        return jax.vjp(lambda x: forward(x, w), x)[1](g)[0]

    def xla_kernel_grad(x, g, w):
        return jax.vjp(lambda w: forward(x, w), w)[1](g)[0]

    def cpu_input_grad(x, g, w):
        if few_columns:
            return _input_grad_by_taps(g, w, padding, x.shape)
        return _input_grad(g, w, padding, precision)

    def cpu_kernel_grad(x, g, w):
        return _kernel_grad_by_conv(x, g, padding, precision)

    @jax.custom_vjp
    def f(x, w):
        return forward(x, w)

    def f_fwd(x, w):
        return forward(x, w), (x, w)

    def f_bwd(residuals, g):
        x, w = residuals
        dx = jax.lax.platform_dependent(x, g, w, cpu=cpu_input_grad, default=xla_input_grad)
        dw = jax.lax.platform_dependent(x, g, w, cpu=cpu_kernel_grad, default=xla_kernel_grad)
        return dx, dw

    f.defvjp(f_fwd, f_bwd)
    return f


@jax.custom_vjp
def sigmoid(x: jax.Array) -> jax.Array:
    """Logistic sigmoid whose gradient comes from its saved output, sigma' = sigma - sigma^2:
    fewer operations than autodiff's, and finite where its chain rule gives NaN (`theory`)."""
    return jax.nn.sigmoid(x)


def _sigmoid_fwd(x: jax.Array):
    y = jax.nn.sigmoid(x)
    return y, y


def _sigmoid_bwd(y: jax.Array, g: jax.Array):
    return (g * (y - y * y),)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)
