"""Where the ConvNet's training step spends its time on the CPU, and what changes it.

    python benchmarks/explore.py ops   [--conv project|lax|im2col] [--pool project|...] [--batch 128]
    python benchmarks/explore.py step  [--conv ...] [--pool ...] [--batch 128] [--prng threefry|rbg]
    python benchmarks/explore.py hlo   [--conv ...] [--pool ...]
    python benchmarks/explore.py flags [--conv ...] [--pool ...]
    python benchmarks/explore.py ab    [--repeats 6] [--variants CONV,POOL;CONV,POOL...]

`ops` times each piece of one step alone (jitted, median of repeats): the two convolutions
forward and backward, pools, dense layers, dropout masks, the Adam update, the whole step.
`step` times the whole jitted train step (`train.Steps` of the cnn_dropout config, batch 128,
Adam 1e-3) with the chosen convolution and dropout PRNG. `hlo` lists the library calls and
fusions in the compiled step (so an XLA flag can be seen to take effect). `flags` reruns `step`
and `hlo` in a fresh process for each XLA flag set in FLAG_SETS.

`--conv project` is the project's ConvNet (first conv's kernel gradient by patches), `lax` the
same network with XLA's own convolutions, `im2col` a rejected prototype: the same 3x3 SAME
convolution computed as nine shifted slices concatenated on the channel axis and one product.
`--pool`: `project` (`layers.max_pool_2x2`), `reshape` (the first round's, autodiff), `slices`
(max of four strided slices, autodiff), `window` (`nn.max_pool`).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# benchmarks/ is this script's own folder, first on sys.path
from variants import (
    CONVS,
    POOLS,
    conv_im2col,
    make_convnet,
    max_pool_reshape,
    max_pool_slices,
)

FLAG_SETS = {
    "default": "",
    "thunk_runtime=false": "--xla_cpu_use_thunk_runtime=false",
    "multi_thread_eigen=false": "--xla_cpu_multi_thread_eigen=false",
    "use_xnnpack=false": "--xla_cpu_use_xnnpack=false",
    "xnn_fusion=dot,eltwise,reduce": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "xnn_graph_fusion=greedy": (
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
    ),
    "ynn_fusion=off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_fusion=+conv": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "ynn_fusion=-conv (project default)": (
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    ),
    "ynn_fusion=+conv,+eltwise,+reduce": (
        "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution,+eltwise,+reduce"
    ),
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "use_onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call+use_onednn": (
        "--xla_cpu_experimental_onednn_custom_call=true --xla_cpu_use_onednn=true"
    ),
    "onednn_fusion=dot,eltwise": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "prefer_vector_width=512": "--xla_cpu_prefer_vector_width=512",
    "2 host devices (data parallel)": "--xla_force_host_platform_device_count=2",
    "2 host devices + single-thread eigen": (
        "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"
    ),
    "fast_math (changes numerics)": "--xla_cpu_enable_fast_math=true",
}


# --------------------------------------------------------------------------- helpers


def timeit(fn, *args, repeats: int = 7, number: int = 5) -> float:
    """Median seconds per call of a jitted `fn` after one warm-up call."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / number)
    return statistics.median(times)


def cnn_config(batch: int):
    from fmnist_jax import config as config_lib

    c = config_lib.load_experiment("cnn_dropout")
    c.batch_size, c.learning_rate = batch, 1e-3
    return c


def fake_batches(batch: int, count: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        {
            "inputs": rng.random((batch, 28, 28, 1), dtype=np.float32),
            "targets": rng.integers(0, 10, batch).astype(np.int32),
        }
        for _ in range(count)
    ]


def build_step(conv: str, batch: int, pool: str = "project"):
    import jax

    from fmnist_jax import train

    config = cnn_config(batch)
    model = make_convnet(conv, config.dropout_rate, pool)
    steps = train.Steps(config, train.make_mesh())
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(0))
    state = train.create_train_state(config, model, (28, 28, 1), init_rng)
    return steps, state, dropout_rng


# --------------------------------------------------------------------------- commands


def cmd_step(args) -> float:
    """Images/s of the project's jitted step (per-step loss read-back, as its loop does)."""
    import jax

    if args.prng != "threefry":
        jax.config.update("jax_default_prng_impl", args.prng)
    steps, state, rng = build_step(args.conv, args.batch, args.pool)
    batches = [steps.put_batch(b) for b in fake_batches(args.batch, 8)]
    t = time.perf_counter()
    state, m = steps.train(state, batches[0], rng)
    float(m.loss.total)
    compile_s = time.perf_counter() - t
    for b in batches[1:4]:
        state, m = steps.train(state, b, rng)
    float(m.loss.total)
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for i in range(args.steps):
            state, m = steps.train(state, batches[i % len(batches)], rng)
            float(m.loss.total)
        rates.append(args.steps * args.batch / (time.perf_counter() - t))
    rate = statistics.median(rates)
    print(
        f"step conv={args.conv} pool={args.pool} batch={args.batch} prng={args.prng}:"
        f" {rate:.0f} img/s"
        f" (blocks {', '.join(f'{r:.0f}' for r in rates)}; first step {compile_s:.1f} s)"
    )
    return rate


