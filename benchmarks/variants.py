"""The ConvNet variants `explore.py` times and `bench.py --prototype` trains: the same network
as `fmnist_jax.models.ConvNet` with another convolution or 2x2 max-pool (no flags, no timing).

Convolutions (`make_convnet(conv=...)`): `project` is the project's ConvNet (`layers.conv`:
its gradients written out), `lax` the same network with XLA's own convolutions, `im2col` a rejected
prototype: the same 3x3 SAME convolution as nine shifted slices concatenated on the channel axis
and one product. Pools: `project` (`layers.max_pool_2x2`), `reshape` (the first round's,
autodiff), `slices` (max of four strided slices, autodiff), `window` (`nn.max_pool`); every
pool comes before the ReLU, as in the project's model, except `after-relu` (the project's pool
after the ReLU, the order before 2026-12-02).
"""

CONVS = ("project", "lax", "im2col")
POOLS = ("project", "reshape", "slices", "window", "after-relu")


def conv_im2col(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **_,
):
    """`lax.conv_general_dilated` for NHWC input and HWIO kernel, stride 1, no dilation, one
    group: patches by shifted slices, then one matrix product. Drop-in for `nn.Conv`'s
    `conv_general_dilated`."""
    import jax.numpy as jnp
    from jax import lax

    ones = (1,) * (lhs.ndim - 2)
    if tuple(window_strides) != ones or feature_group_count != 1:
        raise NotImplementedError("conv_im2col: stride 1, one feature group only")
    for dilation in (lhs_dilation, rhs_dilation):
        if dilation is not None and tuple(dilation) != ones:
            raise NotImplementedError("conv_im2col: no dilation")
    kh, kw, cin, cout = rhs.shape
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1), padding)
    xp = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    patches = jnp.concatenate(
        [xp[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    y = lax.dot_general(
        patches, rhs.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())), precision=precision
    )
    return y


def max_pool_reshape(x):
    """The 2x2 max-pool the project had before `fmnist_jax.layers`: a reshape and a max,
    differentiated by JAX (a broadcast compare over the 6-d view)."""
    import jax.numpy as jnp

    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def max_pool_slices(x):
    """2x2 max-pool, stride 2, as the max of the four strided slices (same values as
    `models.max_pool_2x2`; its backward is selects and pads instead of a reduction's)."""
    import jax.numpy as jnp

    a, b = x[:, 0::2, 0::2, :], x[:, 0::2, 1::2, :]
    c, d = x[:, 1::2, 0::2, :], x[:, 1::2, 1::2, :]
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def make_convnet(conv: str, dropout_rate: float, pool: str = "project"):
    """The project's ConvNet (`project`: both convolutions' gradients written out,
    `layers.conv`), or the same network with XLA's own convolutions (`lax`)
    or `conv_im2col` in both layers, and/or another 2x2 max-pool. (The first round's `hybrid`,
    tap products for both kernel gradients, lost with Eigen convolutions: benchmarks/README.md.)"""
    import flax.linen as nn

    from fmnist_jax import layers, models

    if conv == "project" and pool == "project":
        return models.ConvNet(num_classes=10, dropout_rate=dropout_rate)
    conv_fns = {  # per layer: conv1 (1 input channel), conv2
        "lax": (None, None),
        "im2col": (conv_im2col, conv_im2col),
        "project": (layers.conv, layers.conv),
    }[conv]
    pool_fn = {
        "project": models.max_pool_2x2,
        "reshape": max_pool_reshape,
        "slices": max_pool_slices,
        "window": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
        "after-relu": models.max_pool_2x2,  # ReLU, then the project's pool (before 2026-12-02)
    }[pool]
    relu_first = pool == "after-relu"

    class ConvNetVariant(nn.Module):
        num_classes: int = 10
        dropout_rate: float = 0.0

        @nn.compact
        def __call__(self, x, train: bool = False):
            for features, conv_fn in zip((32, 64), conv_fns, strict=True):
                x = nn.Conv(features, (3, 3), padding="SAME", conv_general_dilated=conv_fn)(x)
                x = pool_fn(nn.relu(x)) if relu_first else nn.relu(pool_fn(x))
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(128)(x))
            return nn.Dense(self.num_classes)(x)

    return ConvNetVariant(dropout_rate=dropout_rate)
