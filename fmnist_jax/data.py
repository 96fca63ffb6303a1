"""Data sources, validation and batching.

Every source (`load`) returns a `Dataset`: two in-memory splits of numpy `inputs` and `targets`,
plus where the data came from. Images stay uint8 and become float32 in [0, 1] a batch at a time.
"""

import dataclasses
import os
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fmnist_jax import errors, idxfile
from fmnist_jax import splits as splits_lib
from fmnist_jax.errors import ConfigError, DataError

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ENV_DATA_DIR = "FMNIST_DATA_DIR"
TFDS_NAME = "fashion_mnist"
DATASETS = ("fashion_mnist", "synthetic", "linear_regression")  # what `load` reads

Split = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    source: str  # "idx", "tfds", "synthetic" or "linear_regression"
    location: str  # the folder read, or a description of the generator
    split: str | None = None  # Fashion-MNIST's "official" split, "offline-copy", ... (splits.py)

    def describe(self) -> dict:
        sizes = {f"num_{name}": len(getattr(self, name)["targets"]) for name in ("train", "test")}
        return {"source": self.source, "location": self.location, "split": self.split, **sizes}


def load_idx(folder: str | os.PathLike) -> Dataset:
    """Reads the four standard Fashion-MNIST gz files (`fmnist_jax.idxfile`) from `folder`."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found (set data_dir or ${ENV_DATA_DIR})")
    splits = {}
    for name, (images_file, labels_file) in IDX_FILES.items():
        images = idxfile.read(folder / images_file, ndim=3)
        if images.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"{folder / images_file}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}"
            )
        labels = idxfile.read(folder / labels_file, ndim=1)
        bad = np.flatnonzero(labels >= NUM_CLASSES)
        if bad.size:
            raise DataError(
                f"{folder / labels_file}: label {labels[bad[0]]} at index {bad[0]} is outside"
                f" 0..{NUM_CLASSES - 1} ({bad.size} such labels)"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {images_file} holds {len(images)} images but {labels_file} holds"
                f" {len(labels)} labels"
            )
        splits[name] = {"inputs": images[..., None], "targets": labels.astype(np.int32)}
    split = splits_lib.idx_split(folder)
    return Dataset(splits["train"], splits["test"], "idx", str(folder.resolve()), split)


def _online(url: str, timeout: float = 3.0) -> bool:
    """Whether the host serving `url` accepts a connection within `timeout` seconds."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_tfds(data_dir: str | None = None) -> Dataset:
    """The official split through tensorflow-datasets (downloaded on first use; offline, a
    DataError at once instead of TFDS's minutes of retries)."""
    from fmnist_jax import runtime

    def missing(package: str, command: str):
        raise errors.MissingDependency(
            f"the tfds source needs {package}, which is not installed ({command}); or point"
            f" ${ENV_DATA_DIR} (or --config.data_dir) at a folder with the four IDX gz files"
        )

    tfds = runtime.import_beside_tensorflow("tensorflow_datasets", missing)
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    if not builder.is_prepared():
        if not _online(builder.URL):
            raise DataError(
                f"tfds: {TFDS_NAME} is not prepared in {builder.data_dir} and its download"
                f" server is unreachable; point ${ENV_DATA_DIR} (or --config.data_dir) at a"
                " folder with the four IDX gz files instead"
            )
        builder.download_and_prepare()
    splits = {}
    for name in ("train", "test"):
        ds = builder.as_dataset(split=name).batch(10_000)
        parts = list(tfds.as_numpy(ds))
        images = np.concatenate([p["image"] for p in parts]).astype(np.uint8)
        labels = np.concatenate([p["label"] for p in parts]).astype(np.int32)
        splits[name] = {"inputs": images, "targets": labels}
    return Dataset(splits["train"], splits["test"], "tfds", str(builder.data_dir), "official")


def synthetic_images(num_train: int = 512, num_test: int = 128, seed: int = 0) -> Dataset:
    """A learnable stand-in for Fashion-MNIST, same shapes and dtypes: each example is its
    class's fixed random template plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(NUM_CLASSES, *IMAGE_SHAPE, 1))

    def make(n):
        labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
        noise = rng.normal(0, 60, size=(n, *IMAGE_SHAPE, 1))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return {"inputs": images, "targets": labels}

    train, test = make(num_train), make(num_test)
    return Dataset(train, test, "synthetic", f"synthetic images, seed {seed}")


def linear_regression_data(
    num_train: int, num_test: int, num_features: int, noise: float, seed: int = 0
) -> Dataset:
    """y = <w*, x> + b* + noise with x ~ N(0, I); w*, b* drawn from the seed."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=num_features).astype(np.float32)
    b = np.float32(rng.normal())

    def make(n):
        x = rng.normal(size=(n, num_features)).astype(np.float32)
        y = (x @ w + b + noise * rng.normal(size=n)).astype(np.float32)
        return {"inputs": x, "targets": y}

    desc = f"y = <w*, x> + b* + N(0, {noise}^2), {num_features} features, seed {seed}"
    return Dataset(make(num_train), make(num_test), "linear_regression", desc)