def cmd_ab(args):
    """The step variants built in one process and timed in rotating blocks of 5 steps."""
    import jax

    variants = [tuple(v.split(",")) for v in args.variants.split(";")]
    built = {}
    for conv, pool in variants:
        steps, state, rng = build_step(conv, args.batch, pool)
        batches = [steps.put_batch(b) for b in fake_batches(args.batch, 4)]
        state, m = steps.train(state, batches[0], rng)
        float(m.loss.total)
        built[conv, pool] = [steps, state, rng, batches]
    times = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            steps, state, rng, batches = built[v]
            t = time.perf_counter()
            for i in range(5):
                state, m = steps.train(state, batches[i % 4], rng)
                float(m.loss.total)
            times[v].append((time.perf_counter() - t) / 5)
            built[v][1] = state
    for (conv, pool), ts in times.items():
        med, best = statistics.median(ts), min(ts)
        print(
            f"ab conv={conv} pool={pool}: median {med * 1e3:.0f} ms ({args.batch / med:.0f} img/s),"
            f" best {best * 1e3:.0f} ms ({args.batch / best:.0f} img/s)"
        )
    del jax


def hlo_summary(conv: str, batch: int, pool: str = "project") -> str:
    """Library calls and fusion kinds in the compiled step, e.g. 'custom-call:__onednn$conv x4'."""
    import jax

    steps, state, rng = build_step(conv, batch, pool)
    b = steps.put_batch(fake_batches(batch, 1)[0])
    text = steps.train.lower(state, b, rng).compile().as_text()
    found = Counter()
    for target in re.findall(r'custom_call_target="([^"]+)"', text):
        found[f"custom-call:{target}"] += 1
    for kind in re.findall(r"kind=(k\w+)", text):
        found[f"fusion:{kind}"] += 1
    for op in ("convolution(", " dot("):
        found[op.strip(" (")] = text.count(op)
    for name in re.findall(r"(__\w+_fusion|xnn_fusion|ynn_fusion|onednn\w*)", text):
        found[name] += 1
    del jax
    return ", ".join(f"{k} x{v}" for k, v in sorted(found.items()) if v)


def cmd_hlo(args):
    print(f"hlo conv={args.conv}: {hlo_summary(args.conv, args.batch, args.pool)}")


