"""Training speed of the project's models against their PyTorch twins, side by side.

    python benchmarks/bench.py [--models cnn,mlp,linreg,attack-pgd100,attack-pgd,attack-minl1]
        [--repeats 5] [--steps 250] [--xla_flags "..."] [--with_untuned] [--json FILE]

Rows: `cnn` (experiment cnn_dropout, batch 64), `mlp` (mlp_dropout, batch 64) and `linreg`
(batch 32), each at its experiment's batch size and learning rate, and the attack rows of
`attack_workers.py`. The JAX contender is the loop the experiments run: blocks of `--steps`
steps as one `lax.scan` over device-resident data (`feeds.DeviceFeed`; 250 is the ConvNet's
and the MLP's `steps_per_chunk`). PyTorch runs its best CPU loop on the same in-memory data
(`workers.TorchRunner`). Each (row, framework) pair runs in its own subprocess (own peak
memory, threads and XLA flags) and reports JSON lines; this process prints the table.

The first block is timed alone (compilation for JAX), then `--repeats` timed blocks; images/s
is the median block. The contenders' blocks run in turn, the order rotating every round, and
`x PyTorch` is the median over rounds of the ratio of the two blocks timed in the same round:
a busy neighbour on the machine slows both alike.

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

import attack_workers
import workers
from absl import flags

from fmnist_jax import cli, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string(
        "models",
        ",".join([*workers.MODELS, *attack_workers.ATTACKS]),
        f"Comma-separated rows: {', '.join(workers.MODELS)} and the attack rows"
        f" {', '.join(attack_workers.ATTACKS)} (benchmarks/attack_workers.py).",
    )
    flags.DEFINE_string("frameworks", "jax,torch", "Comma-separated: jax, torch.")
    flags.DEFINE_integer("repeats", 5, "Timed blocks (rounds) per contender.")
    flags.DEFINE_integer("steps", 250, "Training steps per timed block (one scan for JAX).")
    flags.DEFINE_string("xla_flags", None, "XLA_FLAGS for the JAX worker.")
    flags.DEFINE_bool(
        "with_untuned",
        False,
        "Also time each framework without fmnist_jax.runtime's settings (rows :untuned).",
    )
    flags.DEFINE_string("json", None, "Also write the results to this file.")
    flags.DEFINE_bool("check_data", False, "Only check that the data folder is there, then exit.")
    flags.DEFINE_enum("worker", None, ("jax", "torch"), "Internal: run as the worker of one row.")


def worker_command(framework: str, model: str, tuned: bool) -> tuple[list, dict]:
    """The worker's command line and environment. Tuned (the default): the process settings of
    `fmnist_jax.runtime`, for both frameworks alike (PyTorch gets the same malloc tunable);
    untuned: neither the XLA flag nor the tunable, as before they existed."""
    from fmnist_jax import runtime

    cmd = [sys.executable, __file__, f"--worker={framework}", f"--models={model}"]
    cmd += [f"--steps={FLAGS.steps}"]
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


def contenders(model: str) -> dict[str, tuple[str, bool]]:
    """name -> (framework, tuned): JAX and PyTorch (--frameworks), with --with_untuned each
    also without the runtime settings. An attack row has the project's batch program and
    torchattacks (row `torch`), but for the JAX-only minimum-L1 search."""
    if model in attack_workers.JAX_ONLY:
        return {"jax": ("jax", True)}
    if model in attack_workers.ATTACKS:
        return {"jax": ("jax", True), "torch": ("torch", True)}
    out = {}
    for fw in FLAGS.frameworks.split(","):
        out[fw] = (fw, True)
        if FLAGS.with_untuned:
            out[f"{fw}:untuned"] = (fw, False)
    return out


def throughput(model: str) -> dict:
    """Starts one worker per contender (one at a time, so compilation overlaps no timing),
    then runs their timed blocks in turn, rotating the order each round."""
    workers_ = {}
    for name, (framework, tuned) in contenders(model).items():
        cmd, env = worker_command(framework, model, tuned)
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if json.loads(proc.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError(f"{name} {model} worker failed to start (its stderr is above)")
        workers_[name] = proc
    names = list(workers_)
    for r in range(FLAGS.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            workers_[name].stdin.write("run\n")
            workers_[name].stdin.flush()
            json.loads(workers_[name].stdout.readline())
    results = {}
    for name, proc in workers_.items():
        out, _ = proc.communicate("done\n")
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


def paired_ratio(x: dict, ref: dict | None) -> str:
    """The median over rounds of the ratio of two contenders' blocks timed in the same round."""
    if not ref:
        return "-"
    return f"{statistics.median(a / b for a, b in zip(x['rates'], ref['rates'])):.2f}"


