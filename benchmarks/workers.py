"""One benchmark worker: a (model, framework) pair trained in its own process, as `bench.py`
starts it (`bench.py --worker jax|torch --models MODEL ...`), reporting JSON lines on stdout.

The JAX side is the loop every experiment runs: the experiment's config, its initial state
(`train.initial_state`) and `feeds.DeviceFeed`, which keeps both splits on the device and runs a
block of steps as one `lax.scan` (`steps.train_chunk`), reading the loss once per block. The
PyTorch side is its best CPU loop on the same in-memory data: the training split converted to
one float tensor once, each step's batch gathered by the same indices (`data.train_indices`),
the twin model of `torch_models.py` (same layers, loss, optimizer, batch, learning rate).

Throughput protocol: the worker compiles and warms up, prints `{"ready": true}`, then times one
block of `--steps` steps per `run` line on stdin (printing `{"rate": ...}`), and prints its
result on `done`.
"""

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "fashion_mnist"
# Row -> experiment: each model at the batch size and learning rate its experiment trains with
# (the dropout variants: they cost the most of each pair).
MODELS = {"cnn": "cnn_dropout", "mlp": "mlp_dropout", "linreg": "linreg"}


def data_dir() -> Path:
    return Path(os.environ.get("FMNIST_DATA_DIR") or DEFAULT_DATA_DIR)


def experiment_config(experiment: str):
    from fmnist_jax import config as config_lib

    config = config_lib.load_experiment(experiment)
    if config.dataset == "fashion_mnist":
        config.data_dir = str(data_dir())
    return config


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def framework_versions(framework: str) -> dict:
    import importlib.metadata as md

    names = ("jax", "jaxlib", "flax", "optax") if framework == "jax" else ("torch",)
    found = {n: md.version(n) for n in names}
    found["GLIBC_TUNABLES"] = os.environ.get("GLIBC_TUNABLES", "")
    if framework == "jax":
        found["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    else:
        import torch

        found["threads"] = torch.get_num_threads()
    return found


class JaxRunner:
    """The experiment's train state on the device-resident chunked loop, one replica."""

    def __init__(self, config, dataset, block: int):
        from fmnist_jax import feeds, train

        shape = dataset.train["inputs"].shape[1:]
        self.steps, self.state, self.rng = train.build(config, shape)
        self.feed = feeds.DeviceFeed(self.steps, dataset, config, 0, block)

    def run(self, count: int) -> float:
        """`count` steps as the loop runs them; the block's mean loss, read once."""
        acc = self.steps.empty_accumulator()
        self.state, acc = self.feed.train(self.state, acc, self.rng, count)
        return float(acc.metrics.loss.compute()[0])


class TorchRunner:
    """The twin model; the split as one tensor, each batch gathered by index."""

    def __init__(self, config, dataset, block: int):
        import torch
        import torch_models

        from fmnist_jax import data

        torch.manual_seed(config.seed)
        self.torch, self.tm = torch, torch_models
        self.regression = config.model == "linear_regression"
        inputs = dataset.train["inputs"]
        if inputs.dtype != "float32":
            inputs = data.to_model_inputs(inputs)
        self.inputs = torch.from_numpy(inputs)
        targets = torch.from_numpy(dataset.train["targets"])
        self.targets = targets if self.regression else targets.long()
        self.model = torch_models.create_model(config, int(inputs[0].size))
        self.optimizer = torch_models.create_optimizer(config, self.model.parameters())
        n = len(dataset.train["targets"])
        self.indices = data.train_indices(n, config.batch_size, config.seed)

    def run(self, count: int) -> float:
        torch, loss = self.torch, None
        self.model.train()
        for _ in range(count):
            idx = torch.from_numpy(next(self.indices))
            x, y = self.inputs[idx], self.targets[idx]
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
            loss = self.tm.loss_fn(outputs, y, self.regression)
            loss.backward()
            self.optimizer.step()
            if not self.regression:  # the project's step also counts the batch's hits
                (outputs.detach().argmax(1) == y).sum()
        return loss.item()


def worker_throughput(framework: str, model: str, args) -> dict:
    """Compiles and warms up (one block), says `ready`, then times one block of `--steps`
    steps per `run` line on stdin (the parent interleaves the contenders' blocks); `done`
    ends it."""
    from fmnist_jax import data

    config = experiment_config(MODELS[model])
    dataset = data.load(config)
    runner = (JaxRunner if framework == "jax" else TorchRunner)(config, dataset, args.steps)
    t = time.perf_counter()
    runner.run(args.steps)
    first_block = time.perf_counter() - t
    print(json.dumps({"ready": True}), flush=True)
    rates, loss = [], None
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        loss = runner.run(args.steps)
        rates.append(args.steps * config.batch_size / (time.perf_counter() - t))
        print(json.dumps({"rate": rates[-1]}), flush=True)
    return {
        "framework": framework,
        "model": model,
        "experiment": MODELS[model],
        "batch_size": config.batch_size,
        "images_per_s": statistics.median(rates),
        "best_images_per_s": max(rates),
        "rates": [round(x, 1) for x in rates],
        "first_block_s": first_block,
        "peak_rss_mib": peak_rss_mib(),
        "last_loss": loss,
        "versions": framework_versions(framework),
    }
