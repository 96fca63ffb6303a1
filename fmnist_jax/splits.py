"""Which Fashion-MNIST split a folder of IDX files holds, told by the files' sha256: the
official (Zalando's) files, or this project's offline copy (genuine images, a split of its own).
"""

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path


def _sha256_table(text: str) -> dict[str, str]:
    return dict(line.split() for line in text.strip().splitlines())


# The official files (Zalando's), as tensorflow-datasets 4.9.10 verifies its download:
# tensorflow_datasets/url_checksums/fashion_mnist.txt (tests/test_report.py compares the two).
OFFICIAL_SHA256 = _sha256_table("""
train-images-idx3-ubyte.gz 3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84
train-labels-idx1-ubyte.gz a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845
t10k-images-idx3-ubyte.gz 346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073
t10k-labels-idx1-ubyte.gz 67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5
""")
# The offline copy beside the repo (../shared/data/fashion_mnist/README.md): genuine images in
# a split of its own, not the official one.
OFFLINE_COPY_SHA256 = _sha256_table("""
train-images-idx3-ubyte.gz 884307c405e27ffc1a0f8f47c1d1a5b7cc61582b85f5080035206dd331f7df9b
train-labels-idx1-ubyte.gz 9c227a9f56ec001a9b92c3d6bd6a11ae05ce1496809fe661f9b2978f1ba10115
t10k-images-idx3-ubyte.gz ffa2b68ac5ee066d89e951f14e6870b4ca6ead2ea5616da5f6b88bb83be2d603
t10k-labels-idx1-ubyte.gz b4374ef0ba896844a2f049c6a72d9af4f2aead2b160604bf68c7dc6760dc2769
""")


def sha256(path: Path) -> str:
    """The file's sha256, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def idx_split(folder: str | os.PathLike) -> str | None:
    """Which split an IDX folder holds, by the sha256 of its four files: "official",
    "offline-copy" (this project's offline copy), "non-official" (other files), or None when
    a file cannot be read."""
    try:
        found = {name: sha256(Path(folder) / name) for name in OFFICIAL_SHA256}
    except OSError:
        return None
    if found == OFFICIAL_SHA256:
        return "official"
    return "offline-copy" if found == OFFLINE_COPY_SHA256 else "non-official"


SPLITS = {  # an IDX folder's `split`, and what a report says of it
    "official": "measured on Fashion-MNIST, the official split (the four IDX files are the "
    "official ones: their sha256 match)",
    "offline-copy": "measured on the offline copy of Fashion-MNIST (genuine images, "
    "non-official split: per class the first 1,000 of 7,000 are test)",
    "non-official": "measured on IDX files that are not the official Fashion-MNIST files "
    "(their sha256 differ): not known to be the official split",
    None: "measured on IDX files whose sha256 could not be read when the run started: "
    "official or not is unknown",
}


def provenance(data: Mapping) -> str:
    """What the numbers were measured on, from a summary's `data` entry (for an IDX folder, the
    `split` that the run recorded)."""
    source = data.get("source")
    if source == "idx":
        split = data.get("split")
        return SPLITS.get(split, f"measured on IDX files of split {split!r}")
    if source == "tfds":
        return "measured on Fashion-MNIST from tensorflow-datasets (the official split)"
    if source == "linear_regression":
        return "a synthetic linear-regression problem with a known ground truth"
    if source == "synthetic":
        return "synthetic random images, not Fashion-MNIST: these numbers test the code only"
    return f"unknown data source {source!r}"
