"""Attacks per second: the batched search program against a Python loop over a jitted
single-image search, on the same images, targets and method. Not a test; run by hand:

    FMNIST_DATA_DIR=... python benchmarks/adversarial_bench.py [--workdir runs/cnn_dropout]
        [--num_images 200] [--method gd] [--pool_size 128]

The batch program runs twice: with its default pool of slots (a finished search hands its
slot to the next image) and with every image in flight at once (pool_size = N, where all
wait for the longest search).

Uses the trained checkpoint in --workdir if it has one, otherwise a freshly initialised
ConvNet with dropout on synthetic images (and says so). Compilation is excluded from both
timings (each program runs once before it is timed).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from fmnist_jax import adversarial as adv
from fmnist_jax import checkpoints, cli, data, models
from fmnist_jax import config as config_lib
from fmnist_jax.adversarial.search import search


def load_model(workdir: Path):
    """(logits_fn, training split, description): the checkpoint's model, or a fresh one."""
    if (workdir / "checkpoints").is_dir():
        config, model, variables = checkpoints.load_trained(workdir)
        split, what = data.load(config).train, f"trained checkpoint {workdir}"
    else:
        config = config_lib.load_experiment("cnn_dropout")
        model = models.create_model(config)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        split, what = data.synthetic_images().train, "freshly initialised ConvNet, synthetic data"

    def logits_fn(x):
        return model.apply(variables, x, train=False)

    return logits_fn, split, what


def time_batched(logits_fn, config, images, labels, targets, pool_size):
    """Seconds for one call of the batch program, and its per-sample steps."""
    fn = adv.make_attack(logits_fn, config, pool_size)
    key = jax.random.key(0)
    jax.block_until_ready(fn(images, labels, key, targets))  # compile
    start = time.perf_counter()
    result = jax.block_until_ready(fn(images, labels, key, targets))
    return time.perf_counter() - start, np.asarray(result.steps)


def time_loop(logits_fn, config, images, targets) -> tuple[float, np.ndarray]:
    """Seconds for a Python loop of jitted single-image searches, and their steps."""
    one = jax.jit(lambda x, t: search(logits_fn, x, t, config, config.max_steps))
    jax.block_until_ready(one(images[0], targets[0]))  # compile
    steps = []
    start = time.perf_counter()
    for x, t in zip(images, targets):
        steps.append(int(one(x, t).step))  # int() waits for the result, as a caller would
    return time.perf_counter() - start, np.asarray(steps)


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", "runs/cnn_dropout", "A trained run (else a fresh model).")
    flags.DEFINE_integer("num_images", 200, "Images to attack.")
    flags.DEFINE_enum("method", adv.DEFAULT_METHOD, sorted(adv.METHODS), "The attack preset.")
    flags.DEFINE_integer("pool_size", adv.DEFAULT_POOL_SIZE, "Slots of the pooled program.")


def main() -> None:
    args = FLAGS

    logits_fn, split, what = load_model(Path(args.workdir))
    config = adv.METHODS[args.method]
    n = args.num_images
    images = jnp.asarray(data.to_model_inputs(split["inputs"][:n]))
    labels = jnp.asarray(split["targets"][:n], jnp.int32)
    targets = adv.draw_targets(jax.random.key(1), labels)
    print(f"model: {what}; method {args.method}; {n} images; device {jax.devices()[0]}")

    pool_s, pool_steps = time_batched(logits_fn, config, images, labels, targets, args.pool_size)
    all_s, _ = time_batched(logits_fn, config, images, labels, targets, n)
    loop_s, loop_steps = time_loop(logits_fn, config, images, targets)
    print(
        f"steps per search: median {np.median(loop_steps):.0f}, max {loop_steps.max()},"
        f" total {loop_steps.sum()}"
    )
    differ = int(np.sum(pool_steps != loop_steps))
    print(f"searches whose step count differs batched vs single (float rounding): {differ}")
    print(f"batched, pool of {args.pool_size}: {n / pool_s:8.1f} attacks/s ({pool_s:.2f} s)")
    print(f"batched, all {n} at once: {n / all_s:8.1f} attacks/s ({all_s:.2f} s)")
    print(f"python loop:             {n / loop_s:8.1f} attacks/s ({loop_s:.2f} s)")
    print(f"ratio pooled / loop: {loop_s / pool_s:.1f}x; all at once / loop: {loop_s / all_s:.1f}x")


if __name__ == "__main__":
    cli.run(main, define_flags)
