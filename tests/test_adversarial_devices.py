"""The attack's pool split over several local devices (`pool.over_devices`): in a fresh process
with 8 CPU devices, the sharded program gives every image the search the one-device program
gives it, for a descent method and for the minimum-L1 search, also when the images do not
divide over the devices."""

import textwrap

import numpy as np
import pytest

from tests.conftest import run_on_devices

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from fmnist_jax.adversarial import presets, search
    from tests.test_adversarial_search import linear_logits_fn, linear_params
    assert jax.local_device_count() == int(sys.argv[2]), jax.devices()
    logits_fn = linear_logits_fn(*linear_params())
    images = np.random.default_rng(1).uniform(0, 1, (11, 28, 28, 1)).astype(np.float32)
    labels = np.asarray(jnp.argmax(logits_fn(images), -1), np.int32)
    out = {}
    for method in ("sign", "minl1"):
        config = presets.METHODS[method]
        for name, devices in (("all", None), ("one", jax.local_devices()[:1])):
            attack = search.make_attack(logits_fn, config, pool_size=2, devices=devices)
            args = attack.arguments(images, labels, jax.random.key(3))
            text = str(jax.make_jaxpr(attack.program)(*args))
            result = attack(images, labels, jax.random.key(3))
            out[f"{method}_{name}_shard_map"] = "shard_map" in text
            out[f"{method}_{name}_devices"] = len(attack.devices)
            for field in ("adversarial", "steps", "targets", "p_target", "success", "l1"):
                out[f"{method}_{name}_{field}"] = np.asarray(getattr(result, field))
    np.savez(sys.argv[1], **out)
    """
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("devices") / "results.npz"
    run_on_devices(SCRIPT, path, 8)
    return dict(np.load(path))


@pytest.mark.parametrize("method", ["sign", "minl1"])
def test_eight_devices_give_every_image_the_one_device_search(results, method):
    r = {k.removeprefix(method + "_"): v for k, v in results.items() if k.startswith(method)}
    assert (r["all_devices"], r["one_devices"]) == (8, 1)
    assert r["all_shard_map"] and not r["one_shard_map"]
    assert r["all_adversarial"].shape == (11, 28, 28, 1)
    np.testing.assert_array_equal(r["all_targets"], r["one_targets"])
    np.testing.assert_array_equal(r["all_steps"], r["one_steps"])
    np.testing.assert_array_equal(r["all_success"], r["one_success"])
    np.testing.assert_allclose(r["all_adversarial"], r["one_adversarial"], atol=1e-5)
    np.testing.assert_allclose(r["all_p_target"], r["one_p_target"], rtol=1e-4)
    np.testing.assert_allclose(r["all_l1"], r["one_l1"], rtol=1e-4)
    assert r["all_steps"].min() > 0  # the searches did run
