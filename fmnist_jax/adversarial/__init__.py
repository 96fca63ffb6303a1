"""Exercise 2.5: targeted adversarial search, as a small package (docs/attack.md). Modules and
names load on first use, so that the command line can quiet TensorFlow before JAX is imported;
the name `search` is the module (one search alone is `search.search`)."""

from importlib import import_module as _import_module

_NAMES = {  # each module and the public names it defines
    "presets": "AttackConfig DEFAULT_METHOD DEFAULT_METHODS DEFAULT_POOL_SIZE L1_REDUCTIONS"
    " METHODS SLOW_METHODS describe method_config parse_methods pool_size_for validate",
    "pool": "Search run_pool",
    "search": "Attack AttackResult SearchState attack draw_targets init_state input_gradient"
    " make_attack noise_norms objective p_target_history search_step",
    "minimal": "minl1_search",
    "runner": "run",
}
_API = {name: module for module, names in _NAMES.items() for name in names.split()}
__all__ = sorted(_API)  # noqa: PLE0605 - one list of names, _NAMES


def __getattr__(name: str):
    if name in _NAMES:
        return _import_module(f"{__name__}.{name}")
    if name in _API:
        return getattr(_import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API) | set(_NAMES))
