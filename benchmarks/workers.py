"""One benchmark worker: a (model, framework) pair trained in its own process, as `bench.py`
starts it (`bench.py --worker jax|torch --models MODEL ...`), reporting JSON lines on stdout.

The JAX side is the project's own code path: `models.create_model`, `train.create_train_state`
and the jitted `train.Steps` of an experiment config, fed by `data.train_batches`. The PyTorch
side is `torch_models.py`: the same layers, loss, optimizer, batch and learning rate.

Throughput protocol: the worker compiles and warms up, prints `{"ready": true}`, then times one
block of `--steps` steps per `run` line on stdin (printing `{"rate": ...}`), and prints its
result on `done`. Time to accuracy: it trains to the end and prints its result.
"""

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from attack_workers import ATTACKS, worker_attack

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "fashion_mnist"
# model name -> (experiment, overrides). The ConvNet and MLP use the batch and lr;
# `NAME@B` is the same model at batch size B (`cnn@64`, `mlp@64`: their experiments' own batch).
MODELS = {
    "cnn": ("cnn_dropout", {"batch_size": 128, "learning_rate": 1e-3}),
    "mlp": ("mlp_dropout", {"batch_size": 128, "learning_rate": 1e-3}),
    "linreg": ("linreg", {}),
}


def parse_model(model: str) -> tuple[str, dict]:
    """`cnn` or `cnn@64` -> (experiment, overrides); ValueError for an unknown one. The attack
    rows (`attack_workers.ATTACKS`) attack the ConvNet with dropout."""
    if model in ATTACKS:
        return "cnn_dropout", {}
    name, _, batch = model.partition("@")
    if name not in MODELS or (batch and not (batch.isdigit() and int(batch) > 0)):
        raise ValueError(
            f"unknown model {model!r}; choose from {', '.join(MODELS)}, each optionally with"
            f" @BATCH (e.g. cnn@64), or {', '.join(ATTACKS)}"
        )
    experiment, overrides = MODELS[name]
    return experiment, {**overrides, **({"batch_size": int(batch)} if batch else {})}


def data_dir() -> Path:
    return Path(os.environ.get("FMNIST_DATA_DIR") or DEFAULT_DATA_DIR)


def experiment_config(model: str):
    from fmnist_jax import config as config_lib

    name, overrides = parse_model(model)
    config = config_lib.load_experiment(name)
    config.update(overrides)
    if config.dataset == "fashion_mnist":
        config.data_dir = str(data_dir())
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


# --------------------------------------------------------------------------- JAX


class JaxRunner:
    """The project's train state and jitted steps for one config."""

    def __init__(self, config, loop: str = "step", prototype: str = ""):
        import jax

        from fmnist_jax import models, train

        self.jax, self.train, self.config, self.loop = jax, train, config, loop
        self.steps = train.Steps(config, train.make_mesh())  # one replica: a plain run
        init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        self.dropout_rng = dropout_rng[None]  # the steps take a leading replica axis
        self.model = models.create_model(config)
        if prototype and config.model == "cnn":  # a proposed models.py change, not yet merged
            import variants

            conv, pool = prototype.split(",")
            self.model = variants.make_convnet(conv, config.dropout_rate, pool)
        self.init_rng, self.state, self._scan = init_rng, None, None

    def init(self, example_inputs, train_split=None):
        self.train_split = train_split
        state = self.train.create_train_state(
            self.config, self.model, example_inputs.shape[1:], self.init_rng
        )
        from fmnist_jax import replicas

        self.state = self.steps.place(replicas.stack([state]))

    def run(self, batches) -> float:
        """Trains on `batches` as the project's loop does (`--jax_loop=step`): metrics
        accumulate on the device (`steps.accumulate_train_step`) and the loss is read once, at
        the end of the block. `--jax_loop=sync` reads it back after every step, as the loop of
        the previous round did (its non-finite check): the before/after comparison of the
        per-step host sync. Returns the mean loss of the block."""
        if self.loop == "scan":
            return self._run_scan(batches)
        acc = self.steps.empty_accumulator()
        for batch in batches:
            batch = {"inputs": batch["inputs"][None], "targets": batch["targets"][None]}
            self.state, acc = self.steps.train(self.state, batch, self.dropout_rng, acc)
            if self.loop == "sync":
                float(acc.metrics.loss.total[0])
        return float(acc.metrics.loss.compute()[0])

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
        one = jax.tree.map(lambda v: v[0], self.state)  # the plain step: no replica axis
        one, losses = self._scan(one, idx, self.dropout_rng[0])
        self.state = jax.tree.map(lambda v: v[None], one)
        return float(losses[-1])

    def evaluate(self, test_split) -> float:
        (metrics,) = self.train.evaluate(self.steps, self.state, test_split, 1000)
        return metrics["accuracy"]

    def sync(self):
        self.jax.block_until_ready(self.state)


# --------------------------------------------------------------------------- PyTorch


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


# --------------------------------------------------------------------------- worker entry


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


def run_worker(framework: str, model: str, args) -> None:
    """The worker's whole life: the project's CPU settings (unless the parent opted out, as for
    the `:untuned` rows), the timing of `args.mode`, its result as the last stdout line."""
    from fmnist_jax import runtime

    runtime.configure_cpu()  # before jax is imported, as the project's command lines do
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if model in ATTACKS:
        result = worker_attack(framework, model, args, experiment_config(model))
    elif args.mode == "throughput":
        result = worker_throughput(framework, model, args)
    else:
        result = worker_time_to_accuracy(framework, model, args)
    print(json.dumps(result), flush=True)
