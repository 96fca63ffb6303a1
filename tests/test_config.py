"""The base config's validation, the experiments found by name or path, the :test variant."""

import pytest

from fmnist_jax import config as config_lib
from fmnist_jax.errors import ConfigError


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("model", "resnet", "config.model='resnet' is unknown"),
        ("optimizer", "adamw", "config.optimizer='adamw' is unknown"),
        ("learning_rate", 0.0, "learning_rate must be a finite number > 0"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number > 0"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("eval_every_steps", -5, "eval_every_steps must be a positive integer"),
        ("checkpoint_every_steps", 0, "checkpoint_every_steps must be a positive integer"),
        ("checkpoint_every_steps", 12, "must be a multiple of config.eval_every_steps=8"),
        ("dropout_rate", 1.0, "dropout_rate must lie in [0, 1)"),
        ("dropout_rate", -0.1, "dropout_rate must lie in [0, 1)"),
        ("dataset", "linear_regression", "cannot train on"),
    ],
)
def test_validate_names_the_first_bad_field(field, value, words):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg[field] = value
    with pytest.raises(ConfigError) as e:
        config_lib.validate(cfg)
    assert words in str(e.value)


def test_every_experiment_and_its_test_variant_validate():
    names = config_lib.experiment_names()
    assert {"cnn", "cnn_dropout", "linreg", "mlp", "mlp_dropout"} <= set(names)  # and any new one
    for name in names:
        full, small = config_lib.load_experiment(name), config_lib.load_experiment(name, "test")
        config_lib.validate(full)
        config_lib.validate(small)
        assert full.name == small.name == name
        assert small.num_train_steps == 24 and full.num_train_steps > 1000


def test_experiment_by_name_equals_experiment_by_path():
    path = config_lib.experiment_path("cnn_dropout")
    assert path.is_file() and path.parent == config_lib.experiments_dir()
    by_name = config_lib.load_experiment("cnn_dropout", "test").to_dict()
    assert config_lib.load_experiment(str(path), "test").to_dict() == by_name


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no experiment 'cnnn'.*experiments are cnn, cnn_dropout"):
        config_lib.load_experiment("cnnn")


def test_shrink_for_test_keeps_the_model_and_swaps_the_data():
    cfg = config_lib.load_experiment("cnn_dropout")
    small = config_lib.shrink_for_test(cfg)
    assert (small.model, small.dropout_rate) == ("cnn", 0.25)
    assert small.dataset == "synthetic" and cfg.dataset == "fashion_mnist"
    linreg = config_lib.shrink_for_test(config_lib.load_experiment("linreg"))
    assert linreg.dataset == "linear_regression" and linreg.regression.num_train == 512


def test_an_unknown_variant_is_an_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown config variant 'tset'; variants are test"):
        config_lib.load_experiment("cnn", "tset")
    assert config_lib.load_experiment("cnn", "test").num_train_steps == 24
