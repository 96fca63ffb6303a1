"""The attack rows of benchmarks/bench.py compare the project's PGD with torchattacks' on a
PyTorch twin: the twin must hold the same weights (same logits) and, with the same rule, reach
the same adversarial images. Needs torch and torchattacks (benchmarks/requirements.txt)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")
sys.path.insert(0, str(REPO / "benchmarks"))
import attack_workers

from fmnist_jax import adversarial, models
from fmnist_jax.config import load_experiment


@pytest.fixture(scope="module")
def twins():
    config = load_experiment("cnn_dropout")
    model = models.create_model(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]

    def logits_fn(x):
        return model.apply({"params": params}, x, train=False)

    images = np.random.default_rng(0).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
    return logits_fn, attack_workers.torch_twin(params), images


def test_twin_holds_the_same_weights(twins):
    logits_fn, net, images = twins
    with torch.no_grad():
        theirs = net(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(theirs, np.asarray(logits_fn(images)), rtol=1e-4, atol=1e-5)


def test_fixed_steps_pgd_matches_torchattacks_pgd(twins):
    logits_fn, net, images = twins
    labels = np.asarray(jnp.argmax(logits_fn(images), -1), np.int32)
    targets = (labels + 1) % 10
    steps = 10
    config = adversarial.method_config("pgd", max_steps=steps).replace(early_stop=False)
    ours = adversarial.attack(logits_fn, images, labels, targets=targets, config=config)
    pgd = torchattacks.PGD(net, eps=0.1, alpha=0.01, steps=steps, random_start=False)
    pgd.set_mode_targeted_by_label(quiet=True)
    theirs = pgd(torch.from_numpy(images), torch.from_numpy(targets.astype(np.int64))).numpy()
    # Same rule, same weights: the images agree but for pixels whose gradient is ~0 (sign ties).
    close = np.abs(np.asarray(ours.adversarial) - theirs) < 1e-4
    assert close.mean() > 0.95, close.mean()
