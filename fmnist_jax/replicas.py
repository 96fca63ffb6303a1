"""Replicas: R models that differ only in their seeds, trained as one program.

`config.num_replicas` = R. Replica k's seed is `replica_seed(config.seed, k)` (replica 0 keeps
the config's seed, so it is the plain run), and everything random in its training (initial
weights, data order, dropout keys) comes from that seed as it would for a plain run. The train
state carries a leading member axis; `over_members` maps a step over it, and for one member
runs the plain step, so that one member is the plain program, bit for bit.

Statistics over replicas (`statistics`: mean, standard deviation, a 95 % Student-t interval of
the mean) are what summary.json and REPORT.md quote.
"""

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np

INTERVAL_LEVEL = 0.95


def replica_seed(seed: int, replica: int) -> int:
    """Replica `replica`'s seed: `seed` for replica 0, for the others a 31-bit integer drawn
    from (seed, replica) by numpy's SeedSequence (distinct, reproducible, never seed + k,
    which would make replica k of seed s replica k-1 of seed s+1)."""
    if replica == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(replica)]).generate_state(1)[0] >> 1)


def seeds(seed: int, num_replicas: int) -> list[int]:
    return [replica_seed(seed, k) for k in range(num_replicas)]


def stack(trees: Sequence):
    """Pytrees of equal leaves' structure as one pytree with a leading replica axis; static
    fields (a TrainState's apply_fn and tx) are the first tree's."""
    leaves = [jax.tree.leaves(t) for t in trees]
    stacked = [np.stack([np.asarray(v) for v in same]) for same in zip(*leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), stacked)


def take(tree, replica: int):
    """Replica `replica` of a pytree with a leading replica axis."""
    return jax.tree.map(lambda v: v[replica], tree)


MAPS = ("auto", "vmap", "unroll")


def choose_map(requested: str, convolutional: bool, platform: str, population: bool) -> str:
    """`config.replica_map`: "auto" unrolls on a CPU a program with a convolution (XLA:CPU runs
    a vmapped convolution with per-member kernels as a slow grouped convolution) and any
    population (a vmap over grid points moves every member's weights into one wide product),
    and vmaps everything else (benchmarks/README.md has the measurements)."""
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
    """`fn` mapped over M = `num_points` x `num_replicas` members, member m = point x R + k:
    the arguments `in_axes` marks (0 or 1: that axis; None: shared) carry a leading member
    axis, except those numbered in `per_seed` (the batch), whose axis holds one entry per
    seed, member m taking entry k. Outputs get a leading member axis.

    "unroll" (and any M = 1, so that one member runs exactly the plain program): M copies of
    `fn`, each on its member's slices. "vmap": one batched program, sharded over the mesh axis
    `replica`; a population vmaps over seeds inside a vmap over points whose per-seed
    arguments are unbatched, so that points share one batch."""
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
    """The `level` Student-t confidence interval of the mean of `values` (one value: that
    value at both ends, there being no spread to estimate)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean
    half = t_quantile(level, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean - half, mean + half


def statistics(values: Sequence[float | None]) -> dict | None:
    """mean, std (sample, ddof 1; 0 for one value), 95 % interval of the mean, min, max and n
    of `values`; None when a value is missing (a field a model does not have)."""
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
