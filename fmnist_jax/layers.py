"""Layer functions with hand-written gradients: `max_pool_2x2` (used by `models` and `theory`)
and `conv_patch_kernel_grad` (the ConvNet's first convolution), both for fast gradients on
XLA:CPU, and `sigmoid`, whose gradient reuses its forward value (the exercise's section 1.2).

`max_pool_2x2` computes the same values as `nn.max_pool(x, (2, 2), strides=(2, 2))` and the
same gradient as differentiating a reshape-and-max: each window's output gradient goes to the
inputs equal to the window's maximum, split equally among ties (a ReLU before the pool makes
ties outside zero windows rare; inside them the ReLU's gradient is zero anyway).

Why it has its own gradient: JAX differentiates the windowed `max_pool` through
select-and-scatter and a reshape-and-max through a broadcast compare over a 6-d view, and XLA:CPU
runs both backward passes several times slower than one elementwise compare-and-select on the
unpooled tensor (benchmarks/README.md: the ConvNet's whole step ~1.2x faster, paired).
"""

import jax
import jax.numpy as jnp


def _windows(x: jax.Array) -> jax.Array:
    """[B, 2H, 2W, C] -> [B, H, 2, W, 2, C]: each 2x2 window on axes 2 and 4."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


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


# ----------------------------------------------------------------------------------------------
# Convolution with few input channels


def image_patches(x: jax.Array, kh: int, kw: int, padding) -> jax.Array:
    """[B, Ho, Wo, kh*kw*C]: each stride-1 output position's receptive field in NHWC `x`
    padded by `padding` ((top, bottom), (left, right)), taps in row-major order and channels
    innermost, i.e. the order of an HWIO kernel flattened to [kh*kw*C, O]."""
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    taps = [xp[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)


def _kernel_grad_by_patches(x, g, kernel_shape, padding):
    """d(loss)/d(kernel) of a stride-1 NHWC/HWIO convolution as one matrix product: the
    input's patches ([B*H*W, kh*kw*Cin]) contracted with the output gradient."""
    kh, kw, cin, cout = kernel_shape
    b, ho, wo, _ = g.shape
    patches = image_patches(x, kh, kw, padding).reshape(b * ho * wo, kh * kw * cin)
    dw = jax.lax.dot_general(patches, g.reshape(b * ho * wo, cout), (((0,), (0,)), ((), ())))
    return dw.reshape(kernel_shape).astype(g.dtype)


PATCH_KERNEL_GRAD_MAX_COLUMNS = 64  # kh*kw*Cin above this: XLA's own kernel gradient


def _patch_gradient_applies(lhs, rhs, window_strides, dilations, dimension_numbers, groups):
    """Whether `conv_patch_kernel_grad` computes this convolution's kernel gradient by patches:
    NHWC/HWIO, stride 1, no dilation, one feature group, few patch columns."""
    kh, kw, cin, _ = rhs.shape
    ones = (1,) * (lhs.ndim - 2)
    nhwc = ("NHWC", "HWIO", "NHWC")
    if lhs.ndim != 4:
        return False
    layout = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or nhwc)
    return (
        layout == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, nhwc)
        and tuple(window_strides) == ones
        and groups == 1
        and all(d is None or tuple(d) == ones for d in dilations)
        and kh * kw * cin <= PATCH_KERNEL_GRAD_MAX_COLUMNS
    )


def conv_patch_kernel_grad(
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
    kernel, whose kernel gradient on the CPU is `_kernel_grad_by_patches`.

    For a layer with few input channels (the ConvNet's first, Cin=1), XLA:CPU computes the
    kernel gradient as a convolution with an image-sized window, after transposing input and
    output gradient (~4.5 ms of the step at batch 128); one product over the nine-column patch
    matrix is ~2x cheaper (whole step ~1.05x). Forward pass and input gradient are XLA's own,
    and so is everything on GPU and TPU (`lax.platform_dependent`). Other strides, dilations
    or groups go to `lax.conv_general_dilated` unchanged (`_patch_gradient_applies`)."""
    del unused
    kh, kw, _, _ = rhs.shape
    ones = (1,) * (lhs.ndim - 2)
    nhwc = ("NHWC", "HWIO", "NHWC")
    dilations = (lhs_dilation, rhs_dilation)
    if not _patch_gradient_applies(lhs, rhs, window_strides, dilations, dimension_numbers,
                                   feature_group_count):  # fmt: skip
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, precision=precision,
        )  # fmt: skip
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), ones, padding)
    padding = tuple(tuple(p) for p in padding)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, ones, padding, dimension_numbers=nhwc, precision=precision
        )

    @jax.custom_vjp
    def f(x, w):
        return conv(x, w)

    def f_fwd(x, w):
        return conv(x, w), (x, w)

    def f_bwd(residuals, g):
        x, w = residuals
        dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
        dw = jax.lax.platform_dependent(
            x, g, w,
            cpu=lambda x, g, w: _kernel_grad_by_patches(x, g, w.shape, padding),
            default=lambda x, g, w: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
        )  # fmt: skip
        return dx, dw

    f.defvjp(f_fwd, f_bwd)
    return f(lhs, rhs)


# ----------------------------------------------------------------------------------------------
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
