"""The exercise's three models as pure Flax linen modules.

Every model maps a batch of inputs to outputs: `LinearRegression` gives one real value per
example, `MLP` and `ConvNet` give class logits. `train=True` switches dropout on; it then needs a
`'dropout'` PRNG stream (`rngs={'dropout': key}`); `dropout_rate=` at call time overrides the
module's rate with a value that may be traced (a population member's, fmnist_jax/population.py).
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax import layers
from fmnist_jax.layers import max_pool_2x2

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    # sigma' = sigma - sigma^2 computed from the saved forward value (exercise section 1.2).
    "sigmoid": layers.sigmoid,
}


class Dropout(nn.Dropout):
    """Flax's dropout, whose rate may also be a traced value. A Python rate takes Flax's own
    code; a traced one draws the same mask from the same key (`make_rng` in a module of the
    same name), so a member at rate p trains as the plain run at rate p."""

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        if isinstance(self.rate, int | float):
            return super().__call__(inputs, deterministic, rng)
        if nn.merge_param("deterministic", self.deterministic, deterministic):
            return inputs
        keep_prob = 1.0 - self.rate
        rng = self.make_rng(self.rng_collection) if rng is None else rng
        mask = jax.random.bernoulli(rng, p=keep_prob, shape=inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


class LinearRegression(nn.Module):
    """One Dense layer with a single output: y = <w, x> + b."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, dropout_rate=None) -> jax.Array:
        del train, dropout_rate  # no dropout; one call signature for all models
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(1)(x)[:, 0]


class MLP(nn.Module):
    """flatten -> Dense(hidden) -> activation -> [Dropout] -> Dense(num_classes)."""

    hidden_size: int = 512
    num_classes: int = 10
    dropout_rate: float = 0.0
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, dropout_rate=None) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        x = x.reshape((x.shape[0], -1))
        x = ACTIVATIONS[self.activation](nn.Dense(self.hidden_size)(x))
        x = Dropout(rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class ConvNet(nn.Module):
    """Conv32 3x3 -> pool -> [Dropout] -> Conv64 3x3 -> pool -> [Dropout] -> Dense128 -> Dense10.

    Convolutions use SAME padding; pools are 2x2 with stride 2. Input is NHWC.
    """

    num_classes: int = 10
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, dropout_rate=None) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        for features in (32, 64):
            # gradients written out for XLA:CPU (layers.conv): same values, faster
            x = nn.Conv(features, (3, 3), padding="SAME", conv_general_dilated=layers.conv)(x)
            x = nn.relu(max_pool_2x2(x))
            x = Dropout(rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_classes)(x)


# The one registry of models: `config.model` names a class here, which `create_model` builds
# with the config's values of its fields (and `config.validate` checks the name against).
MODELS = {"linear_regression": LinearRegression, "mlp": MLP, "cnn": ConvNet}


def create_model(config) -> nn.Module:
    """Builds the model named by `config.model` with the config's model fields."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[config.model]
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    return cls(**{field: config[field] for field in fields})
