"""Model shapes, parameter counts, dropout switching."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fmnist_jax import models
from fmnist_jax.errors import ConfigError


def _count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def _init(model, shape):
    return model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)["params"]


def test_convnet_shape_and_parameter_count():
    model = models.ConvNet()
    params = _init(model, (2, 28, 28, 1))
    # conv1 3*3*1*32+32, conv2 3*3*32*64+64, dense 7*7*64*128+128, out 128*10+10
    assert _count(params) == 320 + 18_496 + 401_536 + 1_290
    assert model.apply({"params": params}, jnp.ones((2, 28, 28, 1))).shape == (2, 10)


def test_mlp_shape_and_parameter_count():
    model = models.MLP(hidden_size=512)
    params = _init(model, (3, 28, 28, 1))
    assert _count(params) == 784 * 512 + 512 + 512 * 10 + 10
    assert model.apply({"params": params}, jnp.ones((3, 28, 28, 1))).shape == (3, 10)


def test_linear_regression_shape():
    model = models.LinearRegression()
    params = _init(model, (4, 20))
    assert _count(params) == 21
    assert model.apply({"params": params}, jnp.ones((4, 20))).shape == (4,)


@pytest.mark.parametrize("model", [models.MLP(dropout_rate=0.5), models.ConvNet(dropout_rate=0.5)])
def test_dropout_acts_only_in_training(model):
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    params = _init(model, x.shape)
    out = lambda train, seed: model.apply(
        {"params": params}, x, train=train, rngs={"dropout": jax.random.PRNGKey(seed)}
    )
    np.testing.assert_array_equal(out(False, 0), out(False, 1))
    np.testing.assert_array_equal(out(False, 0), model.apply({"params": params}, x))
    assert not np.allclose(out(True, 0), out(False, 0))
    assert not np.allclose(out(True, 0), out(True, 1))


def test_no_dropout_means_train_equals_eval():
    model = models.ConvNet(dropout_rate=0.0)
    x = jnp.ones((2, 28, 28, 1))
    params = _init(model, x.shape)
    np.testing.assert_array_equal(
        model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}),
        model.apply({"params": params}, x, train=False),
    )


def test_sigmoid_activation_in_mlp():
    model = models.MLP(hidden_size=8, activation="sigmoid")
    params = _init(model, (2, 4))
    x = jnp.ones((2, 4))
    h = jax.nn.sigmoid(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    expected = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-6)


def test_create_model_by_name():
    cfg = ml_collections.ConfigDict(
        {
            "model": "mlp",
            "hidden_size": 16,
            "num_classes": 10,
            "dropout_rate": 0.1,
            "activation": "relu",
        }
    )
    assert models.create_model(cfg) == models.MLP(16, 10, 0.1, "relu")
    cfg.model = "fmnist_jax.models.MLP"  # any module's class by its import path
    assert models.create_model(cfg) == models.MLP(16, 10, 0.1, "relu")
    cfg.model = "resnet"
    with pytest.raises(ConfigError, match="config.model='resnet' is neither one of"):
        models.create_model(cfg)


def test_a_model_field_the_config_lacks_names_the_model_and_the_field():
    class Needs(models.nn.Module):
        width: int  # no default

        def __call__(self, x, train=False):
            return x

    models.MODELS["needs"] = Needs
    try:
        cfg = ml_collections.ConfigDict({"model": "needs"})
        with pytest.raises(ConfigError, match=r"model 'needs' \(Needs\) needs config.width"):
            models.create_model(cfg)
        cfg.width = 3
        assert models.create_model(cfg).width == 3
    finally:
        del models.MODELS["needs"]
    # A field with a default the config lacks keeps its default.
    bn = models.create_model(ml_collections.ConfigDict({"model": "cnn_bn"}))
    assert bn.bn_momentum == 0.9
