"""The models: Flax modules called as `model(x, train=...)`; adding one: docs/extending.md."""

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax import layers
from fmnist_jax.errors import ConfigError
from fmnist_jax.layers import max_pool_2x2

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "sigmoid": layers.sigmoid,
}


class Dropout(nn.Dropout):
    """Flax's dropout whose rate may be a traced value: the same mask from the same key."""

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
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        return nn.Dense(1)(x.reshape((x.shape[0], -1)))[:, 0]


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
    """(Conv 3x3 SAME -> [BatchNorm] -> 2x2 pool -> [Dropout]) x (32, 64) -> Dense128 -> Dense10,
    NHWC; BatchNorm only where `bn_momentum` is set (ConvNetBN)."""

    num_classes: int = 10
    dropout_rate: float = 0.0
    bn_momentum: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, dropout_rate=None) -> jax.Array:
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        for features in (32, 64):
            x = nn.Conv(features, (3, 3), padding="SAME", conv_general_dilated=layers.conv)(x)
            if self.bn_momentum is not None:
                x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
            x = nn.relu(max_pool_2x2(x))
            x = Dropout(rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_classes)(x)


class ConvNetBN(ConvNet):
    """The ConvNet with BatchNorm after each convolution (its `batch_stats` collection)."""

    bn_momentum: float | None = 0.9


MODELS = {"linear_regression": LinearRegression, "mlp": MLP, "cnn": ConvNet, "cnn_bn": ConvNetBN}


def model_class(name: str) -> type[nn.Module]:
    """The class `config.model` names; ConfigError for a name that is none."""
    if name in MODELS:
        return MODELS[name]
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr) if module else None
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"config.model={name!r} is neither one of {', '.join(MODELS)} nor the import path"
            " of a flax.linen.Module class ('package.module.Class')"
        )
    return cls


def create_model(config) -> nn.Module:
    """The model `config.model` names, its fields the config's fields of the same names."""
    cls = model_class(config.model)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in ("parent", "name") or not field.init:
            continue
        if field.name in config:
            kwargs[field.name] = config[field.name]
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"model {config.model!r} ({cls.__name__}) needs config.{field.name}, which the"
                " config does not have; add it to the experiment's get_config()"
            )
    return cls(**kwargs)


def call_arguments(model: nn.Module) -> tuple[str, ...]:
    """`__call__`'s keywords beside the input and `train`: what a member may vary at call time."""
    params = inspect.signature(type(model).__call__).parameters
    return tuple(p for p in list(params)[2:] if p != "train")


def _trace(model: nn.Module, input_shape: tuple) -> tuple[tuple[int, ...], bool]:
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    init = lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0]
    jaxpr, out = jax.make_jaxpr(init, return_shape=True)(x)
    return tuple(out.shape), "conv_general_dilated" in str(jaxpr)


_traced = functools.lru_cache(maxsize=32)(_trace)


def trace(model: nn.Module, input_shape) -> tuple[tuple[int, ...], bool]:
    """(output shape for one example, whether the program holds a convolution), from one trace
    of the model's init, kept for the next caller (validation, then `replicas.choose_map`)."""
    try:
        hash(model)
    except TypeError:  # a field holding a list or dict: traced each time
        return _trace(model, tuple(input_shape))
    return _traced(model, tuple(input_shape))


def has_convolution(model: nn.Module, input_shape) -> bool:
    """Whether the model's program holds a convolution (`replicas.choose_map` asks)."""
    return trace(model, tuple(input_shape))[1]
