"""The interactive API: the command lines' code as a few calls for a REPL, a notebook or a
script (docs/api.md); an argument of the wrong type ends in one UsageError line."""

import numbers
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from fmnist_jax import config as config_lib
from fmnist_jax import data as data_lib
from fmnist_jax.errors import ConfigError, UsageError

PATH, INT = (str, Path), numbers.Integral  # numpy's integers too
GET_CONFIG = "; make one with fj.get_config(experiment) first"
RESTORE = "; call fj.restore(workdir) first"  # a workdir path is the usual slip


class Trained(NamedTuple):
    """A trained model: its config, the Flax module and its variables ("params" and any other
    collection)."""

    config: ml_collections.ConfigDict
    model: object
    variables: dict

    def logits_fn(self):
        """x [N, 28, 28, 1] float in [0, 1] -> logits [N, 10], in inference mode."""
        return lambda x: self.model.apply(self.variables, x, train=False)


def check_type(value, kind, where: str, hint: str = "") -> None:
    """UsageError naming the argument, the type(s) it needs, the one it got and `hint` (how to
    get the right one), unless `value` is a `kind`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds):
        plain = isinstance(value, (str, Path, int, float, type(None)))
        got = repr(value) if plain else _a(type(value))
        raise UsageError(f"{where} must be {' or '.join(map(_a, kinds))}, got {got}{hint}")


def _a(kind: type) -> str:
    """A type as a message names it: "a Path", "an integer", "None"."""
    if kind in (type(None), INT):
        return "None" if kind is type(None) else "an integer"
    return f"{'an' if kind.__name__[0].lower() in 'aeiou' else 'a'} {kind.__name__}"


def get_config(experiment: str = "cnn", variant: str = "", **overrides):
    """An experiment's config (by name or file path; `variant="test"`: its seconds-long CPU
    version) with fields overridden (`grid` as {field: [values]}); ConfigError for bad ones."""
    from fmnist_jax import population

    check_type(experiment, PATH, "fj.get_config's experiment (a name such as 'cnn', or a file)")
    check_type(variant, str, "fj.get_config's variant")
    config = config_lib.load_experiment(str(experiment), variant)
    if "grid" in overrides:
        overrides["grid"] = population.format_grid(overrides["grid"])
    for field, value in overrides.items():
        if field not in config:
            try:
                config[field]  # ml_collections' KeyError, with the closest field's name
            except KeyError as e:
                raise ConfigError(config_lib.unknown_field(e)) from None
        try:
            config[field] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.{field}={value!r}: {' '.join(str(e).split())}") from None
    config_lib.validate(config)
    return config


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **options,
) -> None:
    """Joins a run of several processes (each calls it before any JAX computation, then `fit`):
    `jax.distributed.initialize`'s arguments and `distributed.Launch`'s `options`."""
    from fmnist_jax import distributed

    launch = distributed.Launch(coordinator_address, num_processes, process_id, **options)
    distributed.initialize(launch)


def load_data(config=None) -> data_lib.Dataset:
    """The data set a config trains on (default: Fashion-MNIST from $FMNIST_DATA_DIR or TFDS)."""
    if config is not None:
        check_type(config, ml_collections.ConfigDict, "fj.load_data's config", GET_CONFIG)
    return data_lib.load(config or get_config("cnn"))


def fit(config, workdir=None, dataset=None, on_eval=None, progress: bool = True):
    """Trains `config` (resuming `workdir`, default a new temporary folder); returns (state,
    history): numpy arrays, one entry per evaluation ([evaluations, M] for M > 1 members).
    `progress` shows a live line; `on_eval` is called with each evaluation's record."""
    from fmnist_jax import population
    from fmnist_jax import train as train_lib

    check_type(config, ml_collections.ConfigDict, "fj.fit's config", GET_CONFIG)
    check_type(workdir, (*PATH, type(None)), "fj.fit's workdir")
    if dataset is not None:
        check_type(dataset, data_lib.Dataset, "fj.fit's dataset", "; load one with fj.load_data")
        check_dataset(dataset, config.num_classes)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"fmnist_{config.name}_"))
    state, records = train_lib.train_and_evaluate(
        config, workdir, dataset=dataset, on_eval=on_eval, progress=progress
    )
    keys = [k for k in records[0] if k != "replica" and all(r.get(k) is not None for r in records)]
    count = population.num_members(config)
    history = {k: np.array([r[k] for r in records]) for k in keys}
    if count > 1:  # records are (evaluation, member) in order: [evaluations, members]
        history = {k: v.reshape(-1, count) for k, v in history.items()}
        history["step"], history["epoch"] = history["step"][:, 0], history["epoch"][:, 0]
    history["workdir"] = str(workdir)
    return state, history


