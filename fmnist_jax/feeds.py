"""The loop's batches: built on the host per step, or on the device per chunk (docs/data.md)."""

import jax
import numpy as np

from fmnist_jax import data as data_lib
from fmnist_jax import replicas
from fmnist_jax import steps as steps_lib


def _stacked(batches: list[dict]) -> dict:
    """One batch per replica as arrays with a leading replica axis (one: a free view)."""
    if len(batches) == 1:
        return {k: v[None] for k, v in batches[0].items()}
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class HostFeed:
    """Batches built on the host, one jitted step each."""

    chunk = 1

    def __init__(self, steps: steps_lib.Steps, dataset, config, start_step: int):
        self.steps, self.batch_size = steps, config.batch_size
        self.test, self.eval_batch_size = dataset.test, config.eval_batch_size
        rows = steps.rows(config.batch_size)
        self.batches = [
            data_lib.train_batches(dataset.train, config.batch_size, seed, start_step, rows)
            for seed in replicas.seeds(config.seed, steps.num_replicas)
        ]

    def train(self, state, acc, dropout_rng, count: int):
        for _ in range(count):
            batch = _stacked([next(b) for b in self.batches])
            state, acc = self.steps.train(
                state, self.steps.batch(batch, self.batch_size), dropout_rng, acc
            )
        return state, acc

    def evaluate(self, state) -> list[dict[str, float]]:
        return steps_lib.evaluate(self.steps, state, self.test, self.eval_batch_size)


class DeviceFeed:
    """Both splits on the device; `chunk` steps as one scan."""

    def __init__(self, steps: steps_lib.Steps, dataset, config, start_step: int, chunk: int):
        self.steps, self.chunk = steps, chunk

        def put(split):
            return tuple(jax.device_put(split[k], steps.replicated) for k in ("inputs", "targets"))

        self.train_split, self.test_split = put(dataset.train), put(dataset.test)
        n = len(dataset.train["targets"])
        self.indices = [
            data_lib.train_indices(n, config.batch_size, seed, start_step)
            for seed in replicas.seeds(config.seed, steps.num_replicas)
        ]
        batches = data_lib.epoch_indices(
            len(dataset.test["targets"]), config.eval_batch_size, remainder="pad"
        )
        idx, mask = zip(*batches, strict=True)
        self.eval_idx, self.eval_mask = np.stack(idx).astype(np.int32), np.stack(mask)

    def train(self, state, acc, dropout_rng, count: int):
        # [count, replicas, batch]: step k of replica r gathers the examples idx[k, r].
        idx = np.stack([np.stack([next(i) for i in self.indices]) for _ in range(count)]).astype(
            np.int32
        )
        return self.steps.train_chunk(state, acc, idx, *self.train_split, dropout_rng)

    def evaluate(self, state) -> list[dict[str, float]]:
        total = self.steps.evaluate_resident(state, self.eval_idx, self.eval_mask, *self.test_split)
        return steps_lib.per_replica(total)


def chunk_size(requested: int, eval_every: int) -> int:
    """The largest divisor of `eval_every` up to `requested`: one chunk length, one compilation."""
    return max(d for d in range(1, max(requested, 1) + 1) if eval_every % d == 0)


def make_feed(steps: steps_lib.Steps, dataset, config, start_step: int):
    """A DeviceFeed for chunks of steps, unless several processes or a profile want each step."""
    chunk = chunk_size(config.get("steps_per_chunk", 1), config.eval_every_steps)
    if chunk > 1 and not steps.multi_process and not config.get("profile_steps", 0):
        return DeviceFeed(steps, dataset, config, start_step, chunk)
    return HostFeed(steps, dataset, config, start_step)


def chunk_ends(start: int, num_steps: int, chunk: int, eval_every: int):
    """The steps after which the loop looks up: chunk ends, never past an evaluation."""
    step = start
    while step < num_steps:
        boundary = min((step // eval_every + 1) * eval_every, num_steps)
        step = min(step + chunk, boundary)
        yield step
