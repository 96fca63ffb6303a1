"""The attack rows of `bench.py`: the project's PGD against torchattacks' on the same weights,
and the project's minimum-L1 search alone.

Rows (`bench.py --models attack-pgd100,attack-pgd,attack-minl1`):

    attack-pgd100  targeted PGD, epsilon 0.1, step 0.01, 100 steps, no random start, batch 100:
                   the project's batch program in its fixed-steps mode (`early_stop=False`, a
                   pool of 100) and
                   torchattacks 3.5.1's `PGD` on the PyTorch twin (`torch_models.ConvNet`) holding
                   the same weights; rate = image-steps/s (one forward and backward of one image)
    attack-pgd     the project's preset "pgd" as the command line runs it (stops at
                   p(target) >= 0.95, a pool of 32) against the same torchattacks run; rate =
                   attacks/s, so the ratio is what the early stop buys end to end
    attack-minl1   the project's preset "minl1" (a fixed budget: every search takes its
                   max_steps, 300 model calls) as the command line runs it (a pool of 32), JAX
                   only; rate = attacks/s, with the success rate and the median L1 of the
                   successes beside it, so that a change trading quality for speed shows

Both sides attack the first 100 training images of the offline copy with the same targets
(`adversarial.draw_targets` of key 0). The weights are the trained checkpoint in
`$BENCH_ATTACK_WORKDIR` (default runs/cnn_dropout), or a fresh initialisation when there is
none (the fixed-steps rate does not depend on them; the early-stopping one does).
"""

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = ("attack-pgd100", "attack-pgd", "attack-minl1")
JAX_ONLY = ("attack-minl1",)  # no torchattacks counterpart
BATCH, EPSILON, ALPHA, STEPS = 100, 0.1, 0.01, 100


def workdir() -> Path:
    return Path(os.environ.get("BENCH_ATTACK_WORKDIR") or ROOT / "runs" / "cnn_dropout")


def load_params(config):
    """(flax params, description): the checkpoint's, or a fresh initialisation's."""
    import jax
    import jax.numpy as jnp

    from fmnist_jax import checkpoints, models

    if (workdir() / "checkpoints").is_dir():
        _, _, variables = checkpoints.load_trained(workdir())
        return variables["params"], f"trained checkpoint {workdir()}"
    model = models.create_model(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    return params, "fresh initialisation (no checkpoint)"


def torch_twin(params):
    """`torch_models.ConvNet` holding the Flax ConvNet's weights (HWIO -> OIHW, (in, out) ->
    (out, in)); the twin flattens in NHWC order, as Flax does."""
    import torch
    import torch_models

    net = torch_models.ConvNet()
    pairs = {"conv1": "Conv_0", "conv2": "Conv_1", "fc1": "Dense_0", "fc2": "Dense_1"}
    with torch.no_grad():
        for name, flax_name in pairs.items():
            layer, p = getattr(net, name), params[flax_name]
            kernel = np.asarray(p["kernel"])
            kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    return net.eval()


def attack_inputs(config):
    """The first BATCH training images (float32 NHWC in [0, 1]), labels and targets."""
    import jax
    import jax.numpy as jnp

    from fmnist_jax import adversarial, data

    split = data.load(config).train
    images = data.to_model_inputs(split["inputs"][:BATCH])
    labels = np.asarray(split["targets"][:BATCH], np.int32)
    targets = adversarial.draw_targets(jax.random.key(0), jnp.asarray(labels))
    return images, labels, np.asarray(targets)


class JaxAttack:
    """The project's batch program: fixed steps (attack-pgd100) or the preset (attack-pgd)."""

    def __init__(self, config, row: str):
        import jax

        from fmnist_jax import adversarial, models

        self.jax = jax
        params, self.weights = load_params(config)
        model = models.create_model(config)

        def logits_fn(x):
            return model.apply({"params": params}, x, train=False)

        name = "minl1" if row == "attack-minl1" else "pgd"
        method, pool_size = adversarial.method_config(name), adversarial.DEFAULT_POOL_SIZE
        self.fixed = row == "attack-pgd100"
        if self.fixed:  # torchattacks' batch: all 100 searches in flight, 100 steps each
            method, pool_size = method.replace(max_steps=STEPS, early_stop=False), BATCH
        self.attack = adversarial.make_attack(logits_fn, method, pool_size)
        self.images, self.labels, self.targets = attack_inputs(config)
        self.result = None

    def run(self) -> float:
        """One attack of the batch; returns the work done (image-steps, or attacks)."""
        key = self.jax.random.key(0)
        self.result = self.attack(self.images, self.labels, key, self.targets)
        self.jax.block_until_ready(self.result)
        return float(np.sum(self.result.steps)) if self.fixed else float(BATCH)


class TorchAttack:
    """torchattacks' targeted PGD (no random start) on the twin with the same weights."""

    def __init__(self, config, row: str):
        import torch
        import torchattacks

        params, self.weights = load_params(config)
        self.net = torch_twin(params)
        self.pgd = torchattacks.PGD(
            self.net, eps=EPSILON, alpha=ALPHA, steps=STEPS, random_start=False
        )
        self.pgd.set_mode_targeted_by_label(quiet=True)
        images, _, targets = attack_inputs(config)
        self.images = torch.from_numpy(images)
        self.targets = torch.from_numpy(targets.astype(np.int64))
        self.per_run = float(BATCH * STEPS) if row == "attack-pgd100" else float(BATCH)
        self.adversarial = None

    def run(self) -> float:
        self.adversarial = self.pgd(self.images, self.targets)
        return self.per_run


def worker_attack(framework: str, row: str, config) -> dict:
    """The throughput protocol of `workers.worker_throughput` for one attack row: one warm-up
    attack (compilation for JAX), `ready`, then one timed attack of the batch per `run` line."""
    import importlib.metadata
    import json
    import statistics
    import sys
    import time

    from workers import framework_versions, peak_rss_mib  # one way: workers never imports this

    side = (JaxAttack if framework == "jax" else TorchAttack)(config, row)
    t = time.perf_counter()
    side.run()
    first = time.perf_counter() - t
    print(json.dumps({"ready": True}), flush=True)
    rates = []
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        work = side.run()
        rates.append(work / (time.perf_counter() - t))
        print(json.dumps({"rate": rates[-1]}), flush=True)
    out = {
        "framework": "torchattacks" if framework == "torch" else framework,
        "model": row,
        "batch_size": BATCH,
        "images_per_s": statistics.median(rates),
        "best_images_per_s": max(rates),
        "rates": [round(x, 1) for x in rates],
        "first_step_s": first,
        "weights": side.weights,
        "peak_rss_mib": peak_rss_mib(),
        "versions": framework_versions(framework),
    }
    if framework == "torch":
        out["versions"]["torchattacks"] = importlib.metadata.version("torchattacks")
    if framework == "jax":
        out["median_steps"] = float(np.median(np.asarray(side.result.steps)))
        success = np.asarray(side.result.success)
        out["success"] = float(np.mean(success))
        if success.any():
            out["median_l1"] = float(np.median(np.asarray(side.result.l1)[success]))
    return out