def restore(workdir: str | Path, step: int | None = None, member: int = 0) -> Trained:
    """Member `member` of a training run's workdir, from its latest (or the given) checkpoint;
    a population member's config has its grid values in place."""
    from fmnist_jax import checkpoints

    check_type(workdir, PATH, "fj.restore's workdir")
    check_type(step, (INT, type(None)), "fj.restore's step")
    check_type(member, INT, "fj.restore's member")
    return Trained(*checkpoints.load_trained(workdir, step, member))


def as_images(images) -> np.ndarray:
    """uint8 or float images, [N, 28, 28] or [N, 28, 28, 1], as float32 [N, 28, 28, 1] in [0, 1];
    ConfigError for others."""
    images = np.asarray(images)
    shape = images.shape
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (*data_lib.IMAGE_SHAPE, 1):
        raise ConfigError(f"images must be [N, 28, 28] or [N, 28, 28, 1], got {shape}")
    data_lib.check_images(images)
    return data_lib.to_model_inputs(images)


def check_dataset(dataset: data_lib.Dataset, num_classes: int) -> None:
    """ConfigError for a data set the train loop cannot use (lengths, images, labels)."""
    for name in ("train", "test"):
        split = getattr(dataset, name)
        inputs, targets = np.asarray(split["inputs"]), np.asarray(split["targets"])
        if len(inputs) != len(targets):
            raise ConfigError(f"dataset.{name}: {len(inputs)} inputs but {len(targets)} targets")
        if inputs.ndim == 4:  # images (linear regression's features are free)
            data_lib.check_images(inputs, f"dataset.{name} images")
            data_lib.check_labels(targets, num_classes, f"dataset.{name} labels")
        elif inputs.size == 0:
            raise ConfigError(f"dataset.{name} is empty")


def predict(trained: Trained, images, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities [N, 10] for images (see `as_images` for the accepted forms)."""
    check_type(trained, Trained, "fj.predict's first argument", RESTORE)
    images = as_images(images)
    logits = jax.jit(trained.logits_fn())
    chunks = [
        np.asarray(jax.nn.softmax(logits(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def attack(
    trained, images, targets=None, labels=None, method="", seed=0, threshold=None, max_steps=None
):
    """Targeted adversarial search on `images`: an `adversarial.AttackResult`. `targets`
    default to wrong classes drawn from `seed` (wrong for `labels`, default the predictions);
    `method` names a preset of `adversarial.METHODS`, `threshold` and `max_steps` override it."""
    from fmnist_jax import adversarial

    check_type(trained, Trained, "fj.attack's first argument", RESTORE)
    check_type(method, str, "fj.attack's method")
    check_type(seed, INT, "fj.attack's seed")
    images = as_images(images)
    if labels is None:
        labels = predict(trained, images).argmax(axis=1)
    config = adversarial.method_config(
        method or adversarial.DEFAULT_METHOD, threshold=threshold, max_steps=max_steps
    )
    targets = None if targets is None else np.asarray(targets)
    key = jax.random.key(seed)
    return adversarial.attack(
        trained.logits_fn(), images, np.asarray(labels), key=key, targets=targets, config=config
    )
