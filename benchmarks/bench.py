"""Training speed of the project's models against their PyTorch twins, side by side.

    python benchmarks/bench.py [--mode throughput|time-to-accuracy] [--models cnn,mlp,linreg]
        [--repeats 5] [--steps 50] [--xla-flags "..."] [--jax-loop step|scan]

Each (model, framework) pair runs in its own subprocess (so peak memory, threads and XLA flags
are its own) and reports one JSON line; this process prints the table. The JAX side is the
project's own code path: `models.create_model`, `train.create_train_state` and the jitted
`train.Steps` of an experiment config, fed by `data.train_batches`. The PyTorch side is
`benchmarks/torch_models.py`: the same layers, loss, optimizer, batch and learning rate.

Throughput: the first step is timed alone (compilation for JAX), then `--warmup` steps, then
`--repeats` timed blocks of `--steps` steps; images/s is the median block. Both loops read the
loss back every step, as the project's loop does (it checks the loss is finite), and both take
the same pre-built host batches, so input preparation is outside the timing.

Time to accuracy: the ConvNet with dropout trains until its test accuracy reaches `--target`
(evaluated on the whole test split every `--eval-every` steps) or `--max-steps`; the wall time
counts training and evaluation alike.

Data: Fashion-MNIST from the IDX folder in $FMNIST_DATA_DIR (default ../shared/data/fashion_mnist
beside the repository); linear regression uses its experiment's synthetic problem.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "fashion_mnist"
# model name -> (experiment, overrides). The ConvNet and MLP use the batch and lr.
MODELS = {
    "cnn": ("cnn_dropout", {"batch_size": 128, "learning_rate": 1e-3}),
    "mlp": ("mlp_dropout", {"batch_size": 128, "learning_rate": 1e-3}),
    "linreg": ("linreg", {}),
}


def experiment_config(model: str):
    from fmnist_jax import config as config_lib

    name, overrides = MODELS[model]
    config = config_lib.load_experiment(name)
    config.update(overrides)
    if config.dataset == "fashion_mnist":
        config.data_dir = os.environ.get("FMNIST_DATA_DIR", str(DEFAULT_DATA_DIR))
    return config


def batch_indices(num_examples: int, batch_size: int, seed: int, count: int) -> list:
    """Example indices of the first `count` batches `data.train_batches` yields (same
    permutation per epoch, last partial batch dropped)."""
    per_epoch = num_examples // batch_size
    out, order, epoch = [], None, -1
    for step in range(count):
        e, i = divmod(step, per_epoch)
        if e != epoch:
            order, epoch = np.random.default_rng([seed, e]).permutation(num_examples), e
        out.append(order[i * batch_size : (i + 1) * batch_size])
    return out


def host_batches(config, count: int):
    """The data set and `count` training batches of the project's input pipeline, built before
    any timing; each batch also carries its example indices (`idx`) for the resident-data
    loop."""
    from fmnist_jax import data

    dataset = data.load(config)
    stream = data.train_batches(dataset.train, config.batch_size, config.seed)
    batches = [next(stream) for _ in range(count)]
    n = len(dataset.train["targets"])
    for batch, idx in zip(batches, batch_indices(n, config.batch_size, config.seed, count)):
        assert np.array_equal(batch["targets"], dataset.train["targets"][idx])
        assert np.array_equal(batch["inputs"], data.to_model_inputs(dataset.train["inputs"][idx]))
        batch["idx"] = idx.astype(np.int32)
    return dataset, batches


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- JAX worker


class JaxRunner:
    """The project's train state and jitted steps for one config."""

    def __init__(self, config, loop: str = "step", prototype: str = ""):
        import jax

        from fmnist_jax import models, train

        self.jax, self.train, self.config, self.loop = jax, train, config, loop
        self.steps = train.Steps(config, train.make_mesh())
        init_rng, self.dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        self.model = models.create_model(config)
        if prototype and config.model == "cnn":  # a proposed models.py change, not yet merged
            import explore

            conv, pool = prototype.split(",")
            self.model = explore.make_convnet(conv, config.dropout_rate, pool)
        self.init_rng, self.state, self._scan = init_rng, None, None

    def init(self, example_inputs, train_split=None):
        self.train_split = train_split
        self.state = self.train.create_train_state(
            self.config, self.model, example_inputs.shape[1:], self.init_rng
        )

    def run(self, batches) -> float:
        """Trains on `batches`, reading the loss back after every step as the project's loop
        does; returns the last loss."""
        if self.loop == "scan":
            return self._run_scan(batches)
        loss = None
        for batch in batches:
            batch = {"inputs": batch["inputs"], "targets": batch["targets"]}
            self.state, m = self.steps.train(self.state, batch, self.dropout_rng)
            loss = float(m.loss.total)
        return loss

    def _run_scan(self, batches) -> float:
        """All of `batches` as one jitted `lax.scan` of the project's `train.train_step`, the
        training images resident on the device and gathered inside the program (a prototype
        for a chunked loop); reads back the last loss only."""
        jax, train = self.jax, self.train
        if self._scan is None:
            regression = train.is_regression(self.config)
            split = self.train_split
            images = jax.device_put(split["inputs"])  # uint8 (or float32 features)
            targets = jax.device_put(split["targets"])

            def many(state, idx, rng):
                def body(s, i):
                    x = images[i]
                    if x.dtype == jax.numpy.uint8:  # as data.to_model_inputs
                        x = x.astype(jax.numpy.float32) / 255.0
                    s, m = train.train_step(
                        s, {"inputs": x, "targets": targets[i]}, rng, regression=regression
                    )
                    return s, m.loss.total

                return jax.lax.scan(body, state, idx)

            self._scan = jax.jit(many, donate_argnums=0)
        idx = np.stack([b["idx"] for b in batches])
        self.state, losses = self._scan(self.state, idx, self.dropout_rng)
        return float(losses[-1])

    def evaluate(self, test_split) -> float:
        metrics = self.train.evaluate(self.steps, self.state, test_split, 1000)
        return metrics["accuracy"]

    def sync(self):
        self.jax.block_until_ready(self.state)


