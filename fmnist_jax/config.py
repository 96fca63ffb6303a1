"""The shared base config every experiment starts from, and its validation.

An experiment file (`experiments/<name>.py`) calls `base_config()`, overrides a few fields and
returns the ConfigDict from its `get_config()`.
"""

import importlib.util
import math
import re
from pathlib import Path

import ml_collections

from fmnist_jax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all experiments (docs/training.md: the fields that shape a run)."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    # Data. data_dir empty: $FMNIST_DATA_DIR if set, otherwise tensorflow-datasets (kept in
    # tfds_data_dir; empty: its default, ~/tensorflow_datasets).
    c.dataset = "fashion_mnist"
    c.data_dir = ""
    c.tfds_data_dir = ""
    # Model: a name of models.MODELS or "package.module.Class"; the config's fields named as
    # the class's fields are its arguments (an experiment adds those the base lacks).
    c.model = "cnn"
    c.num_classes = 10
    c.hidden_size = 512  # MLP only
    c.activation = "relu"  # MLP only: "relu" or "sigmoid" (sigma' = sigma - sigma^2)
    c.dropout_rate = 0.0
    # Optimizer: any optax optimizer and its keyword arguments; optionally an optax schedule
    # starting (or peaking) at learning_rate (fmnist_jax/optimizers.py).
    c.optimizer = "adam"
    c.optimizer_kwargs = ml_collections.ConfigDict()
    c.learning_rate = 1e-3
    c.schedule = ""
    c.schedule_kwargs = ml_collections.ConfigDict()
    # Training and evaluation.
    c.batch_size = 64
    c.eval_batch_size = 1000
    c.num_train_steps = 10_000
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 1000  # a multiple of eval_every_steps
    c.max_checkpoints_to_keep = 3
    c.steps_per_chunk = 1  # steps per device-resident program (feeds.py); 1: a jitted step
    c.seed = 0
    # Models trained at once (replicas.py), differing only in their seeds (replica 0 is the
    # plain run of `seed`), mapped by "vmap", "unroll" or "auto" (unroll the ConvNet on CPU).
    c.num_replicas = 1
    c.replica_map = "auto"
    # A population (population.py), e.g. "dropout_rate=0,0.25;learning_rate=1e-3,3e-4": every
    # point trains num_replicas seeds, all members in one program. Empty: the config's values.
    c.grid = ""
    # A profile of profile_steps steps (0: none) from profile_first_step after the (re)start;
    # CLU's progress line every progress_every_steps steps (0: every 30 s).
    c.profile_steps = 0
    c.profile_first_step = 10
    c.progress_every_steps = 0
    # Linear regression's synthetic problem (dataset "linear_regression" only).
    c.regression = ml_collections.ConfigDict(
        {"num_train": 10_000, "num_test": 2_000, "num_features": 20, "noise": 0.5}
    )
    return c


def unknown_field(e: Exception) -> str:
    """ml_collections' KeyError/AttributeError for a config typo (a `--config.<field>` override,
    a field given to `fj.get_config`), as one line with its suggestion: "unknown config field
    'lerning_rate' (did you mean 'learning_rate'?)"."""
    names = re.findall(r"[A-Za-z_][\w.]*", str(e))
    message = f"unknown config field {names[0]!r}" if names else "unknown config field"
    suggestion = re.search(r'Did you mean "([\w.]+)"', str(e))
    return message + (f" (did you mean {suggestion.group(1)!r}?)" if suggestion else "")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive_int(config, field: str) -> None:
    value = config[field]
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"config.{field} must be a positive integer, got {value!r}",
    )


def _hyperparameters(config, where: str) -> None:
    lr = config.learning_rate
    _require(
        isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0,
        f"{where}learning_rate must be a finite number > 0, got {lr!r}",
    )
    dropout = config.get("dropout_rate", 0.0)
    _require(
        isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0,
        f"{where}dropout_rate must lie in [0, 1), got {dropout!r}",
    )


