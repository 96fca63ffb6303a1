"""Exercise 2.5: targeted adversarial search, as a small package.

    presets.py   AttackConfig, validate, METHODS (the measured presets), method_config
    pool.py      the pooled while-loop program any per-image `Search` runs in: pure JAX
    search.py    the objective, one descent search, the batch program (`make_attack`)
    minimal.py   the minimum-L1 search ("minl1"): proximal steps with a solved multiplier
    runner.py    run(workdir, output, ...): restore, choose images, records, summary, CSV
    __main__.py  the command line, `python -m fmnist_jax.adversarial --workdir ... --output ...`

Figure 7 and the attack curves are in `fmnist_jax.plotting.adversarial`.

    from fmnist_jax import adversarial
    config = adversarial.method_config("sign", max_steps=100)
    result = adversarial.attack(logits_fn, images, labels, key=jax.random.key(0), config=config)

The names in `__all__` load from their modules on first use, so that `python -m
fmnist_jax.adversarial` can quiet TensorFlow before JAX is imported, and `--help` stays fast.
The modules load the same way (`adversarial.search`, ...); one search alone is therefore
`adversarial.search.search`, as the package's name `search` is its module.
"""

from importlib import import_module as _import_module

_MODULES = ("presets", "pool", "search", "minimal", "runner")
# Each public name and the module that defines it.
_API = {
    "AttackConfig": "presets",
    "DEFAULT_METHOD": "presets",
    "DEFAULT_METHODS": "presets",
    "DEFAULT_POOL_SIZE": "presets",
    "L1_REDUCTIONS": "presets",
    "METHODS": "presets",
    "method_config": "presets",
    "parse_methods": "presets",
    "validate": "presets",
    "describe": "presets",
    "pool_size_for": "presets",
    "SLOW_METHODS": "presets",
    "Search": "pool",
    "run_pool": "pool",
    "minl1_search": "minimal",
    "Attack": "search",
    "AttackResult": "search",
    "SearchState": "search",
    "attack": "search",
    "draw_targets": "search",
    "init_state": "search",
    "input_gradient": "search",
    "make_attack": "search",
    "noise_norms": "search",
    "objective": "search",
    "p_target_history": "search",
    "pooled_search": "search",
    "search_step": "search",
    "run": "runner",
}
__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_METHODS",
    "DEFAULT_POOL_SIZE",
    "L1_REDUCTIONS",
    "METHODS",
    "SLOW_METHODS",
    "Attack",
    "AttackConfig",
    "AttackResult",
    "Search",
    "SearchState",
    "attack",
    "describe",
    "draw_targets",
    "init_state",
    "input_gradient",
    "make_attack",
    "method_config",
    "minl1_search",
    "noise_norms",
    "objective",
    "p_target_history",
    "parse_methods",
    "pool_size_for",
    "pooled_search",
    "run",
    "run_pool",
    "search_step",
    "validate",
]


def __getattr__(name: str):
    if name in _MODULES:
        return _import_module(f"{__name__}.{name}")
    if name in _API:
        return getattr(_import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API) | set(_MODULES))
