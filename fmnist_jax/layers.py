"""Layers with hand-written gradients: `max_pool_2x2` and `conv` (fast backward passes on
XLA:CPU, where JAX's own select-and-scatter and the convolution's gradient are slow: see
docs/speed-cpu.md), and `sigmoid`, whose gradient reuses its forward value (exercise §1.2).

`max_pool_2x2` computes `nn.max_pool(x, (2, 2), strides=(2, 2))`; its gradient goes to the
inputs equal to the window's maximum, split equally among ties.
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
    """2x2 max-pooling with stride 2 (VALID: an odd last row or column is dropped), NHWC."""
    _, h, w, _ = x.shape
    return _pool_even(x[:, : h - h % 2, : w - w % 2, :])


# Convolution with its gradients written out for XLA:CPU

NHWC = ("NHWC", "HWIO", "NHWC")


def _kernel_grad_by_conv(x, g, padding, precision=None):
    """d(loss)/d(kernel) of a stride-1 NHWC/HWIO convolution as a convolution in the layout
    XLA:CPU hands to Eigen: the input's channels as the batch, its batch as the features
    ([Cin, H, W, B]), the output gradient as an HWIO kernel ([Ho, Wo, B, Cout]), each of the
    kh x kw outputs a window over the whole image. Autodiff's kernel gradient (`f01b_i01o`)
    is rewritten into this only outside loops; inside one XLA:CPU runs it on its generic
    emitter (the ConvNet's step inside a `lax.scan` ~25x slower)."""
    dw = jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1), padding,
        dimension_numbers=NHWC, precision=precision,
    )  # fmt: skip
    return jnp.transpose(dw, (1, 2, 0, 3)).astype(g.dtype)


def _input_grad(g, w, padding, precision=None):
    """d(loss)/d(input) of a stride-1 NHWC/HWIO convolution, written out: the output gradient
    convolved with the kernel flipped in space and its in/out axes swapped (HWIO again), padded
    by k - 1 - p on each side (the transposed convolution autodiff builds)."""
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:2], padding, strict=True)]
    kernel = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    return jax.lax.conv_general_dilated(g, kernel, (1, 1), pads, dimension_numbers=NHWC,
                                        precision=precision)  # fmt: skip


def _input_grad_by_taps(g, w, padding, input_shape):
    """`_input_grad` for few input channels as one matrix product: each output position's
    gradient times every tap of the kernel ([B*Ho*Wo, Cout] x [Cout, kh*kw*Cin]), then each
    tap's share added back at the input pixel it read (nine shifted adds on a small array).
    XLA:CPU runs the convolution with one output channel ~3 ms at batch 100, this ~0.5 ms."""
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


# kh*kw*Cin up to this: the input gradient as products over taps (the first layer); above it,
# as a convolution in Eigen's layout.
FEW_COLUMNS = 64


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
    """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`, NHWC input and HWIO
    kernel, whose gradients on the CPU are written out:

    - the input gradient as `_input_grad`, a convolution with the flipped kernel in HWIO order.
      Autodiff's transposed convolution takes the kernel in `01oi` order, which XLA:CPU turns
      into an HWIO copy only outside loops: inside a `lax.while_loop` or `lax.scan` (the
      attack's pooled search, device-resident training chunks) it runs the `01oi` convolution on
      its generic emitter, ~8x slower (conv2's input gradient at batch 100: 20 ms against 2.6).
    - for few input channels (kh*kw*Cin <= FEW_COLUMNS: the ConvNet's first layer, Cin=1)
      the input gradient as products over the nine taps instead (`_input_grad_by_taps`).
    - the kernel gradient as `_kernel_grad_by_conv`, a convolution in the layout Eigen takes
      (autodiff's `f01b_i01o` form is rewritten so only outside loops). The first layer's
      kernel gradient was a product over its nine-column patch matrix until jaxlib 0.12,
      where that is slower inside loops than this convolution (benchmarks/README.md, Round 4).

    The forward pass is XLA's own, and so is everything on GPU and TPU
    (`lax.platform_dependent`). Other strides, dilations, groups or paddings go to
    `lax.conv_general_dilated` unchanged (`_gradients_apply`)."""
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


# Sigmoid with its derivative from the forward value


@jax.custom_vjp
def sigmoid(x: jax.Array) -> jax.Array:
    """Logistic sigmoid whose gradient is computed from its saved output: sigma' = sigma - sigma^2.

    The backward pass is one subtraction and two products on the forward value (4 equations in
    the gradient's jaxpr, forward included, against 10 for autodiff of 1 / (1 + exp(-x))), and
    it stays finite where that chain rule gives NaN (x < -88.72 in float32). The exercise's
    section 1.2; `fmnist_jax.theory` measures both forms, the MLP uses it with
    `activation="sigmoid"`.
    """
    return jax.nn.sigmoid(x)


def _sigmoid_fwd(x: jax.Array):
    y = jax.nn.sigmoid(x)
    return y, y


def _sigmoid_bwd(y: jax.Array, g: jax.Array):
    return (g * (y - y * y),)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)