def cmd_flags(args):
    from fmnist_jax import runtime

    for name, flags in FLAG_SETS.items():
        # each set alone: without fmnist_jax.runtime's flag, with its malloc tunable
        env = dict(os.environ, XLA_FLAGS=flags, **{runtime.OPT_OUT: "0"})
        env["GLIBC_TUNABLES"] = runtime.tuned_glibc_tunables(env.get("GLIBC_TUNABLES", ""))
        cmd = [sys.executable, __file__, "step+hlo", "--conv", args.conv, "--pool", args.pool]
        cmd += ["--batch"]
        cmd += [str(args.batch), "--steps", str(args.steps), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        lines = (out.stdout + out.stderr).strip().splitlines()
        if out.returncode:
            print(f"{name:34} FAILED rc={out.returncode}: {' | '.join(lines[-3:])[:300]}")
            continue
        rate = next((ln for ln in lines if ln.startswith("step ")), "?").split(": ", 1)[-1]
        hlo = next((ln for ln in lines if ln.startswith("hlo ")), "?").split(": ", 1)[-1]
        warn = [ln for ln in lines if "nknown" in ln or "gnor" in ln][:1]
        print(f"{name:34} {rate}\n{'':34} {hlo}{'  WARN ' + warn[0] if warn else ''}")


def _conv_pieces(conv: str, b: int, key) -> tuple[dict, dict]:
    """The two convolutions forward and backward, jitted alone: (pieces, FLOPs per piece)."""
    import jax

    from fmnist_jax import layers

    fn = {"lax": jax.lax.conv_general_dilated, "im2col": conv_im2col}.get(conv, layers.conv)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv_fn(x, w):  # every variant told the layout (conv2 falls back to lax's conv)
        return fn(x, w, (1, 1), "SAME", dimension_numbers=dn)

    def vjp_w(x, w, g):  # conv1's input is data: only the kernel gradient is needed
        return jax.vjp(lambda w: conv_fn(x, w), w)[1](g)

    def vjp_xw(x, w, g):
        return jax.vjp(conv_fn, x, w)[1](g)

    x1 = jax.random.normal(key, (b, 28, 28, 1))
    w1 = jax.random.normal(key, (3, 3, 1, 32)) * 0.1
    x2 = jax.random.normal(key, (b, 14, 14, 32))
    w2 = jax.random.normal(key, (3, 3, 32, 64)) * 0.1
    g1 = jax.random.normal(key, (b, 28, 28, 32))
    g2 = jax.random.normal(key, (b, 14, 14, 64))
    pieces = {
        "conv1 fwd": (jax.jit(conv_fn), x1, w1),
        "conv1 bwd (kernel grad)": (jax.jit(vjp_w), x1, w1, g1),
        "conv2 fwd": (jax.jit(conv_fn), x2, w2),
        "conv2 bwd (input+kernel grads)": (jax.jit(vjp_xw), x2, w2, g2),
    }
    flops = {
        "conv1 fwd": 2 * b * 28 * 28 * 9 * 32,
        "conv1 bwd (kernel grad)": 2 * b * 28 * 28 * 9 * 32,
        "conv2 fwd": 2 * b * 14 * 14 * 9 * 32 * 64,
        "conv2 bwd (input+kernel grads)": 4 * b * 14 * 14 * 9 * 32 * 64,
        "dense fwd+bwd": 6 * b * (3136 * 128 + 128 * 10),
    }
    return pieces, flops


def _other_pieces(b: int, key, state, batch) -> dict:
    """Pools, dense layers, dropout masks, the Adam update and the model's forward, jitted."""
    import jax
    import jax.numpy as jnp
    import optax

    from fmnist_jax import models

    pool_in1 = jax.nn.relu(jax.random.normal(key, (b, 28, 28, 32)))
    pool_in2 = jax.nn.relu(jax.random.normal(key, (b, 14, 14, 64)))
    h = jax.random.normal(key, (b, 3136))
    wd1 = jax.random.normal(key, (3136, 128)) * 0.01
    wd2 = jax.random.normal(key, (128, 10)) * 0.1

    def dense(h, wd1, wd2):
        return jnp.sum(jax.nn.relu(h @ wd1) @ wd2)

    def masks(k):
        k1, k2 = jax.random.split(k)
        return (
            jax.random.bernoulli(k1, 0.75, (b, 14, 14, 32)),
            jax.random.bernoulli(k2, 0.75, (b, 7, 7, 64)),
        )

    tx = optax.adam(1e-3)
    opt_state = tx.init(state.params)

    def adam(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def forward(params, x):
        return state.apply_fn({"params": params}, x, train=True, rngs={"dropout": key})

    pools = {"project": models.max_pool_2x2, "reshape": max_pool_reshape, "slices": max_pool_slices}
    return {
        **{
            f"pool{i} fwd+bwd ({name})": (jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x)))), x)
            for name, f in pools.items()
            for i, x in ((1, pool_in1), (2, pool_in2))
        },
        "dense fwd+bwd": (jax.jit(jax.grad(dense, argnums=(0, 1, 2))), h, wd1, wd2),
        f"dropout masks ({jax.config.jax_default_prng_impl})": (jax.jit(masks), key),
        "adam update": (jax.jit(adam), state.params, opt_state, state.params),
        "model forward (train)": (jax.jit(forward), state.params, batch["inputs"]),
    }


def cmd_ops(args):
    """Each piece of one ConvNet step timed alone, then their sum against the whole step."""
    import jax

    b, key = args.batch, jax.random.PRNGKey(0)
    steps, state, rng = build_step(args.conv, b, args.pool)
    batch = steps.put_batch(fake_batches(b, 1)[0])
    pieces, flops = _conv_pieces(args.conv, b, key)
    pieces.update(_other_pieces(b, key, state, batch))
    total = 0.0
    print(f"ops conv={args.conv} batch={b} (ms per call, median)")
    for name, (fn, *fargs) in pieces.items():
        s = timeit(fn, *fargs)
        counted = (
            "forward (train)" not in name and "(slices)" not in name and "(reshape)" not in name
        )
        total += s if counted else 0.0
        gf = f"  {flops[name] / s / 1e9:6.1f} GFLOP/s" if name in flops else ""
        print(f"  {name:34} {s * 1e3:8.2f}{gf}")
    st = {"state": state}

    def one_step():
        st["state"], m = steps.train(st["state"], batch, rng)
        return m.loss.total

    s = timeit(one_step)
    print(f"  {'sum of the pieces above':34} {total * 1e3:8.2f}")
    print(f"  {'whole train step':34} {s * 1e3:8.2f}  ({b / s:.0f} img/s)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("ops", "step", "hlo", "flags", "step+hlo", "ab"))
    p.add_argument("--conv", choices=CONVS, default="project")
    p.add_argument("--pool", choices=POOLS, default="project")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--prng", choices=("threefry", "rbg", "unsafe_rbg"), default="threefry")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--variants",
        default="project,project;lax,project;project,reshape;project,slices",
        help="ab: CONV,POOL[;CONV,POOL...] built in one process and timed in turn",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from fmnist_jax import runtime

    runtime.configure_cpu()  # the project's XLA flag, as its command lines set it (before jax)
    if args.command in ("step", "step+hlo"):
        cmd_step(args)
    if args.command in ("hlo", "step+hlo"):
        cmd_hlo(args)
    if args.command == "ops":
        cmd_ops(args)
    if args.command == "flags":
        cmd_flags(args)
    if args.command == "ab":
        cmd_ab(args)


if __name__ == "__main__":
    main()
