"""The optax optimizer and schedule a config names (docs/extending.md, docs/populations.md)."""

import difflib
import inspect

import optax

from fmnist_jax.errors import ConfigError


def _as_dict(value) -> dict:
    return dict(value.to_dict() if hasattr(value, "to_dict") else value or {})


def optax_function(name: str, what: str):
    """optax's function `name` for `config.<what>`; ConfigError naming the closest one."""
    fn = getattr(optax, name, None) if isinstance(name, str) and name[:1].isalpha() else None
    if not callable(fn) or isinstance(fn, type):
        public = [n for n in dir(optax) if n[:1].isalpha()]
        close = difflib.get_close_matches(str(name), public, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config.{what}={name!r} is not an optax {what}{hint}")
    return fn


def _arguments(fn, kwargs: dict, field: str) -> dict:
    params = inspect.signature(fn).parameters
    for name in kwargs:
        if name not in params:
            raise ConfigError(
                f"config.{field}: optax.{fn.__name__} has no argument {name!r}; its arguments"
                f" are {', '.join(params)}"
            )
    return params


def learning_rate(config):
    """`config.learning_rate`, or the schedule `config.schedule` names built from it."""
    if not config.get("schedule"):
        return config.learning_rate
    fn = optax_function(config.schedule, "schedule")
    kwargs = _as_dict(config.get("schedule_kwargs"))
    params = _arguments(fn, kwargs, "schedule_kwargs")
    start = next((p for p in ("peak_value", "init_value", "value") if p in params), None)
    if start:
        kwargs.setdefault(start, config.learning_rate)
    for steps in ("decay_steps", "transition_steps"):
        if steps in params:
            kwargs.setdefault(steps, config.num_train_steps)
    return fn(**kwargs)


def float_arguments(config) -> tuple[str, ...]:
    """The optimizer's arguments a member can vary: learning rate and those given numbers."""
    fn = optax_function(config.optimizer, "optimizer")
    given = _as_dict(config.get("optimizer_kwargs"))
    found = []
    for name, p in inspect.signature(fn).parameters.items():
        value = given.get(name, p.default)
        if name == "learning_rate" or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            found.append(name)
    return tuple(found)


def create_optimizer(config, injected=()) -> optax.GradientTransformation:
    """The config's optimizer, the arguments `injected` as values of its state."""
    fn = optax_function(config.optimizer, "optimizer")
    kwargs = _as_dict(config.get("optimizer_kwargs"))
    _arguments(fn, kwargs, "optimizer_kwargs")
    if injected:
        static = tuple(a for a in inspect.signature(fn).parameters if a not in injected)
        fn = optax.inject_hyperparams(fn, static_args=static)
    return fn(learning_rate=learning_rate(config), **kwargs)
