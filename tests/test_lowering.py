"""Every compiled program lowered for GPU (`cuda`) and TPU without such a device, with
`jax.export` (`platforms=[...]`): a program that cannot run there fails here, in CI, before any
device runs it. Several take other code paths off the CPU: `lax.platform_dependent` in
`layers.conv`, the replicas' `vmap` (a CPU unrolls the ConvNet's), the attack's pool of 512.

The programs, each on tiny inputs, in a fresh process with two CPU devices (so that the batch
is sharded over `data`, replicas over `replica` and the attack's images over both devices by
its `shard_map`): the train step, a scan chunk, evaluation (the host-batch eval step and the
resident eval scan), the same with two replicas, the attack's pooled while loop (a descent
method and the minimum-L1 search) over both devices. `PROGRAMS` names how each is built from
the package's public entry points (`Steps(config, mesh)`'s attributes, `steps.all_finite`,
`make_attack`, `p_target_history` for the attack curves).
"""

import json
import textwrap

import jax
import numpy as np
import pytest

from tests.conftest import run_on_devices

PLATFORMS = ("cuda", "tpu")
DEVICES = 2
# What is counted in each lowered module (StableHLO text): operations, the body of a
# `shard_map` (Shardy's or GSPMD's spelling), a batch of 512 images (the attack's pool).
COUNTED = {
    "convolution": ("stablehlo.convolution",),
    "dot_general": ("stablehlo.dot_general",),
    "while": ("stablehlo.while",),
    "shard_map": ("sdy.manual_computation", "@SPMDFullToShardShape"),
    "pool_of_512": ("tensor<512x28x28x1xf32>",),
}


# --------------------------------------------------------------------------- the programs


def _config(**overrides):
    """The ConvNet with dropout at its test size (the model whose layers differ by platform)."""
    from fmnist_jax import config as config_lib

    config = config_lib.load_experiment("cnn_dropout", "test")
    config.update(overrides)
    return config


def _steps(config):
    """`Steps` for `config` on every device, with its initial state (replica axis first) and
    dropout keys, as the train loop builds them."""
    from fmnist_jax import train

    return train.build(config, (28, 28, 1))


def _images(n: int, dtype=np.float32):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
    if dtype == np.uint8:
        images = (images * 255).astype(np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int32)


def train_step(config):
    steps, state, rng = _steps(config)
    r, b = config.num_replicas, config.batch_size
    images, labels = _images(r * b)
    batch = {"inputs": images.reshape(r, b, 28, 28, 1), "targets": labels.reshape(r, b)}
    return steps.train, (state, batch, rng, steps.empty_accumulator())


def train_chunk(config, length: int = 2):
    steps, state, rng = _steps(config)
    images, labels = _images(4 * config.batch_size, np.uint8)
    idx = np.zeros((length, config.num_replicas, config.batch_size), np.int32)
    return steps.train_chunk, (state, steps.empty_accumulator(), idx, images, labels, rng)


def eval_step(config):
    steps, state, _ = _steps(config)
    images, labels = _images(config.eval_batch_size)
    batch = {"inputs": images, "targets": labels, "mask": np.ones(len(labels), bool)}
    return steps.eval, (state, batch)


def evaluate_resident(config, batches: int = 2):
    steps, state, _ = _steps(config)
    images, labels = _images(batches * config.eval_batch_size, np.uint8)
    idx = np.arange(len(labels), dtype=np.int32).reshape(batches, config.eval_batch_size)
    return steps.evaluate_resident, (state, idx, np.ones(idx.shape, bool), images, labels)


def all_finite(config):
    from fmnist_jax import steps as steps_lib

    _, state, _ = _steps(config)
    return steps_lib.all_finite, (state.params,)


def _logits_fn():
    """The ConvNet's forward pass with fresh weights, as the attack takes a trained one."""
    from fmnist_jax import models

    model = models.create_model(_config())
    params = model.init(jax.random.PRNGKey(0), _images(1)[0])["params"]
    return lambda x: model.apply({"params": params}, x)


def attack_curves(num_steps: int = 3):
    """p(target) over each step of the exercise's search, for the attack figure."""
    from fmnist_jax.adversarial import presets, search

    logits_fn, config = _logits_fn(), presets.METHODS["exercise"]

    def history(images, targets):
        return search.p_target_history(logits_fn, images, targets, config, num_steps)

    return jax.jit(history), _images(4)


