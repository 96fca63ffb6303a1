"""Data layer: the IDX reader on the offline copy, its validation, TFDS, batching."""

import gzip
import struct

import numpy as np
import pytest

from fmnist_jax import data, idxfile

# --------------------------------------------------------------------------- offline copy


@pytest.fixture(scope="module")
def offline(offline_dir):
    return data.load_idx(offline_dir)


def test_offline_copy_sizes_and_class_balance(offline):
    assert offline.train["inputs"].shape == (60_000, 28, 28, 1)
    assert offline.test["inputs"].shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(offline.train["targets"]), [6_000] * 10)
    np.testing.assert_array_equal(np.bincount(offline.test["targets"]), [1_000] * 10)


def test_offline_copy_dtypes_and_range(offline):
    assert offline.train["inputs"].dtype == np.uint8
    assert offline.train["targets"].dtype == np.int32
    assert offline.train["inputs"].min() == 0 and offline.train["inputs"].max() == 255
    assert offline.source == "idx"
    assert offline.describe()["num_train"] == 60_000


def test_selection_by_env_variable(offline_dir, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(offline_dir))
    cfg = _config(dataset="fashion_mnist", data_dir="")
    assert data.load(cfg).source == "idx"


def _config(**fields):
    import ml_collections

    return ml_collections.ConfigDict({"seed": 0, **fields})


# --------------------------------------------------------------------------- IDX files


def _write_set(folder, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (img_file, lbl_file) in data.IDX_FILES.items():
        n = n_train if split == "train" else n_test
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        idxfile.write(folder / img_file, images)
        idxfile.write(folder / lbl_file, labels)
        arrays[split] = (images, labels)
    return arrays


def test_write_then_read_round_trip(tmp_path):
    arrays = _write_set(tmp_path)
    ds = data.load_idx(tmp_path)
    for split in ("train", "test"):
        images, labels = arrays[split]
        np.testing.assert_array_equal(getattr(ds, split)["inputs"][..., 0], images)
        np.testing.assert_array_equal(getattr(ds, split)["targets"], labels)


def _gz(path, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(payload)


def _corrupt(kind, folder):
    """Breaks one file of a valid set in one way; returns the broken file's name."""
    images_file, labels_file = data.IDX_FILES["train"]
    if kind == "missing file":
        (folder / labels_file).unlink()
        return labels_file
    if kind == "truncated gz":
        raw = (folder / images_file).read_bytes()
        (folder / images_file).write_bytes(raw[: len(raw) // 2])
        return images_file
    if kind == "not gzip":
        (folder / images_file).write_bytes(b"this is plain text, not gzip")
        return images_file
    if kind == "wrong magic":
        _gz(folder / images_file, struct.pack(">4I", 2049, 1, 28, 28) + bytes(784))
        return images_file
    if kind == "count mismatch":
        idxfile.write(folder / labels_file, np.zeros(19, np.uint8))
        return "19 labels"
    if kind == "wrong image size":
        idxfile.write(folder / images_file, np.zeros((20, 32, 32), np.uint8))
        return images_file
    if kind == "label 10":
        idxfile.write(folder / labels_file, np.full(20, 10, np.uint8))
        return labels_file
    if kind == "short body":
        _gz(folder / images_file, struct.pack(">4I", 2051, 20, 28, 28) + bytes(100))
        return images_file
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing file", "file not found"),
        ("truncated gz", "truncated"),
        ("not gzip", "not a gzip file"),
        ("wrong magic", "magic number 2049, expected 2051"),
        ("count mismatch", "20 images but"),
        ("wrong image size", "(32, 32), expected (28, 28)"),
        ("label 10", "label 10 at index 0 is outside 0..9"),
        ("short body", "file holds 100"),
    ],
)
def test_corrupt_input_gives_one_clear_error(tmp_path, kind, words):
    _write_set(tmp_path)
    names = _corrupt(kind, tmp_path)
    with pytest.raises(data.DataError) as e:
        data.load_idx(tmp_path)
    message = str(e.value)
    assert words in message and names in message
    assert "\n" not in message


def test_missing_folder(tmp_path):
    with pytest.raises(data.DataError, match="data folder not found"):
        data.load_idx(tmp_path / "nowhere")


# --------------------------------------------------------------------------- TFDS


def test_tfds_source_under_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "_online", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=24):
        ds = data.load(_config(dataset="fashion_mnist", data_dir=""))
    assert ds.source == "tfds"
    assert ds.train["inputs"].shape == (24, 28, 28, 1) and ds.train["inputs"].dtype == np.uint8
    assert ds.train["targets"].dtype == np.int32
    assert ds.train["targets"].min() >= 0 and ds.train["targets"].max() < 10


def test_tfds_offline_fails_fast_with_a_hint(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "_online", lambda *a, **k: False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match="FMNIST_DATA_DIR"):
        data.load_tfds(data_dir=str(tmp_path))


# --------------------------------------------------------------------------- batching


def _split(n=10):
    return {
        "inputs": np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * 25,
        "targets": np.arange(n, dtype=np.int32),
    }


def test_epoch_sees_every_example_once_when_padded():
    batches = list(data.epoch_batches(_split(10), 4, seed=3, remainder="pad"))
    assert [len(b["targets"]) for b in batches] == [4, 4, 4]
    seen = np.concatenate([b["targets"][b["mask"]] for b in batches])
    assert sorted(seen) == list(range(10))
    assert batches[-1]["mask"].tolist() == [True, True, False, False]


def test_drop_remainder_gives_full_batches_only():
    batches = list(data.epoch_batches(_split(10), 4, seed=0))
    assert [len(b["targets"]) for b in batches] == [4, 4]
    assert len(set(np.concatenate([b["targets"] for b in batches]))) == 8


def test_images_become_float_in_unit_range():
    batch = next(data.epoch_batches(_split(10), 10))
    assert batch["inputs"].dtype == np.float32
    assert batch["inputs"].min() == 0.0 and batch["inputs"].max() == pytest.approx(225 / 255)
    assert batch["targets"].dtype == np.int32


def test_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        return np.concatenate(
            [b["targets"] for b in data.epoch_batches(_split(50), 10, seed=seed, epoch=epoch)]
        )

    np.testing.assert_array_equal(order(1, 0), order(1, 0))
    assert not np.array_equal(order(1, 0), order(2, 0))
    assert not np.array_equal(order(1, 0), order(1, 1))


def test_train_batches_resume_at_any_step():
    full = [b["targets"] for _, b in zip(range(12), data.train_batches(_split(10), 4, seed=5))]
    resumed = [b["targets"] for _, b in zip(range(7), data.train_batches(_split(10), 4, 5, 5))]
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a, b)


def test_batch_larger_than_data_is_refused():
    with pytest.raises(data.DataError, match="larger than the 10 training examples"):
        next(data.train_batches(_split(10), 16, seed=0))


def test_synthetic_source_is_deterministic():
    a, b = data.synthetic_images(seed=1), data.synthetic_images(seed=1)
    np.testing.assert_array_equal(a.train["inputs"], b.train["inputs"])
    assert a.train["inputs"].shape[1:] == (28, 28, 1) and a.train["inputs"].dtype == np.uint8


def test_tfds_data_dir_comes_from_the_config(monkeypatch, tmp_path):
    seen = []
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "load_tfds", lambda data_dir=None: seen.append(data_dir))
    data.load(_config(dataset="fashion_mnist", data_dir="", tfds_data_dir=str(tmp_path)))
    data.load(_config(dataset="fashion_mnist", data_dir="", tfds_data_dir=""))
    assert seen == [str(tmp_path), None]
