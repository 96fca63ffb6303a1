"""The ConvNet's input-gradient step inside a loop against the same step called from Python.

    python benchmarks/loops.py [--conv project|lax] [--batch 100] [--steps 20]

Times one PGD-like step (the gradient of the cross-entropy w.r.t. the input, a signed step,
clipping) at batch `--batch`: as a jitted function called `--steps` times from Python, and as
`--steps` iterations of one jitted `lax.fori_loop`, `while_loop` and `scan`. Prints ms a step
and the `dim_labels` of every convolution XLA:CPU compiled into the loop. `--conv lax` is the
network with autodiff's own convolution gradients (before `layers.conv`): inside the loops
they keep the `01oi` kernel layout and run on XLA:CPU's generic emitter (benchmarks/README.md,
"Round 3"); `--conv project` (the project's model) keeps every one `b01f_01io->b01f`.
"""

import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from absl import flags

from fmnist_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("conv", "project", ("project", "lax"), "The convolution's gradients.")
    flags.DEFINE_integer("batch", 100, "Images per step.")
    flags.DEFINE_integer("steps", 20, "Steps timed.")


def timeit(fn, *args, repeats: int = 7, number: int = 5) -> float:
    """Median seconds per call of a jitted `fn` after one warm-up call."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def convnet(conv: str):
    """The project's ConvNet (`project`: `layers.conv`'s written-out gradients), or the same
    network with autodiff's own convolution gradients (`lax`)."""
    import flax.linen as nn

    from fmnist_jax import layers, models

    if conv == "project":
        return models.ConvNet()

    class LaxConvNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            for features in (32, 64):
                x = nn.relu(layers.max_pool_2x2(nn.Conv(features, (3, 3), padding="SAME")(x)))
            x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
            return nn.Dense(10)(x)

    return LaxConvNet()


def main() -> None:
    args = FLAGS
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    model = convnet(args.conv)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (args.batch, 28, 28, 1)).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
    params = model.init(jax.random.key(0), x[:1])["params"]

    def loss(v):
        logits = model.apply({"params": params}, v)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()

    def step(v):
        return jnp.clip(v - 0.01 * jnp.sign(jax.grad(loss)(v)), 0.0, 1.0)

    n, jitted = args.steps, jax.jit(step)

    def from_python(v):
        for _ in range(n):
            v = jitted(v)
        return v

    loops = {
        "fori_loop": jax.jit(lambda v: jax.lax.fori_loop(0, n, lambda i, u: step(u), v)),
        "while_loop": jax.jit(
            lambda v: jax.lax.while_loop(
                lambda c: c[0] < n, lambda c: (c[0] + 1, step(c[1])), (0, v)
            )[1]
        ),
        "scan": jax.jit(lambda v: jax.lax.scan(lambda u, _: (step(u), None), v, None, n)[0]),
    }
    print(f"conv={args.conv} batch={args.batch}: ms a step")
    print(f"  jitted step from Python  {timeit(from_python, x, number=1) * 1e3 / n:7.2f}")
    for name, fn in loops.items():
        print(f"  {name:24s} {timeit(fn, x, number=1) * 1e3 / n:7.2f}")
    hlo = loops["fori_loop"].lower(x).compile().as_text()
    labels = re.findall(r"convolution\(.*dim_labels=([^,\s]+)", hlo)
    print(f"  convolutions in the loop: {', '.join(labels)}")


if __name__ == "__main__":
    cli.run(main, define_flags)
