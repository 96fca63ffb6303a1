"""What replicas cost: training images per second per replica at R = 1, 3, 5, paired.

    python benchmarks/replicas.py [--models mlp,cnn] [--replicas 1,3,5] [--rounds 3]

Each model trains at its experiment's batch size (64) through the project's own loop path:
`feeds.make_feed` (the MLP's steps as device-resident chunks, the ConvNet's as one jitted step
per host batch) and the jitted `steps.Steps` of the experiment config with
`num_replicas` = R. Every R is compiled and warmed up first; then the rounds time a block of
steps for each R in turn (R = 1, 3, 5, 1, 3, 5, ...), so that the machine's drift hits every R
alike, and the median over the rounds is printed with its ratio to R = 1 (per replica: 1.00
means a replica costs as much as a plain run; lower is dearer).
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package
from absl import flags
from workers import data_dir

from fmnist_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("models", "mlp,cnn", "Models: mlp, cnn.")
    flags.DEFINE_string("replicas", "1,3,5", "Replica counts R.")
    flags.DEFINE_integer("rounds", 3, "Timed blocks per R.")
    flags.DEFINE_string("maps", "vmap,unroll", "config.replica_map values to compare.")


MODELS = {"mlp": ("mlp_dropout", 500), "cnn": ("cnn_dropout", 60)}  # experiment, block steps


def prepare(experiment: str, num_replicas: int, block: int, how: str):
    """(feed, state, accumulator, keys, steps) of the experiment with R replicas, compiled."""
    import jax

    from fmnist_jax import config as config_lib
    from fmnist_jax import data, feeds, train

    config = config_lib.load_experiment(experiment)
    config.data_dir, config.num_replicas = str(data_dir()), num_replicas
    config.replica_map = how
    config.eval_every_steps = config.steps_per_chunk = block if config.steps_per_chunk > 1 else 1
    dataset = data.load(config)
    s, state, keys = train.build(config, dataset.train["inputs"].shape[1:])
    feed = feeds.make_feed(s, dataset, config, 0)
    acc = s.empty_accumulator()
    state, acc = feed.train(state, acc, keys, feed.chunk)  # compiles
    jax.block_until_ready(acc)
    return {"feed": feed, "state": state, "acc": acc, "keys": keys, "batch": config.batch_size}


def timed_block(entry: dict, block: int) -> float:
    """Seconds for `block` steps of every replica."""
    import jax

    feed, start = entry["feed"], time.perf_counter()
    state, acc = entry["state"], entry["acc"]
    for _ in range(block // feed.chunk):
        state, acc = feed.train(state, acc, entry["keys"], feed.chunk)
    jax.block_until_ready(acc)
    entry["state"], entry["acc"] = state, acc
    return time.perf_counter() - start


def main() -> None:
    counts = [int(r) for r in FLAGS.replicas.split(",")]
    maps = FLAGS.maps.split(",")
    header = f"{'model':8s} {'map':6s} {'R':>3s} {'img/s per replica':>18s} {'img/s (all)':>12s}"
    print(f"{header} {'vs R=1':>7s}")
    for model in FLAGS.models.split(","):
        experiment, block = MODELS[model]
        # R = 1 runs the unreplicated step whatever the map: timed once, the common baseline.
        cases = [(1, maps[0])] + [(r, how) for how in maps for r in counts if r > 1]
        entries = {case: prepare(experiment, *case[:1], block, case[1]) for case in cases}
        times = {case: [] for case in cases}
        for _ in range(FLAGS.rounds):
            for case in cases:
                times[case].append(timed_block(entries[case], block))
        base = None
        for r, how in cases:
            per_replica = block * entries[(r, how)]["batch"] / statistics.median(times[(r, how)])
            base = base or per_replica
            print(
                f"{model + '@64':8s} {how if r > 1 else '-':6s} {r:3d} {per_replica:18,.0f}"
                f" {per_replica * r:12,.0f} {per_replica / base:7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    cli.run(main, define_flags)
