"""Layer functions shared by `models` and `theory`, written for fast gradients on XLA:CPU.

`max_pool_2x2` computes the same values as `nn.max_pool(x, (2, 2), strides=(2, 2))` and the
same gradient as differentiating a reshape-and-max: each window's output gradient goes to the
inputs equal to the window's maximum, split equally among ties (a ReLU before the pool makes
ties outside zero windows rare; inside them the ReLU's gradient is zero anyway).

Why it has its own gradient: JAX differentiates the windowed `max_pool` through
select-and-scatter and a reshape-and-max through a broadcast compare over a 6-d view, and XLA:CPU
runs both backward passes several times slower than one elementwise compare-and-select on the
unpooled tensor (benchmarks/README.md: the ConvNet's whole step 1.15x faster).
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
