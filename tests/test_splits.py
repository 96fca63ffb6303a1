"""Which split an IDX folder holds, by the sha256 of its files."""

import importlib.util
from pathlib import Path

import pytest

from fmnist_jax import splits


def test_the_machines_offline_copy_is_recognised_by_its_checksums(offline_dir):
    assert splits.idx_split(offline_dir) == "offline-copy"


def test_official_checksums_are_those_tensorflow_datasets_verifies():
    spec = importlib.util.find_spec("tensorflow_datasets")  # finds it without importing it
    if spec is None:
        pytest.skip("tensorflow-datasets is not installed")
    path = Path(spec.submodule_search_locations[0]) / "url_checksums" / "fashion_mnist.txt"
    tfds = {}
    for line in path.read_text().splitlines():
        _, _, sha, name = line.split("\t")
        tfds[name] = sha
    assert tfds == splits.OFFICIAL_SHA256
    assert splits.OFFLINE_COPY_SHA256.keys() == tfds.keys()


# --------------------------------------------------------------------------- the report