# --------------------------------------------------------------------------- PyTorch worker


class TorchRunner:
    def __init__(self, config):
        import torch
        import torch_models

        torch.manual_seed(config.seed)
        self.torch, self.tm, self.config = torch, torch_models, config
        self.regression = config.model == "linear_regression"
        self.model = None

    def init(self, example_inputs, train_split=None):
        num_features = int(example_inputs[0].size)
        self.model = self.tm.create_model(self.config, num_features)
        self.optimizer = self.tm.create_optimizer(self.config, self.model.parameters())

    def run(self, batches) -> float:
        torch = self.torch
        self.model.train()
        loss = None
        for batch in batches:
            x = torch.from_numpy(batch["inputs"])
            y = torch.from_numpy(batch["targets"])
            if not self.regression:
                y = y.long()
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
            loss_t = self.tm.loss_fn(outputs, y, self.regression)
            loss_t.backward()
            self.optimizer.step()
            if not self.regression:  # the project's step also returns the batch accuracy
                (outputs.detach().argmax(1) == y).sum()
            loss = loss_t.item()
        return loss

    def evaluate(self, test_split) -> float:
        from fmnist_jax import data

        torch = self.torch
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for batch in data.epoch_batches(test_split, 1000, remainder="pad"):
                logits = self.model(torch.from_numpy(batch["inputs"]))
                hits = logits.argmax(1).numpy() == batch["targets"]
                correct += int((hits & batch["mask"]).sum())
        return correct / len(test_split["targets"])

    def sync(self):
        pass  # eager: every step has finished when `run` returns


def make_runner(framework: str, config, args):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if framework == "jax":
        return JaxRunner(config, args.jax_loop, args.prototype)
    return TorchRunner(config)


def worker_throughput(framework: str, model: str, args) -> dict:
    """Compiles and warms up, says `ready`, then times one block of `--steps` steps per `run`
    line on stdin (the parent interleaves the frameworks' blocks); `done` ends it."""
    config = experiment_config(model)
    n = args.warmup + args.repeats * args.steps + 1
    dataset, batches = host_batches(config, n)
    runner = make_runner(framework, config, args)
    runner.init(batches[0]["inputs"], dataset.train)
    t = time.perf_counter()
    runner.run(batches[:1])
    runner.sync()
    first_step = time.perf_counter() - t
    if args.jax_loop == "scan" and framework == "jax":
        runner.run(batches[1 : 1 + args.steps])  # compile the chunk program
    runner.run(batches[1 : 1 + args.warmup])
    runner.sync()
    print(json.dumps({"ready": True}), flush=True)
    rates, loss = [], None
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = 1 + args.warmup + (len(rates) % args.repeats) * args.steps
        block = batches[start : start + args.steps]
        t = time.perf_counter()
        loss = runner.run(block)
        runner.sync()
        rates.append(len(block) * config.batch_size / (time.perf_counter() - t))
        print(json.dumps({"rate": rates[-1]}), flush=True)
    return {
        "framework": framework,
        "model": model,
        "batch_size": config.batch_size,
        "images_per_s": statistics.median(rates),
        "best_images_per_s": max(rates),
        "rates": [round(x, 1) for x in rates],
        "first_step_s": first_step,
        "peak_rss_mib": peak_rss_mib(),
        "last_loss": loss,
        "versions": framework_versions(framework, args),
    }