def _model_fits_data(config, model) -> None:
    """The model's outputs for one example of the data set: one value (regression) or
    num_classes logits."""
    import jax
    import jax.numpy as jnp

    from fmnist_jax import data

    x = jax.ShapeDtypeStruct((1, *data.input_shape(config)), jnp.float32)
    try:
        out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    except Exception as e:
        line = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"config.model={config.model!r} fails on config.dataset: {line}") from e
    want = (1,) if data.is_regression(config) else (1, config.num_classes)
    _require(
        out.shape == want,
        f"config.model={config.model!r} gives outputs shaped {out.shape} for one example of"
        f" config.dataset={config.dataset!r}, which needs {want}",
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first field that cannot work."""
    from fmnist_jax import data, models, optimizers, population, replicas

    for field, choices in (  # each field's registry, in the module that acts on it
        ("dataset", data.DATASETS),
        ("activation", tuple(models.ACTIVATIONS)),
        ("replica_map", replicas.MAPS),
    ):
        _require(
            config[field] in choices,
            f"config.{field}={config[field]!r} is unknown; choose one of {', '.join(choices)}",
        )
    for field in (
        "batch_size",
        "eval_batch_size",
        "num_train_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "max_checkpoints_to_keep",
        "steps_per_chunk",
        "num_replicas",
    ):
        _positive_int(config, field)
    for field in ("profile_steps", "profile_first_step", "progress_every_steps"):
        value = config.get(field, 0)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"config.{field} must be an integer >= 0, got {value!r}",
        )
    _require(
        config.checkpoint_every_steps % config.eval_every_steps == 0,
        f"config.checkpoint_every_steps={config.checkpoint_every_steps} must be a multiple of"
        f" config.eval_every_steps={config.eval_every_steps}, so that a resumed run logs the"
        " same curves as an uninterrupted one",
    )
    model = models.create_model(config)
    population.check(config, model)
    for point in population.points(config):
        c = population.point_config(config, point) if point else config
        _hyperparameters(c, "config.grid: " if point else "config.")
        try:
            optimizers.create_optimizer(c)
        except TypeError as e:
            raise ConfigError(f"config.optimizer_kwargs: {e}") from None
    _model_fits_data(config, model)


def shrink_for_test(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same experiment sized to run in seconds on a CPU: synthetic data, a few steps."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.dataset == "fashion_mnist":
        c.dataset = "synthetic"
    else:
        c.regression.num_train, c.regression.num_test = 512, 128
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_train_steps = 24
    c.eval_every_steps = 8
    c.checkpoint_every_steps = 8
    return c


VARIANTS = ("test",)


def with_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """The experiment in its variant: "" as it is, "test" shrunk to a CPU smoke test
    (`shrink_for_test`); any other ConfigError naming the known ones (`--config
    cnn.py:tset` must not train the full experiment without a word)."""
    if not variant:
        return config
    if variant == "test":
        return shrink_for_test(config)
    raise ConfigError(f"unknown config variant {variant!r}; variants are {', '.join(VARIANTS)}")


def experiments_dir() -> Path:
    """The experiment files: the copy an installed wheel carries as `fmnist_jax/experiments/`
    (see pyproject.toml), else `experiments/` beside the package (a checkout, or an editable
    install, whose package has no such folder)."""
    here = Path(__file__).resolve().parent
    installed = here / "experiments"
    return installed if installed.is_dir() else here.parent / "experiments"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.py") if not p.stem.startswith("_"))


def experiment_path(name: str) -> Path:
    return experiments_dir() / f"{name}.py"


def load_experiment(name_or_path: str, variant: str = "") -> ml_collections.ConfigDict:
    """The ConfigDict of an experiment, by name ("cnn") or file path, with an optional variant
    ("test" shrinks it to a CPU smoke test), exactly as `--config file.py:variant` gives it."""
    path = Path(name_or_path)
    if path.suffix != ".py":
        path = experiment_path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"no experiment {name_or_path!r}: {path} does not exist; experiments are"
            f" {', '.join(experiment_names())}"
        )
    spec = importlib.util.spec_from_file_location(f"_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
