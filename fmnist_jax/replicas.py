"""Replicas: models differing only in their seeds, as one program, and statistics over them."""

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np

INTERVAL_LEVEL = 0.95


def replica_seed(seed: int, replica: int) -> int:
    """`seed` for replica 0, else a SeedSequence draw (seed + k would repeat seed s+1's runs)."""
    if replica == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(replica)]).generate_state(1)[0] >> 1)


def seeds(seed: int, num_replicas: int) -> list[int]:
    return [replica_seed(seed, k) for k in range(num_replicas)]


def stack(trees: Sequence):
    """Pytrees of one structure as one with a leading replica axis (static fields: the first's)."""
    leaves = [jax.tree.leaves(t) for t in trees]
    stacked = [np.stack([np.asarray(v) for v in same]) for same in zip(*leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), stacked)


def take(tree, replica: int):
    """Replica `replica` of a pytree with a leading replica axis."""
    return jax.tree.map(lambda v: v[replica], tree)


MAPS = ("auto", "vmap", "unroll")


def choose_map(requested: str, convolutional: bool, platform: str, population: bool) -> str:
    """`config.replica_map`: "auto" unrolls a convolution or a population on a CPU, else vmaps."""
    if requested != "auto":
        return requested
    return "unroll" if platform == "cpu" and (convolutional or population) else "vmap"


def _index(arg, axis, m: int):
    return jax.tree.map(lambda v: jax.lax.index_in_dim(v, m, axis, False), arg)


def _split(v, points: int):
    return v.reshape(points, v.shape[0] // points, *v.shape[1:])


def over_members(
    fn: Callable, num_points: int, num_replicas: int, in_axes, how: str = "vmap", per_seed=()
) -> Callable:
    """`fn` over M = points x R members on `in_axes` (None: shared; `per_seed`: one per seed), as
    M copies ("unroll", and M = 1: the plain program) or one batched program ("vmap")."""
    count = num_points * num_replicas
    member = [a is not None and i not in per_seed for i, a in enumerate(in_axes)]
    if count > 1 and how == "vmap" and num_points == 1:
        return jax.vmap(fn, in_axes=in_axes, spmd_axis_name="replica")
    if count > 1 and how == "vmap":
        inner = jax.vmap(fn, in_axes=in_axes)
        outer_axes = tuple(0 if m else None for m in member)
        outer = jax.vmap(inner, in_axes=outer_axes, spmd_axis_name="replica")

        def mapped(*args):
            args = [
                jax.tree.map(lambda v: _split(v, num_points), a) if m else a
                for a, m in zip(args, member, strict=True)
            ]
            return jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:]), outer(*args))

        return mapped

    def unrolled(*args):
        outs = [
            fn(*(
                a if axis is None else _index(a, axis, m if own else m % num_replicas)
                for a, axis, own in zip(args, in_axes, member, strict=True)
            ))
            for m in range(count)
        ]  # fmt: skip
        if count == 1:  # a reshape: a one-operand stack copies every output, every step
            return jax.tree.map(lambda v: v[None], outs[0])
        return jax.tree.map(lambda *v: jax.numpy.stack(v), *outs)

    return unrolled


def t_quantile(level: float, dof: int) -> float:
    """The two-sided Student-t critical value for `level` with `dof` degrees of freedom."""
    from scipy import stats  # a dependency of jax

    return float(stats.t.ppf(0.5 + level / 2, dof))


def interval(values: Sequence[float], level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """The `level` Student-t interval of the mean of `values` (one value: that value twice)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean
    half = t_quantile(level, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean - half, mean + half


def statistics(values: Sequence[float | None]) -> dict | None:
    """mean, std (ddof 1), 95 % interval, min, max and n of `values`; None if one is missing."""
    if not values or any(v is None for v in values):
        return None
    v = np.asarray(values, np.float64)
    low, high = interval(v)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "interval": [low, high],
        "min": float(v.min()),
        "max": float(v.max()),
        "n": len(v),
    }