def worker_time_to_accuracy(framework: str, model: str, args) -> dict:
    from fmnist_jax import data

    config = experiment_config(model)
    dataset = data.load(config)
    n = len(dataset.train["targets"])
    indices = batch_indices(n, config.batch_size, config.seed, args.max_steps)

    def batch(step):  # the batch data.train_batches gives at `step`
        idx = indices[step].astype(np.int32)
        split = dataset.train
        return {
            "inputs": data.to_model_inputs(split["inputs"][idx]),
            "targets": split["targets"][idx],
            "idx": idx,
        }

    runner = make_runner(framework, config, args)
    runner.init(batch(0)["inputs"], dataset.train)
    start = time.perf_counter()
    step, accuracy, eval_s, curve = 0, 0.0, 0.0, []
    while step < args.max_steps:
        count = min(args.eval_every, args.max_steps - step)
        runner.run([batch(s) for s in range(step, step + count)])
        step += count
        t = time.perf_counter()
        accuracy = runner.evaluate(dataset.test)
        eval_s += time.perf_counter() - t
        curve.append((step, round(accuracy, 4)))
        if accuracy >= args.target:
            break
    wall = time.perf_counter() - start
    return {
        "framework": framework,
        "model": model,
        "batch_size": config.batch_size,
        "reached": accuracy >= args.target,
        "steps": step,
        "accuracy": accuracy,
        "wall_s": wall,
        "eval_s": eval_s,
        "curve": curve,
        "peak_rss_mib": peak_rss_mib(),
        "versions": framework_versions(framework, args),
    }


