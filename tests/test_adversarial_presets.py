"""Tests of fmnist_jax.adversarial.presets: the config checks, the presets, the command line's
overrides and method lists. Plain data: importing presets loads no JAX (checked below)."""

import math
import subprocess
import sys

import pytest

from fmnist_jax.adversarial import presets
from fmnist_jax.errors import ConfigError
from tests.conftest import REPO


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": 2.5}, "max_steps"),
        ({"update": "sgd_momentum"}, "unknown update"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"l1_weight": -0.1}, "l1_weight"),
        ({"l1_reduction": "max"}, "unknown l1_reduction"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"clip": (1.0, 0.0)}, "clip"),
        ({"update": "minl1", "epsilon": 0.1}, "minl1"),
    ],
)
def test_validate_names_the_field_a_search_cannot_run_with(changes, message):
    with pytest.raises(ConfigError, match=message):
        presets.validate(presets.AttackConfig().replace(**changes))


def test_every_preset_is_valid_and_the_defaults_are_presets():
    for config in presets.METHODS.values():
        presets.validate(config)
    assert presets.DEFAULT_METHOD in presets.METHODS
    assert set(presets.DEFAULT_METHODS) <= set(presets.METHODS)
    assert presets.DEFAULT_METHODS[0] == "exercise"  # the exercise's rule first: the reported one
    assert "minl1" in presets.DEFAULT_METHODS
    assert set(presets.SLOW_METHODS) <= set(presets.DEFAULT_METHODS)
    exercise = presets.METHODS["exercise"]
    assert (exercise.update, exercise.learning_rate, exercise.l1_weight) == ("gd", 0.001, 0.05)
    assert exercise.l1_reduction == "mean"


def test_describe_names_the_rule():
    rule = presets.describe(presets.METHODS["exercise"])
    assert rule == "gradient descent, lr 0.001, CE(target) + 0.05 * ||x' - x||_1 (mean over pixels)"
    assert "||x' - x||_inf <= 0.1" in presets.describe(presets.METHODS["pgd"])
    assert "minimum-L1" in presets.describe(presets.METHODS["minl1"])


def test_config_is_hashable_and_replace_leaves_the_original_alone():
    config = presets.AttackConfig()
    changed = config.replace(max_steps=7)
    assert hash(config) == hash(presets.AttackConfig()) and config.max_steps == 300
    assert changed.max_steps == 7 and changed != config


def test_method_config_applies_overrides_only_where_they_fit():
    assert presets.method_config("sign", threshold=0.5).threshold == 0.5
    assert presets.method_config("pgd", max_steps=50).max_steps == 50
    assert presets.method_config("fgsm", max_steps=50).max_steps == 1  # FGSM stays one step
    fgsm = presets.method_config("fgsm", epsilon=0.05)
    assert fgsm.epsilon == 0.05 and fgsm.learning_rate == 0.05  # FGSM's step is its radius
    pgd = presets.method_config("pgd", epsilon=0.05)
    assert pgd.epsilon == 0.05 and pgd.learning_rate == presets.METHODS["pgd"].learning_rate
    assert presets.method_config("sign", epsilon=0.05).epsilon is None  # no radius to change
    assert presets.method_config("gd", l1_reduction="sum").l1_reduction == "sum"
    assert presets.method_config("pgd", l1_reduction="sum").l1_reduction == "mean"  # no L1 term
    assert presets.method_config("sign") == presets.METHODS["sign"]


def test_method_config_refuses_unknown_methods_and_bad_overrides():
    with pytest.raises(ConfigError, match="unknown method 'cw'"):
        presets.method_config("cw")
    with pytest.raises(ConfigError, match="threshold"):
        presets.method_config("sign", threshold=1.5)
    with pytest.raises(ConfigError, match="max_steps"):
        presets.method_config("sign", max_steps=0)


def test_parse_methods_reads_names_or_all_and_refuses_unknown_ones():
    assert presets.parse_methods("all") == list(presets.METHODS)
    assert presets.parse_methods(" gd , pgd ") == ["gd", "pgd"]
    with pytest.raises(ConfigError, match="unknown method 'cw'"):
        presets.parse_methods("gd,cw")


def test_presets_import_no_jax():
    code = "import sys, fmnist_jax.adversarial.presets; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_pool_size_follows_the_platform():
    assert presets.pool_size_for("cpu") == presets.DEFAULT_POOL_SIZE == 32
    assert presets.pool_size_for("gpu") == presets.pool_size_for("tpu") > 32