def load(config) -> Dataset:
    """The data set `config.dataset` names (one of DATASETS). Fashion-MNIST comes from the IDX
    folder `config.data_dir` (or $FMNIST_DATA_DIR) names, else from TFDS."""
    if config.dataset == "linear_regression":
        r = config.regression
        return linear_regression_data(
            r.num_train, r.num_test, r.num_features, r.noise, seed=config.seed
        )
    if config.dataset == "synthetic":
        return synthetic_images(seed=config.seed)
    if config.dataset == "fashion_mnist":
        folder = config.get("data_dir") or os.environ.get(ENV_DATA_DIR)
        return load_idx(folder) if folder else load_tfds(config.get("tfds_data_dir") or None)
    raise DataError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")


def check_images(images, what: str = "images", floats_only: bool = False) -> None:
    """ConfigError unless `images` are a non-empty batch of uint8 grey levels (not with
    `floats_only`) or finite floats in [0, 1]: the one check of a caller's images."""
    images = np.asarray(images)
    if images.size == 0:
        raise ConfigError(f"{what} is empty: pass at least one image")
    kind = images.dtype.kind
    if floats_only and kind != "f":
        raise ConfigError(
            f"{what} must be floats in [0, 1] (data.to_model_inputs), got {images.dtype}"
        )
    if kind != "f" and images.dtype != np.uint8:
        raise ConfigError(
            f"{what} have dtype {images.dtype}: pass uint8 grey levels (0..255) or floats in [0, 1]"
        )
    if kind == "f":
        bad = ~np.isfinite(images)
        if bad.any():
            raise ConfigError(f"{what} hold {int(bad.sum())} NaN or infinite pixels")
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            hint = " (0..255 floats? divide by 255, or pass uint8)" if high > 1.0 else ""
            raise ConfigError(f"{what} must lie in [0, 1], got {low:g}..{high:g}{hint}")


def check_labels(values, num_classes: int, what: str = "labels") -> None:
    """ConfigError unless every class index in `values` lies in 0..num_classes-1."""
    values = np.asarray(values)
    if values.size and not 0 <= values.min() <= values.max() < num_classes:
        raise ConfigError(f"{what} must lie in 0..{num_classes - 1}")


def to_model_inputs(inputs: np.ndarray) -> np.ndarray:
    """uint8 images become float32 in [0, 1]; real-valued features pass through as float32."""
    if inputs.dtype == np.uint8:
        return inputs.astype(np.float32) / 255.0
    return inputs.astype(np.float32, copy=False)


def epoch_indices(
    num_examples: int,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    remainder: str = "drop",
    first_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(example indices, mask) of each batch of one pass, as `epoch_batches` builds them."""
    if remainder not in ("drop", "pad"):
        raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
    n = num_examples
    order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if remainder == "drop" else n
    for start in range(first_batch * batch_size, stop, batch_size):
        idx = order[start : start + batch_size]
        valid = len(idx)
        if valid < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - valid, order[0])])
        yield idx, np.arange(batch_size) < valid


def gather(split: Split, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The batch of examples `idx`, inputs as the model takes them."""
    return {"inputs": to_model_inputs(split["inputs"][idx]), "targets": split["targets"][idx]}


def epoch_batches(
    split: Split,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    remainder: str = "drop",
    first_batch: int = 0,
    rows: slice | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` in batches, ordered by a permutation drawn from (seed, epoch) or
    as stored (`seed=None`). A last partial batch is dropped (`remainder="drop"`) or padded with
    the first example, every batch then carrying a `mask` False on the padding ("pad": each
    example counts once). `first_batch` skips batches unbuilt; `rows` keeps a process's rows."""
    n = len(split["targets"])
    passes = epoch_indices(
        n, batch_size, seed=seed, epoch=epoch, remainder=remainder, first_batch=first_batch
    )
    for idx, mask in passes:
        if rows is not None:
            idx, mask = idx[rows], mask[rows]
        batch = gather(split, idx)
        if remainder == "pad":
            batch["mask"] = mask
        yield batch


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Full training batches per epoch."""
    return len(split["targets"]) // batch_size


def train_indices(
    num_examples: int, batch_size: int, seed: int, start_step: int = 0
) -> Iterator[np.ndarray]:
    """Endless example indices of each training step's batch from global step `start_step`:
    step s always gets the same batch for a seed, so a resumed run sees an uninterrupted one's."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise DataError(
            f"batch size {batch_size} is larger than the {num_examples} training examples"
        )
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for idx, _ in epoch_indices(
            num_examples, batch_size, seed=seed, epoch=epoch, first_batch=skip
        ):
            yield idx
        epoch, skip = epoch + 1, 0


def train_batches(
    split: Split, batch_size: int, seed: int, start_step: int = 0, rows: slice | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of `train_indices`, built on the host; `rows` as in `epoch_batches`."""
    for idx in train_indices(len(split["targets"]), batch_size, seed, start_step):
        yield gather(split, idx if rows is None else idx[rows])


def input_shape(config) -> tuple[int, ...]:
    """One example's input shape in the data set `config.dataset` names."""
    if is_regression(config):
        return (config.regression.num_features,)
    return (*IMAGE_SHAPE, 1)


def is_regression(config) -> bool:
    """Whether `config.dataset`'s targets are real values (squared error) rather than classes."""
    return config.dataset == "linear_regression"
