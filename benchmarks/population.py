"""What a population member costs against a replica: the MLP experiment's train chunks (batch
64, 250 device-resident steps), ms per step and per member-step, for one seed set of R = 3
replicas, the same with one dropout rate, 5 rates x 3 seeds vmapped and unrolled, and R = 15
plain replicas (synthetic images: the cost does not depend on them).

    python benchmarks/population.py

Each case is compiled and warmed up by one chunk, then timed over two.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package

RATES = "dropout_rate=0,0.1,0.25,0.4,0.5"
CASES = [("", 3, "vmap"), ("dropout_rate=0.25", 3, "vmap"), (RATES, 3, "vmap"),
         (RATES, 3, "unroll"), ("", 15, "vmap")]  # fmt: skip


def time_case(grid: str, num_replicas: int, how: str, chunks: int = 2) -> tuple[float, int]:
    """(seconds a step, members) of the MLP experiment as that population."""
    import jax

    from fmnist_jax import config as config_lib
    from fmnist_jax import data, feeds, train

    c = config_lib.load_experiment("mlp")
    c.num_replicas, c.grid, c.replica_map, c.dataset = num_replicas, grid, how, "synthetic"
    dataset = data.load(c)
    s, state, keys = train.build(c, dataset.train["inputs"].shape[1:])
    feed, acc = feeds.make_feed(s, dataset, c, 0), s.empty_accumulator()
    state, acc = feed.train(state, acc, keys, feed.chunk)  # compiles
    jax.block_until_ready(acc)
    start = time.perf_counter()
    for _ in range(chunks):
        state, acc = feed.train(state, acc, keys, feed.chunk)
    jax.block_until_ready(acc)
    return (time.perf_counter() - start) / (chunks * feed.chunk), s.num_members


def main() -> None:
    print(
        f"{'grid':34s} {'R':>3s} {'map':6s} {'members':>7s} {'ms/step':>8s} {'ms/member-step':>15s}"
    )
    for grid, r, how in CASES:
        seconds, members = time_case(grid, r, how)
        print(
            f"{grid or '-':34s} {r:3d} {how:6s} {members:7d} {seconds * 1e3:8.2f}"
            f" {seconds * 1e3 / members:15.3f}",
            flush=True,
        )


if __name__ == "__main__":
    from fmnist_jax import cli

    cli.run(main)
