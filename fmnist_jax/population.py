"""Populations: a grid of hyperparameters times seeds, every member trained in one program.

`config.grid` names the hyperparameters that vary and their values, e.g.

    --config.grid='dropout_rate=0,0.1,0.25;learning_rate=1e-3,3e-4'
    fj.get_config("cnn", grid={"dropout_rate": [0, 0.25]}, num_replicas=3)

Its points are the cartesian product of the values (in the order given, the last field
fastest); with `config.num_replicas` = R seeds, the run has M = points x R members, member
m = point x R + k being point `point` with seed `replicas.replica_seed(config.seed, k)`. Member
(h, k) trains as the plain run of the config with the fields h and that seed, to float rounding
(the varied fields are values of the state, `check` says which can vary). Members that share a
seed share their data order, so one batch feeds every grid point (`replicas.over_members`). A
grid of one point is no population: the plain program of that point, bit for bit.
"""

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
    """`"field=v1,v2;field=v3"` as {field: [values]} (empty text: {}); ConfigError for a
    repeated field, an empty or non-numeric value (`check` says which fields can vary)."""
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
    """The grid's points, {field: value} each; one empty point without a grid."""
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
    """The fields a member can vary: the model's call arguments that are config fields (its
    dropout rate), the learning rate and the optimizer's float arguments."""
    from fmnist_jax import models, optimizers

    call = tuple(f for f in models.call_arguments(model) if f in config)
    return (*call, *optimizers.float_arguments(config))


def check(config, model) -> None:
    """ConfigError for a grid field that names no field, or one that cannot vary per member
    (it would change shapes or the program), and for a learning-rate grid with a schedule."""
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
    """A one-point grid folded into the config (its values in place, no grid): the plain
    run it stands for; any other config as it is."""
    pts = points(config)
    return point_config(config, pts[0]) if len(pts) == 1 and pts[0] else config


def members(config) -> list[dict]:
    """Each member's identity in member order: its grid point's index and values, its seed
    index `replica` and seed."""
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