def print_training(results: dict) -> None:
    """One row per model and contender; `x PyTorch` pairs each with PyTorch (`:untuned` rows
    with PyTorch untuned)."""
    rows = {m: r for m, r in results.items() if m in workers.MODELS}
    if not rows:
        return
    print(
        f"{'model':7} {'experiment':12} {'run':12} {'batch':>5} {'img/s median':>12}"
        f" {'img/s best':>10} {'x PyTorch':>9} {'1st block s':>11} {'peak MiB':>8}"
    )
    for model, r in rows.items():
        for name, x in r.items():
            ref = r.get("torch:untuned" if name.endswith(":untuned") else "torch")
            ratio = "-" if name.startswith("torch") else paired_ratio(x, ref)
            print(
                f"{model:7} {x['experiment']:12} {name:12} {x['batch_size']:>5}"
                f" {x['images_per_s']:>12.0f} {x['best_images_per_s']:>10.0f} {ratio:>9}"
                f" {x['first_block_s']:>11.2f} {x['peak_rss_mib']:>8.0f}"
            )


def print_attacks(results: dict) -> None:
    """The attack rows: the project's batch program (jax) against torchattacks' PGD (torch) on
    the same weights; `x torchattacks` is the median over rounds of the paired ratio. The
    minimum-L1 row has no torchattacks run; its median L1 (of the successes) is its quality."""
    rows = {m: r for m, r in results.items() if m in attack_workers.ATTACKS}
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
            ratio = paired_ratio(x, r.get("torch")) if name != "torch" else "-"
            print(
                f"{model:14} {x['framework']:13} {x['batch_size']:>5} {x['images_per_s']:>11.0f}"
                f" {x['best_images_per_s']:>10.0f} {unit:>14} {ratio:>14}"
                f" {x['first_step_s']:>9.2f} {x.get('success', '-'):>7}"
                f" {x.get('median_steps', '-'):>9} {x.get('median_l1', '-'):>6.4}"
            )
    print(f"attack weights: {next(iter(next(iter(rows.values())).values()))['weights']}")


def selected_models() -> list[str]:
    """--models, checked."""
    models = FLAGS.models.split(",")
    known = [*workers.MODELS, *attack_workers.ATTACKS]
    unknown = [m for m in models if m not in known]
    if unknown:
        raise errors.UsageError(
            f"--models: unknown {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    if FLAGS.steps < 1 or FLAGS.repeats < 1:
        raise errors.UsageError(
            f"--steps and --repeats must be positive, got {FLAGS.steps}, {FLAGS.repeats}"
        )
    return models


def require_data(models: list[str]) -> None:
    """One clear error, before any worker starts, when a row needs the IDX folder and it is
    not there."""
    from fmnist_jax import data

    if models == ["linreg"]:
        return
    folder = workers.data_dir()
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
    if any(m in attack_workers.ATTACKS for m in models):
        needed = ["torch", "torchattacks"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise errors.MissingDependency(
            f"the PyTorch rows need {' and '.join(missing)}, not installed here: pip install -r"
            " benchmarks/requirements.txt (`make bench` does), or --frameworks=jax"
        )


def run_worker(framework: str, model: str) -> None:
    """A worker's whole life: the project's CPU settings (unless the parent opted out, as for
    the `:untuned` rows), the timing protocol, its result as the last stdout line."""
    from fmnist_jax import runtime

    runtime.configure_cpu()  # before jax is imported, as the project's command lines do
    if model in attack_workers.ATTACKS:
        config = workers.experiment_config("cnn_dropout")
        result = attack_workers.worker_attack(framework, model, config)
    else:
        result = workers.worker_throughput(framework, model, FLAGS)
    print(json.dumps(result), flush=True)


def main() -> None:
    models = selected_models()
    if FLAGS.worker:
        run_worker(FLAGS.worker, models[0])
        return
    require_data(models)
    if FLAGS.check_data:
        return
    require_torch(models)
    results = {m: throughput(m) for m in models}
    print_training(results)
    print_attacks(results)
    for fw, x in next(iter(results.values())).items():
        print(f"{fw}: {x['versions']}")
    if FLAGS.json:
        Path(FLAGS.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli.run(main, define_flags)
