"""The base config every `experiments/<name>.py` overrides in its `get_config()`, and its checks."""

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
    # Data. data_dir empty: $FMNIST_DATA_DIR if set, else TFDS in tfds_data_dir (or its default).
    c.dataset = "fashion_mnist"
    c.data_dir = ""
    c.tfds_data_dir = ""
    # Model: a name of models.MODELS or "package.module.Class", its fields the config's.
    c.model = "cnn"
    c.num_classes = 10
    c.hidden_size = 512  # MLP only
    c.activation = "relu"  # MLP only: "relu" or "sigmoid" (sigma' = sigma - sigma^2)
    c.dropout_rate = 0.0
    # Optimizer: any optax optimizer and its arguments; optionally an optax schedule.
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
    # Seeds trained at once (replica 0 is the plain run of `seed`), mapped by replica_map.
    c.num_replicas = 1
    c.replica_map = "auto"
    # A population, e.g. "dropout_rate=0,0.25;learning_rate=1e-3,3e-4" (docs/populations.md).
    c.grid = ""
    # A profile of profile_steps steps (0: none); progress every progress_every_steps (0: 30 s).
    c.profile_steps = 0
    c.profile_first_step = 10
    c.progress_every_steps = 0
    # Linear regression's synthetic problem (dataset "linear_regression" only).
    c.regression = ml_collections.ConfigDict(
        {"num_train": 10_000, "num_test": 2_000, "num_features": 20, "noise": 0.5}
    )
    return c


def unknown_field(e: Exception) -> str:
    """ml_collections' error for a config typo as one line, with its suggestion."""
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
    """The model gives one value (regression) or num_classes logits for one example."""
    from fmnist_jax import data, models

    try:
        shape, _ = models.trace(model, data.input_shape(config))
    except Exception as e:
        line = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"config.model={config.model!r} fails on config.dataset: {line}") from e
    want = (1,) if data.is_regression(config) else (1, config.num_classes)
    _require(
        shape == want,
        f"config.model={config.model!r} gives outputs shaped {shape} for one example of"
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
    """The experiment as it is (""), or shrunk to a CPU smoke test ("test"); ConfigError else."""
    if not variant:
        return config
    if variant == "test":
        return shrink_for_test(config)
    raise ConfigError(f"unknown config variant {variant!r}; variants are {', '.join(VARIANTS)}")


def experiments_dir() -> Path:
    """An installed wheel's `fmnist_jax/experiments/`, else a checkout's `experiments/`."""
    here = Path(__file__).resolve().parent
    installed = here / "experiments"
    return installed if installed.is_dir() else here.parent / "experiments"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.py") if not p.stem.startswith("_"))


def experiment_path(name: str) -> Path:
    return experiments_dir() / f"{name}.py"


def load_experiment(name_or_path: str, variant: str = "") -> ml_collections.ConfigDict:
    """An experiment's ConfigDict by name or path, with a variant, as `--config file.py:variant`."""
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
