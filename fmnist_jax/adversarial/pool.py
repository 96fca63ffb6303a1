"""The pooled batch program: `pool_size` per-image searches in flight in one `lax.while_loop`,
a finished slot loading the next image, so each image gets exactly its own search's steps and
none waits for the longest; `over_devices` runs one pool on each device. Pure JAX."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec


class Search(NamedTuple):
    """One image's search as functions the pool vmaps over its slots: `start(x, t)` and
    `advance(state, x, t)` give the next point (no model call); `finish(pre, x, t)`, on every
    slot at once ([slots] leaves), evaluates it with one model call (faster than a vmapped one);
    `running(state)` and `output(state)`: whether the search goes on, what it leaves."""

    start: Callable
    advance: Callable
    finish: Callable
    running: Callable
    output: Callable


class Pool(NamedTuple):
    """The loop carry: each slot's search and image (N when idle), the next image to load, and
    the outputs of the searches that ended ([N] leaves)."""

    state: Any
    slot: jax.Array
    next: jax.Array
    out: Any


def select(mask: jax.Array, a, b):
    """a where mask else b, for pytrees whose leaves have mask's leading axis."""

    def pick(u, v):
        return jnp.where(mask.reshape(mask.shape + (1,) * (jnp.ndim(u) - 1)), u, v)

    return jax.tree.map(pick, a, b)


def _iteration(search: Search, images, targets, pool: Pool) -> Pool:
    """Write out the searches that ended, load new images into their slots, step every slot."""
    n, s = images.shape[0], pool.state
    done = (pool.slot < n) & ~jax.vmap(search.running)(s)
    out_index = jnp.where(done, pool.slot, n)  # index n: dropped
    outputs = jax.vmap(search.output)(s)
    out = jax.tree.map(lambda o, v: o.at[out_index].set(v, mode="drop"), pool.out, outputs)
    slot = jnp.where(done, jnp.minimum(pool.next + jnp.cumsum(done) - 1, n), pool.slot)
    fresh = done & (slot < n)
    x, t = images[jnp.minimum(slot, n - 1)], targets[jnp.minimum(slot, n - 1)]
    pre = select(fresh, jax.vmap(search.start)(x, t), jax.vmap(search.advance)(s, x, t))
    state = search.finish(pre, x, t)
    return Pool(state, slot, pool.next + done.sum(), out)


def run_pool(search: Search, images, targets, pool_size: int):
    """Every image's search in one while loop over `pool_size` slots; `search.output` of each
    image's final state, stacked ([N] leaves)."""
    n = images.shape[0]
    size = min(pool_size, n)
    x, t = images[:size], targets[:size]
    first = search.finish(jax.vmap(search.start)(x, t), x, t)
    template = jax.vmap(search.output)(first)
    out = jax.tree.map(lambda v: jnp.zeros((n, *v.shape[1:]), v.dtype), template)
    start = Pool(first, jnp.arange(size), jnp.asarray(size), out)
    final = jax.lax.while_loop(
        lambda pool: jnp.any(pool.slot < n),
        lambda pool: _iteration(search, images, targets, pool),
        start,
    )
    return final.out


def over_devices(fn: Callable, devices, images, targets, *shared):
    """fn(images, targets, *shared) -> [N] leaves, the images split over `devices` in equal
    shards (the last padded), each with its own while loop (`jax.shard_map`); `shared` whole."""
    d = len(devices)
    if d == 1:
        return fn(images, targets, *shared)
    n = images.shape[0]
    pad = -n % d
    if pad:
        padded = (jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in (images, targets))
        images, targets = padded
    mesh = jax.sharding.Mesh(np.asarray(devices), ("images",))
    split, whole = PartitionSpec("images"), PartitionSpec()
    # No collectives inside; check_vma off, or every pool would cast its unvarying carry by hand.
    sharded = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(split, split) + (whole,) * len(shared),
        out_specs=split,
        check_vma=False,
    )
    return jax.tree.map(lambda v: v[:n], sharded(images, targets, *shared))
