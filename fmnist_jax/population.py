"""Populations: `config.grid`'s points times the seeds, in one program (docs/populations.md)."""

import itertools
import math

import ml_collections

from fmnist_jax import replicas
from fmnist_jax.errors import ConfigError

# What a member's identity (or its metrics.jsonl record) holds beside its grid values.
IDENTITY = ("point", "replica", "seed", "step", "epoch")


def _number(field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"config.grid: {field}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"config.grid: {field}={text!r} is not a finite number")
    return value


def parse(text: str) -> dict[str, list[float]]:
    """`"field=v1,v2;field=v3"` as {field: [values]}; ConfigError for a bad field or value."""
    grid: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        field, sep, values = (s.strip() for s in part.partition("="))
        if field in grid:
            raise ConfigError(f"config.grid names {field} twice")
        items = [v.strip() for v in values.split(",")] if sep else []
        if not items or any(not v for v in items):
            raise ConfigError(f"config.grid: {field} has an empty value; write {field}=v1,v2,...")
        grid[field] = [_number(field, v) for v in items]
    return grid


def format_grid(grid) -> str:
    """A grid given as {field: values} (the API's form) as `config.grid`'s text."""
    if isinstance(grid, str):
        return grid
    return ";".join(f"{k}={','.join(f'{float(v):g}' for v in vs)}" for k, vs in grid.items())


def points(config) -> list[dict[str, float]]:
    """The grid's points as {field: value}, the last field fastest ([{}] without a grid)."""
    grid = parse(config.get("grid", ""))
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def num_points(config) -> int:
    return len(points(config))


def is_population(config) -> bool:
    """Whether the run's hyperparameters are per-member values (a grid of two or more)."""
    return num_points(config) > 1


def varied(config) -> tuple[str, ...]:
    """The fields whose values are per-member values of the state (none without a population)."""
    return tuple(parse(config.get("grid", ""))) if is_population(config) else ()


def num_members(config) -> int:
    return num_points(config) * config.get("num_replicas", 1)


def point_config(config, point: dict) -> ml_collections.ConfigDict:
    """`config` with a point's values in place and no grid: the plain run of that point."""
    c = ml_collections.ConfigDict(config if isinstance(config, dict) else config.to_dict())
    for field, value in point.items():
        if field in c:
            c[field] = value
        else:  # an optimizer argument (`check`)
            c.optimizer_kwargs[field] = value
    c.grid = ""
    return c


def variable_fields(config, model) -> tuple[str, ...]:
    """The model's call arguments that are config fields and the optimizer's float arguments."""
    from fmnist_jax import models, optimizers

    call = tuple(f for f in models.call_arguments(model) if f in config)
    return (*call, *optimizers.float_arguments(config))


def check(config, model) -> None:
    """ConfigError for a grid field that names nothing or cannot vary per member."""
    can = variable_fields(config, model)
    for field in parse(config.get("grid", "")):
        if field in can:
            continue
        if field in config:
            why = f"config.{field} cannot vary per member (it changes shapes or the program)"
        else:
            why = f"{field!r} names no config field nor argument of optax.{config.optimizer}"
        raise ConfigError(f"config.grid: {why}; fields that can vary: {', '.join(can)}")
    if config.get("schedule") and "learning_rate" in parse(config.get("grid", "")):
        raise ConfigError(
            "config.grid: learning_rate cannot vary per member under config.schedule; vary"
            " the schedule's arguments in separate runs"
        )


def resolved(config) -> ml_collections.ConfigDict:
    """A one-point grid folded into the config (the plain run it stands for); else `config`."""
    pts = points(config)
    return point_config(config, pts[0]) if len(pts) == 1 and pts[0] else config


def members(config) -> list[dict]:
    """Each member's grid point index and values, seed index `replica` and seed, in order."""
    seeds = replicas.seeds(config["seed"], config.get("num_replicas", 1))
    return [
        {"point": g, "replica": k, "seed": seed, **point}
        for g, point in enumerate(points(config))
        for k, seed in enumerate(seeds)
    ]


def hyperparameters(member: dict) -> dict[str, float]:
    """A member's grid values, from its identity or its metrics.jsonl record."""
    return {
        k: v
        for k, v in member.items()
        if k not in IDENTITY and not k.startswith(("train_", "test_"))
    }


def member_name(member: dict) -> str:
    """A member's name from its grid values and seed (TensorBoard's run names)."""
    fields = [f"{k}={v:g}" for k, v in hyperparameters(member).items()]
    return ",".join([*fields, f"seed={member['seed']}"])