def attack_program(method: str):
    """The attack's batch program over every local device (one pool each, `shard_map`), with
    an accelerator's pool size and enough images to fill one pool per device."""
    from fmnist_jax.adversarial import presets, search

    logits_fn = _logits_fn()
    pool = presets.pool_size_for("gpu")
    attack = search.make_attack(logits_fn, presets.METHODS[method], pool_size=pool)
    images, labels = _images(pool * len(attack.devices))
    return attack.program, attack.arguments(images, labels, jax.random.key(0))


REPLICAS = {"num_replicas": 2, "replica_map": "vmap"}  # what "auto" picks off the CPU
PROGRAMS = {
    "train_step": lambda: train_step(_config()),
    "train_chunk": lambda: train_chunk(_config()),
    "eval_step": lambda: eval_step(_config()),
    "evaluate_resident": lambda: evaluate_resident(_config()),
    "replicas_train_step": lambda: train_step(_config(**REPLICAS)),
    "replicas_train_chunk": lambda: train_chunk(_config(**REPLICAS)),
    "replicas_eval_step": lambda: eval_step(_config(**REPLICAS)),
    "replicas_evaluate_resident": lambda: evaluate_resident(_config(**REPLICAS)),
    "all_finite": lambda: all_finite(_config()),
    "attack_sign": lambda: attack_program("sign"),
    "attack_minl1": lambda: attack_program("minl1"),
    "attack_curves": attack_curves,
}


def lower_all(path: str) -> None:
    """Every program of `PROGRAMS` exported for the CPU and `PLATFORMS`; what each gave
    (devices and operation counts, or the error) as JSON in `path`."""
    assert jax.device_count() == DEVICES, jax.devices()
    results = {}
    for name, build in PROGRAMS.items():
        fn, args = build()
        results[name] = {}
        for platform in ("cpu", *PLATFORMS):
            try:
                exported = jax.export.export(fn, platforms=[platform])(*args)
            except Exception as e:  # noqa: BLE001 - reported by the test of that program
                results[name][platform] = {"error": f"{type(e).__name__}: {e}"[:3000]}
                continue
            text = exported.mlir_module()
            results[name][platform] = {
                "devices": exported.nr_devices,
                **{k: sum(text.count(w) for w in spelled) for k, spelled in COUNTED.items()},
            }
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    path = tmp_path_factory.mktemp("lowering") / "lowered.json"
    script = "import sys\nfrom tests.test_lowering import lower_all\nlower_all(sys.argv[1])\n"
    run_on_devices(textwrap.dedent(script), path, DEVICES)
    return json.loads(path.read_text())


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_program_lowers_for_gpu_and_tpu(lowered, name, platform):
    result = lowered[name][platform]
    assert "error" not in result, result.get("error")
    assert result["devices"] == lowered[name]["cpu"]["devices"]


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_lowers_for_the_cpu(lowered, name):
    assert "error" not in lowered[name]["cpu"], lowered[name]["cpu"].get("error")
    # sharded over both devices (the attack curves' program runs on one)
    assert lowered[name]["cpu"]["devices"] == (1 if name == "attack_curves" else DEVICES)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_accelerators_get_xla_convolutions_for_every_gradient(lowered, platform):
    """`layers.conv`'s CPU branch writes the first layer's input gradient (the attack's) as
    products over its taps; a GPU or TPU gets autodiff's convolutions (more of them, fewer
    products). Training computes no input gradient: its ops are the same on every platform
    (the CPU branch changes only the layouts of its kernel gradients)."""
    cpu, other = lowered["attack_sign"]["cpu"], lowered["attack_sign"][platform]
    assert other["convolution"] > cpu["convolution"]
    assert other["dot_general"] < cpu["dot_general"]
    for key in ("convolution", "dot_general"):
        assert lowered["train_step"][platform][key] == lowered["train_step"]["cpu"][key]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_replicas_are_one_vmapped_program_off_the_cpu(lowered, platform):
    """Two replicas, vmapped: as many convolutions as one replica (batched), not two copies."""
    for step in ("train_step", "train_chunk", "eval_step", "evaluate_resident"):
        one, two = lowered[step][platform], lowered[f"replicas_{step}"][platform]
        assert two["convolution"] == one["convolution"], step


@pytest.mark.parametrize("platform", PLATFORMS)
def test_scans_and_the_attack_are_loops_on_the_device(lowered, platform):
    for name in ("train_chunk", "evaluate_resident", "attack_sign", "attack_minl1"):
        assert lowered[name][platform]["while"] >= 1, name


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_attack_runs_one_pool_of_512_on_each_device(lowered, platform):
    for name in ("attack_sign", "attack_minl1"):
        assert lowered[name][platform]["shard_map"] == 1, name
        assert lowered[name][platform]["pool_of_512"] > 0, name
