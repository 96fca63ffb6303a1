"""The interactive API: a few calls for a REPL, a notebook or a script.

    import fmnist_jax as fj
    config = fj.get_config("cnn_dropout", num_train_steps=500)
    state, history = fj.fit(config, workdir="/tmp/cnn")        # history: dict of numpy arrays
    trained = fj.restore("/tmp/cnn")                             # config, model, params
    probs = fj.predict(trained, images)                          # [N, 10] class probabilities
    result = fj.attack(trained, images, targets=[1, 7])          # adversarial images and norms

Everything here calls the same code as the command lines (`train.train_and_evaluate`,
`checkpoints.load_trained`, `adversarial.attack`); nothing is trained or attacked differently.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from fmnist_jax import config as config_lib
from fmnist_jax import data as data_lib
from fmnist_jax.errors import ConfigError


class Trained(NamedTuple):
    """A trained model: its config, the Flax module and its parameters."""

    config: ml_collections.ConfigDict
    model: object
    params: dict

    def logits_fn(self):
        """x [N, 28, 28, 1] float in [0, 1] -> logits [N, 10], in inference mode."""
        return lambda x: self.model.apply({"params": self.params}, x, train=False)


def get_config(experiment: str = "cnn", variant: str = "", **overrides):
    """An experiment's config (by name, e.g. "cnn_dropout", or file path) with fields overridden.

    `variant="test"` gives its seconds-long CPU version. `grid` may be given as
    {field: [values]} (a population, fmnist_jax/population.py). An unknown field or a value the
    code cannot run with raises ConfigError.
    """
    from fmnist_jax import population

    config = config_lib.load_experiment(experiment, variant)
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
    *,
    auto: bool = False,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
    coordinator_bind_address: str | None = None,
) -> None:
    """Joins a run of several processes (every process calls it, before any JAX computation,
    then the same `fit`): the arguments of `jax.distributed.initialize`, `auto=True` for JAX's
    cluster detection (Cloud TPU pod slices, SLURM, Open MPI). One process needs no call."""
    from fmnist_jax import distributed

    distributed.initialize(
        distributed.Launch(
            coordinator_address,
            num_processes,
            process_id,
            auto,
            initialization_timeout,
            heartbeat_timeout_seconds,
            coordinator_bind_address,
        )
    )


def load_data(config=None) -> data_lib.Dataset:
    """The data set a config trains on (default: Fashion-MNIST from $FMNIST_DATA_DIR or TFDS)."""
    return data_lib.load(config or get_config("cnn"))


def fit(
    config,
    workdir: str | Path | None = None,
    dataset: data_lib.Dataset | None = None,
    on_eval: Callable[[dict], None] | None = None,
    progress: bool = True,
):
    """Trains `config` for `config.num_train_steps` steps; returns (state, history).

    `workdir` (default: a new temporary folder) receives checkpoints and logs as from the
    command line, and an existing one is resumed. `history` maps "step", "train_loss",
    "test_loss" (and the accuracies) to numpy arrays, one entry per evaluation (with M > 1
    members, `config.num_replicas` R or a population's points x R: [evaluations, M], and
    `state` has a leading member axis: `fmnist_jax.replicas.take(state, m)` is member m; a
    population's history also has each member's "point", "seed" and grid values). `progress`
    shows a live line while it trains (steps done, steps/s, ETA, last evaluation; in Jupyter
    and Colab one line updated in place) and prints each evaluation; `progress=False` is
    silent. `on_eval` is called with each evaluation's record as it happens.
    """
    from fmnist_jax import population
    from fmnist_jax import train as train_lib

    if dataset is not None:
        check_dataset(dataset, config.num_classes)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"fmnist_{config.name}_"))
    state, records = train_lib.train_and_evaluate(
        config, workdir, dataset=dataset, on_eval=on_eval, progress=progress
    )
    keys = [k for k in records[0] if k != "replica" and all(r.get(k) is not None for r in records)]
    count = population.num_members(config)
    history = {k: np.array([r[k] for r in records]) for k in keys}
    if count > 1:  # records are (evaluation, replica) in order: [evaluations, replicas]
        history = {k: v.reshape(-1, count) for k, v in history.items()}
        history["step"], history["epoch"] = history["step"][:, 0], history["epoch"][:, 0]
    history["workdir"] = str(workdir)
    return state, history


def restore(
    workdir: str | Path, step: int | None = None, replica: int = 0, member: int | None = None
) -> Trained:
    """The model (member `member`, or replica `replica`: the same index, of a run with
    several) of a training run's workdir, from its latest (or the given) checkpoint; a
    population member's config has its grid values in place."""
    from fmnist_jax import checkpoints

    return Trained(*checkpoints.load_trained(workdir, step, replica if member is None else member))


def as_images(images) -> np.ndarray:
    """uint8 or float images, [N, 28, 28] or [N, 28, 28, 1], as float32 [N, 28, 28, 1] in [0, 1];
    ConfigError for another shape, dtype or range, NaN/Inf pixels or an empty batch."""
    images = np.asarray(images)
    shape = images.shape
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (*data_lib.IMAGE_SHAPE, 1):
        raise ConfigError(f"images must be [N, 28, 28] or [N, 28, 28, 1], got {shape}")
    data_lib.check_images(images)
    return data_lib.to_model_inputs(images)


def check_dataset(dataset: data_lib.Dataset, num_classes: int) -> None:
    """ConfigError for a caller's data set the train loop cannot use: empty splits, images
    out of range (see `data.check_images`), labels outside 0..num_classes-1."""
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
    images = as_images(images)
    logits = jax.jit(trained.logits_fn())
    chunks = [
        np.asarray(jax.nn.softmax(logits(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def attack(
    trained: Trained,
    images,
    targets=None,
    labels=None,
    method: str = "",
    seed: int = 0,
    threshold: float | None = None,
    max_steps: int | None = None,
):
    """Targeted adversarial search on `images` against a trained model.

    `targets` (one class per image) default to random wrong classes drawn from `seed`; `labels`
    (the true classes, to draw targets different from them) default to the model's own
    predictions. `method` names a preset of `adversarial.METHODS` (default: its default);
    `threshold` (p(target) at which a search stops) and `max_steps` override the preset's.
    Returns an `adversarial.AttackResult`: adversarial images, steps, success, p(target),
    predicted classes and probabilities, and the noise's L0/L1/L2/L-inf per image.
    """
    from fmnist_jax import adversarial

    images = as_images(images)
    if labels is None:
        labels = predict(trained, images).argmax(axis=1)
    config = adversarial.method_config(
        method or adversarial.DEFAULT_METHOD, threshold=threshold, max_steps=max_steps
    )
    return adversarial.attack(
        trained.logits_fn(),
        images,
        np.asarray(labels),
        key=jax.random.key(seed),
        targets=None if targets is None else np.asarray(targets),
        config=config,
    )
