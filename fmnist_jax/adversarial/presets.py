"""The attack's search rules as data: `AttackConfig`, its checks, and the presets `METHODS`
(measured in docs/attack.md). Imports no JAX: the command line defines its flags from these."""

import dataclasses
import math

from fmnist_jax.errors import ConfigError

UPDATES = ("gd", "sign", "adam", "minl1")
L1_REDUCTIONS = ("sum", "mean")
DEFAULT_POOL_SIZE = 32  # searches in flight on a CPU, where a larger pool computes idle slots
ACCELERATOR_POOL_SIZE = 512


def pool_size_for(platform: str) -> int:
    """The pool size for a JAX platform name (`jax.devices()[0].platform`): "cpu" -> 32."""
    return DEFAULT_POOL_SIZE if platform == "cpu" else ACCELERATOR_POOL_SIZE


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """One search rule; hashable, so it can be a static argument of a jitted function."""

    update: str = "sign"  # "gd", "sign" (sign of the gradient), "adam" or "minl1"
    learning_rate: float = 0.002  # minl1: the first proximal step eta
    l1_weight: float = 0.05
    l1_reduction: str = "mean"  # or "sum"; mean divides by the pixels, as PyTorch's L1Loss()
    proximal: bool = False  # soft-threshold x' - x by lr * weight instead of a subgradient
    threshold: float = 0.95
    max_steps: int = 300
    epsilon: float | None = None  # the L-inf radius x' - x is projected to (PGD, FGSM)
    clip: tuple[float, float] | None = (0.0, 1.0)  # the pixel range after every step
    early_stop: bool = True  # False: every search runs max_steps (the PGD benchmark)

    def replace(self, **changes) -> "AttackConfig":
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def validate(config: AttackConfig) -> None:
    """Raises ConfigError naming the first field a search cannot run with."""
    c = config
    if c.update not in UPDATES:
        raise ConfigError(f"unknown update {c.update!r}; choose one of {UPDATES}")
    if not 0.0 < c.threshold < 1.0:
        raise ConfigError(f"threshold must lie in (0, 1), got {c.threshold!r}")
    if not (isinstance(c.max_steps, int) and c.max_steps > 0):
        raise ConfigError(f"max_steps must be a positive integer, got {c.max_steps!r}")
    if not (math.isfinite(c.learning_rate) and c.learning_rate > 0):
        raise ConfigError(f"learning_rate must be a finite number > 0, got {c.learning_rate!r}")
    if not c.l1_weight >= 0:
        raise ConfigError(f"l1_weight must be >= 0, got {c.l1_weight!r}")
    if c.l1_reduction not in L1_REDUCTIONS:
        raise ConfigError(f"unknown l1_reduction {c.l1_reduction!r}; choose one of {L1_REDUCTIONS}")
    if c.update == "minl1" and (c.epsilon is not None or c.proximal):
        raise ConfigError("update 'minl1' is proximal already and takes no epsilon")
    if c.epsilon is not None and not c.epsilon > 0:
        raise ConfigError(f"epsilon must be > 0 (or None), got {c.epsilon!r}")
    if c.clip is not None and not c.clip[0] < c.clip[1]:
        raise ConfigError(f"clip must be (low, high), low < high: {c.clip!r}")


# Rates and budgets measured on the cnn_dropout checkpoint (docs/attack.md).
METHODS: dict[str, AttackConfig] = {
    "exercise": AttackConfig(update="gd", learning_rate=0.001, max_steps=3000),
    "gd": AttackConfig(update="gd", learning_rate=0.01, max_steps=1000),
    "sign": AttackConfig(),
    "adam": AttackConfig(update="adam", learning_rate=0.01),
    "fgsm": AttackConfig(learning_rate=0.1, l1_weight=0.0, max_steps=1, epsilon=0.1),
    "pgd": AttackConfig(learning_rate=0.01, l1_weight=0.0, max_steps=100, epsilon=0.1),
    "minl1": AttackConfig(
        update="minl1", learning_rate=0.5, l1_weight=0.0, l1_reduction="sum", max_steps=360
    ),
}
DEFAULT_METHOD = "sign"  # the library's default (`attack`, `fj.attack`): fast and reliable
# The command line's: the exercise's rule first (the reported one), the slow ones on fewer images.
DEFAULT_METHODS = ("exercise", "gd", "sign", "adam", "fgsm", "pgd", "minl1")
SLOW_METHODS = ("exercise", "minl1")
SLOW_IMAGES = 200
UPDATE_NAMES = {"gd": "gradient descent", "sign": "sign-gradient descent", "adam": "Adam"}


def describe(config: AttackConfig) -> str:
    """One line naming a search rule, e.g. "gradient descent, lr 0.001, CE(target) + 0.05 *
    ||x' - x||_1 (mean over pixels)" for the exercise's."""
    if config.update == "minl1":
        return (
            "minimum-L1 search (linearised proximal multiplier steps): smallest ||x' - x||_1 with"
            f" p(target) >= {config.threshold:g}, {config.max_steps} steps"
        )
    rule = f"{UPDATE_NAMES[config.update]}, lr {config.learning_rate:g}, CE(target)"
    if config.l1_weight > 0:
        reading = "mean over pixels" if config.l1_reduction == "mean" else "sum over pixels"
        rule += f" + {config.l1_weight:g} * ||x' - x||_1 ({reading})"
    if config.epsilon is not None:
        rule += f", ||x' - x||_inf <= {config.epsilon:g}"
    return rule


def method_config(
    name: str,
    threshold: float | None = None,
    max_steps: int | None = None,
    epsilon: float | None = None,
    l1_reduction: str | None = None,
) -> AttackConfig:
    """The preset `name`, validated, with the overrides where they apply: `max_steps` to the
    iterative methods, `epsilon` to those with a radius (FGSM's step too), `l1_reduction` to L1."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    config = METHODS[name]
    if threshold is not None:
        config = config.replace(threshold=threshold)
    if max_steps is not None and config.max_steps > 1:
        config = config.replace(max_steps=max_steps)
    if l1_reduction is not None and config.l1_weight > 0:
        config = config.replace(l1_reduction=l1_reduction)
    if epsilon is not None and config.epsilon is not None:
        config = config.replace(epsilon=epsilon)
        if config.max_steps == 1:
            config = config.replace(learning_rate=epsilon)
    validate(config)
    return config


def parse_methods(text: str) -> list[str]:
    """ "all", or comma-separated method names, each checked."""
    names = list(METHODS) if text.strip() == "all" else [n.strip() for n in text.split(",")]
    for name in names:
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)} or all")
    return names
