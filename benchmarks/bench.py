"""Training speed of the project's models against their PyTorch twins, side by side.

    python benchmarks/bench.py [--mode throughput|time-to-accuracy]
        [--models cnn,cnn@64,mlp,mlp@64,linreg] [--repeats 5] [--steps 50]
        [--xla_flags "..."] [--jax_loop step|scan] [--with_untuned] [--json FILE]

Models: `cnn` (experiment cnn_dropout) and `mlp` (mlp_dropout) at batch 128 and Adam 1e-3,
`linreg` as configured (batch 32); `NAME@B` is the same model at batch B, so `cnn@64` and
`mlp@64` run at their experiments' own batch size. Each (model, framework) pair runs in its own
subprocess (`benchmarks/workers.py`: own peak memory, threads and XLA flags) and reports JSON
lines; this process prints the table.

Throughput: the first step is timed alone (compilation for JAX), then `--warmup` steps, then
`--repeats` timed blocks of `--steps` steps; images/s is the median block. The contenders'
blocks run in turn, the order rotating every round, and `x PyTorch` is the median over rounds
of the ratio of the two blocks timed in the same round. Both loops read the loss back every
step, as the project's loop does, and take the same pre-built host batches.

Time to accuracy: the ConvNet with dropout trains until its test accuracy reaches `--target`
(evaluated on the whole test split every `--eval_every` steps) or `--max_steps`; the wall time
counts training and evaluation alike.

Data: Fashion-MNIST from the IDX folder in $FMNIST_DATA_DIR (default ../shared/data/fashion_mnist
beside the repository); linear regression uses its experiment's synthetic problem.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's package, also without `make env`

from absl import flags
from attack_workers import ATTACKS, JAX_ONLY
from workers import MODELS, data_dir, experiment_config, parse_model, run_worker

from fmnist_jax import cli, errors

MODES = ("throughput", "time-to-accuracy")
FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "throughput", MODES, "What to measure.")
flags.DEFINE_string(
    "models",
    "cnn,cnn@64,mlp,mlp@64,linreg," + ",".join(ATTACKS),
    f"Comma-separated models: {', '.join(MODELS)}, each optionally @BATCH (cnn@64), and the"
    f" attack rows {', '.join(ATTACKS)} (benchmarks/attack_workers.py).",
)
flags.DEFINE_string("frameworks", "jax,torch", "Comma-separated: jax, torch.")
flags.DEFINE_integer("repeats", 5, "Timed blocks (rounds) per contender.")
flags.DEFINE_integer("steps", 50, "Steps per timed block.")
flags.DEFINE_integer("warmup", 5, "Untimed steps after the first.")
flags.DEFINE_string("xla_flags", None, "XLA_FLAGS for the JAX worker.")
flags.DEFINE_enum(
    "jax_loop",
    "step",
    ("step", "sync", "scan"),
    "step: the project's loop (jitted step per batch, metrics on the device); sync: the previous"
    " round's loop (the loss read back every step); scan: a block of steps as one jitted"
    " lax.scan (a prototype).",
)
flags.DEFINE_bool(
    "with_sync",
    True,
    "Also time the previous round's JAX loop, which read the loss back every step (row"
    " jax:sync): before/after of the device-side metrics.",
)
flags.DEFINE_string(
    "prototype",
    "",
    "CONV,POOL[;CONV,POOL...]: the JAX ConvNet with variants.py's convolution"
    " (project|lax|im2col) and pool (project|reshape|slices|window) instead of"
    " fmnist_jax.models.ConvNet, one row each; empty: the project's model.",
)
flags.DEFINE_bool(
    "with_project", False, "With --prototype: also time the project's own JAX model (row jax)."
)
flags.DEFINE_bool(
    "with_untuned",
    False,
    "Also time each framework without fmnist_jax.runtime's settings (rows :untuned).",
)
flags.DEFINE_float("target", 0.915, "Time to accuracy: the test accuracy to reach.")
flags.DEFINE_integer("eval_every", 100, "Time to accuracy: steps between evaluations.")
flags.DEFINE_integer("max_steps", 8000, "Time to accuracy: give up after this many steps.")
flags.DEFINE_string("json", None, "Also write the results to this file.")
flags.DEFINE_bool("check_data", False, "Only check that the data folder is there, then exit.")
flags.DEFINE_enum("worker", None, ("jax", "torch"), "Internal: run as the worker of one model.")

WORKER_FLAGS = ("mode", "steps", "repeats", "warmup", "target", "eval_every")
WORKER_FLAGS += ("max_steps",)


def worker_command(
    framework: str, model: str, prototype: str, tuned: bool, loop: str
) -> tuple[list, dict]:
    """The worker's command line and environment. Tuned (the default): the process settings of
    `fmnist_jax.runtime`, for both frameworks alike (PyTorch gets the same malloc tunable);
    untuned: neither the XLA flag nor the tunable, as before they existed."""
    from fmnist_jax import runtime

    cmd = [sys.executable, __file__, f"--worker={framework}", f"--models={model}"]
    cmd += [f"--{name}={FLAGS[name].value}" for name in WORKER_FLAGS]
    cmd += [f"--prototype={prototype}", f"--jax_loop={loop}"]
    env = dict(os.environ)
    if framework == "jax" and FLAGS.xla_flags is not None:
        env["XLA_FLAGS"] = FLAGS.xla_flags
    if tuned:
        env["GLIBC_TUNABLES"] = runtime.tuned_glibc_tunables(env.get("GLIBC_TUNABLES", ""))
    else:
        env[runtime.OPT_OUT] = "0"
        env.pop("GLIBC_TUNABLES", None)
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(runtime.XLA_FLAG, "").strip()
    return cmd, env


def contenders(model: str = "") -> dict[str, tuple[str, str, bool, str]]:
    """name -> (framework, prototype, tuned, JAX loop): the project's JAX model, the prototype
    if asked for, PyTorch; with --with_sync the JAX loop of the previous round (a host read of
    the loss every step), with --with_untuned both frameworks without the runtime settings.
    An attack row has two: the project's batch program and torchattacks (row `torch`), but
    for the JAX-only ones (the minimum-L1 search)."""
    if model in JAX_ONLY:
        return {"jax": ("jax", "", True, "step")}
    if model in ATTACKS:
        return {"jax": ("jax", "", True, "step"), "torch": ("torch", "", True, "step")}
    out, loop = {}, FLAGS.jax_loop
    for fw in FLAGS.frameworks.split(","):
        if fw == "jax" and FLAGS.prototype:
            for proto in FLAGS.prototype.split(";"):
                out[f"jax:{proto}"] = ("jax", proto, True, loop)
            if FLAGS.with_project:
                out["jax"] = ("jax", "", True, loop)
        else:
            out[fw] = (fw, "", True, loop)
        if fw == "jax" and FLAGS.with_sync:
            out["jax:sync"] = ("jax", "", True, "sync")
        if FLAGS.with_untuned:
            out[f"{fw}:untuned"] = (fw, "", False, loop)
    return out


def worker_failed(name: str, model: str, code: int, stderr: str) -> RuntimeError:
    sys.stderr.write(stderr[-3000:])
    return RuntimeError(f"{name} {model} worker failed (exit {code}); its stderr is above")


def spawn(name: str, model: str) -> dict:
    """Time to accuracy: one worker run to the end."""
    framework, prototype, tuned, loop = contenders()[name]
    cmd, env = worker_command(framework, model, prototype, tuned, loop)
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise worker_failed(name, model, out.returncode, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(model: str) -> dict:
    """Starts one worker per contender (one at a time, so compilation overlaps no timing),
    then runs their timed blocks in turn, rotating the order each round: a busy neighbour on
    the machine slows every contender alike."""
    workers = {}
    for name, (framework, prototype, tuned, loop) in contenders(model).items():
        cmd, env = worker_command(framework, model, prototype, tuned, loop)
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if json.loads(proc.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError(f"{name} {model} worker failed to start (its stderr is above)")
        workers[name] = proc
    names = list(workers)
    for r in range(FLAGS.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            workers[name].stdin.write("run\n")
            workers[name].stdin.flush()
            json.loads(workers[name].stdout.readline())
    results = {}
    for name, proc in workers.items():
        out, _ = proc.communicate("done\n")
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


def print_throughput(results: dict) -> None:
    """One row per model and contender; `x PyTorch` is the median over rounds of the ratio of
    the two blocks timed back to back in that round (`:untuned` rows against PyTorch untuned)."""
    if all(model in ATTACKS for model in results):
        return  # print_attacks has them
    print(
        f"{'model':8} {'run':20} {'batch':>5} {'img/s median':>12} {'img/s best':>10}"
        f" {'steps/s':>8} {'x PyTorch':>9} {'1st step s':>10} {'peak MiB':>8}"
    )
    for model, r in results.items():
        if model in ATTACKS:
            continue
        for name, x in r.items():
            ref = r.get("torch:untuned" if name.endswith(":untuned") else "torch")
            ratio = "-"
            if ref and not name.startswith("torch"):
                pairs = [a / b for a, b in zip(x["rates"], ref["rates"])]
                ratio = f"{statistics.median(pairs):.2f}"
            print(
                f"{model:8} {name:20} {x['batch_size']:>5} {x['images_per_s']:>12.0f}"
                f" {x['best_images_per_s']:>10.0f} {x['images_per_s'] / x['batch_size']:>8.0f}"
                f" {ratio:>9} {x['first_step_s']:>10.2f}"
                f" {x['peak_rss_mib']:>8.0f}"
            )


def print_attacks(results: dict) -> None:
    """The attack rows: the project's batch program (jax) against torchattacks' PGD (torch) on
    the same weights; `x torchattacks` is the median over rounds of the paired ratio. The
    minimum-L1 row has no torchattacks run; its median L1 (of the successes) is its quality."""
    rows = {m: r for m, r in results.items() if m in ATTACKS}
    if not rows:
        return
    print(
        f"{'attack':14} {'run':13} {'batch':>5} {'rate median':>11} {'rate best':>10}"
        f" {'unit':>14} {'x torchattacks':>14} {'1st run s':>9} {'success':>7} {'med steps':>9}"
        f" {'med L1':>6}"
    )
    for model, r in rows.items():
        unit = "image-steps/s" if model == "attack-pgd100" else "attacks/s"
        for name, x in r.items():
            ratio = "-"
            if name != "torch" and "torch" in r:
                pairs = [a / b for a, b in zip(x["rates"], r["torch"]["rates"])]
                ratio = f"{statistics.median(pairs):.2f}"
            print(
                f"{model:14} {x['framework']:13} {x['batch_size']:>5} {x['images_per_s']:>11.0f}"
                f" {x['best_images_per_s']:>10.0f} {unit:>14} {ratio:>14}"
                f" {x['first_step_s']:>9.2f} {x.get('success', '-'):>7} {x.get('median_steps', '-'):>9}"
                f" {x.get('median_l1', '-'):>6.4}"
            )
    print(f"attack weights: {next(iter(next(iter(rows.values())).values()))['weights']}")


def print_time_to_accuracy(results: dict, target: float) -> None:
    print(f"time to {target:.1%} test accuracy")
    print(f"{'model':8} {'framework':9} {'reached':>7} {'steps':>6} {'wall s':>8} {'eval s':>7}")
    for model, r in results.items():
        for fw, x in r.items():
            print(
                f"{model:8} {fw:9} {x['reached']!s:>7} {x['steps']:>6} {x['wall_s']:>8.1f}"
                f" {x['eval_s']:>7.1f}"
            )


def selected_models() -> list[str]:
    """--models, checked; time to accuracy keeps the ConvNets (only `cnn` by default)."""
    models = FLAGS.models.split(",")
    for m in models:
        try:
            parse_model(m)
        except ValueError as e:
            raise errors.UsageError(f"--models: {e}") from None
    if FLAGS.mode == "time-to-accuracy" and not FLAGS.worker:
        convnets = [m for m in models if m.partition("@")[0] == "cnn"]
        if not FLAGS["models"].present:
            models = ["cnn"]  # the default list: the ConvNet at batch 128 only
        elif convnets:
            models = convnets
    return models


def require_data(models: list[str]) -> None:
    """One clear error, before any worker starts, when a model needs the IDX folder and it is
    not there."""
    from fmnist_jax import data

    if all(experiment_config(m).dataset != "fashion_mnist" for m in models):
        return
    folder = data_dir()
    files = [f for pair in data.IDX_FILES.values() for f in pair]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise errors.DataError(
            f"no Fashion-MNIST data: {folder} {what}; set {data.ENV_DATA_DIR} to a folder with"
            f" the four IDX gz files ({', '.join(files)})"
        )


def require_torch(models: list[str]) -> None:
    """One clear error, before any worker starts, when a PyTorch row is asked for (an attack
    row always has one) and torch or torchattacks is not installed."""
    needed = ["torch"] if "torch" in FLAGS.frameworks.split(",") else []
    if any(m in ATTACKS for m in models):
        needed = ["torch", "torchattacks"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise errors.MissingDependency(
            f"the PyTorch rows need {' and '.join(missing)}, not installed here: pip install -r"
            " benchmarks/requirements.txt (`make bench` does), or --frameworks=jax"
        )


def main() -> None:
    models = selected_models()
    if FLAGS.worker:
        run_worker(FLAGS.worker, models[0], FLAGS)
        return
    require_data(models)
    if FLAGS.check_data:
        return
    require_torch(models)
    if FLAGS.mode == "throughput":
        results = {m: throughput(m) for m in models}
        print_throughput(results)
        print_attacks(results)
    else:
        results = {m: {name: spawn(name, m) for name in contenders()} for m in models}
        print_time_to_accuracy(results, FLAGS.target)
    first = next(iter(results.values()))
    for fw, x in first.items():
        print(f"{fw}: {x['versions']}")
    if FLAGS.json:
        Path(FLAGS.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli.run(main)