def framework_versions(framework: str, args) -> dict:
    import importlib.metadata as md

    names = ("jax", "jaxlib", "flax", "optax") if framework == "jax" else ("torch",)
    found = {n: md.version(n) for n in names}
    found["GLIBC_TUNABLES"] = os.environ.get("GLIBC_TUNABLES", "")
    if framework == "jax":
        found["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
        found["loop"] = args.jax_loop
        found["prototype"] = args.prototype or "none (fmnist_jax.models)"
    else:
        import torch

        found["threads"] = torch.get_num_threads()
    return found


# --------------------------------------------------------------------------- parent


def worker_command(
    framework: str, model: str, args, prototype: str, tuned: bool = True
) -> tuple[list, dict]:
    """The worker's command line and environment. Tuned (the default): the process settings of
    `fmnist_jax.runtime`, for both frameworks alike (PyTorch gets the same malloc tunable);
    untuned: neither the XLA flag nor the tunable, as before they existed."""
    from fmnist_jax import runtime

    cmd = [sys.executable, __file__, "--worker", framework, "--models", model]
    cmd += ["--mode", args.mode, "--steps", str(args.steps), "--repeats", str(args.repeats)]
    cmd += ["--warmup", str(args.warmup), "--jax-loop", args.jax_loop]
    cmd += ["--target", str(args.target), "--eval-every", str(args.eval_every)]
    cmd += ["--max-steps", str(args.max_steps), "--prototype", prototype]
    env = dict(os.environ)
    if framework == "jax" and args.xla_flags is not None:
        env["XLA_FLAGS"] = args.xla_flags
    if tuned:
        env["GLIBC_TUNABLES"] = runtime.tuned_glibc_tunables(env.get("GLIBC_TUNABLES", ""))
    else:
        env[runtime.OPT_OUT] = "0"
        env.pop("GLIBC_TUNABLES", None)
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(runtime.XLA_FLAG, "").strip()
    return cmd, env


def contenders(args) -> dict[str, tuple[str, str, bool]]:
    """name -> (framework, prototype, tuned): the project's JAX model, the prototype if asked
    for, PyTorch; with --with-untuned also both frameworks without the runtime settings."""
    out = {}
    for fw in args.frameworks.split(","):
        if fw == "jax" and args.prototype:
            for proto in args.prototype.split(";"):
                out[f"jax:{proto}"] = ("jax", proto, True)
            if args.with_project:
                out["jax"] = ("jax", "", True)
        else:
            out[fw] = (fw, "", True)
        if args.with_untuned:
            out[f"{fw}:untuned"] = (fw, "", False)
    return out


def spawn(name: str, model: str, args) -> dict:
    """Time to accuracy: one worker run to the end."""
    framework, prototype, tuned = contenders(args)[name]
    cmd, env = worker_command(framework, model, args, prototype, tuned)
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{name} {model} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(model: str, args) -> dict:
    """Starts one worker per contender (one at a time, so compilation overlaps no timing),
    then runs their timed blocks in turn, rotating the order each round: a busy neighbour on
    the machine slows every contender alike."""
    workers = {}
    for name, (framework, prototype, tuned) in contenders(args).items():
        cmd, env = worker_command(framework, model, args, prototype, tuned)
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if json.loads(proc.stdout.readline() or "{}").get("ready") is not True:
            sys.exit(f"{name} {model} worker failed to start")
        workers[name] = proc
    names = list(workers)
    for r in range(args.repeats):
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
    print(
        f"{'model':7} {'run':20} {'batch':>5} {'img/s median':>12} {'img/s best':>10}"
        f" {'x PyTorch':>9} {'1st step s':>10} {'peak MiB':>8}"
    )
    for model, r in results.items():
        for name, x in r.items():
            ref = r.get("torch:untuned" if name.endswith(":untuned") else "torch")
            ratio = "-"
            if ref and not name.startswith("torch"):
                pairs = [a / b for a, b in zip(x["rates"], ref["rates"])]
                ratio = f"{statistics.median(pairs):.2f}"
            print(
                f"{model:7} {name:20} {x['batch_size']:>5} {x['images_per_s']:>12.0f}"
                f" {x['best_images_per_s']:>10.0f} {ratio:>9} {x['first_step_s']:>10.2f}"
                f" {x['peak_rss_mib']:>8.0f}"
            )


def print_time_to_accuracy(results: dict, target: float) -> None:
    print(f"time to {target:.1%} test accuracy")
    print(f"{'model':7} {'framework':9} {'reached':>7} {'steps':>6} {'wall s':>8} {'eval s':>7}")
    for model, r in results.items():
        for fw, x in r.items():
            print(
                f"{model:7} {fw:9} {x['reached']!s:>7} {x['steps']:>6} {x['wall_s']:>8.1f}"
                f" {x['eval_s']:>7.1f}"
            )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("throughput", "time-to-accuracy"), default="throughput")
    p.add_argument("--models", default="cnn,mlp,linreg")
    p.add_argument("--frameworks", default="jax,torch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps after the first")
    p.add_argument("--xla-flags", default=None, help="XLA_FLAGS for the JAX worker")
    p.add_argument(
        "--jax-loop",
        choices=("step", "scan"),
        default="step",
        help="step: the project's jitted step per batch; scan: a block of steps as one"
        " jitted lax.scan (a prototype)",
    )
    p.add_argument(
        "--prototype",
        default="",
        help="CONV,POOL[;CONV,POOL...]: the JAX ConvNet with explore.py's convolution"
        " (project|lax|im2col) and pool (project|reshape|slices|window) instead of fmnist_jax.models.ConvNet,"
        " one row each; empty: the project's model",
    )
    p.add_argument(
        "--with-project",
        action="store_true",
        help="with --prototype: also time the project's own JAX model (row `jax`)",
    )
    p.add_argument(
        "--with-untuned",
        action="store_true",
        help="also time each framework without fmnist_jax.runtime's settings (rows `:untuned`)",
    )
    p.add_argument("--target", type=float, default=0.915)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=8000)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    models = args.models.split(",")
    for m in models:
        if m not in MODELS:
            sys.exit(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    if args.worker:
        work = worker_throughput if args.mode == "throughput" else worker_time_to_accuracy
        print(json.dumps(work(args.worker, models[0], args)))
        return
    if args.mode == "time-to-accuracy" and models != ["cnn"]:
        models = ["cnn"] if "cnn" in models else models
    if args.mode == "throughput":
        results = {m: throughput(m, args) for m in models}
    else:
        results = {m: {name: spawn(name, m, args) for name in contenders(args)} for m in models}
    if args.mode == "throughput":
        print_throughput(results)
    else:
        print_time_to_accuracy(results, args.target)
    first = next(iter(results.values()))
    for fw, x in first.items():
        print(f"{fw}: {x['versions']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
