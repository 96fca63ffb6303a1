"""The IDX file format of MNIST-style data, gzipped: uint8 images [N, H, W] (magic 2051) and
labels [N] (magic 2049); every problem with a file is one DataError naming it."""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from fmnist_jax.errors import DataError

MAGIC = {3: 2051, 1: 2049}  # by the array's dimensions: images, labels
KIND = {3: "images", 1: "labels"}


def _read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except gzip.BadGzipFile as e:
        raise DataError(f"{path}: not a gzip file ({e})") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


def read(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The uint8 array of a gzipped IDX file of `ndim` dimensions (3: images, 1: labels)."""
    path = Path(path)
    raw, magic = _read_gz(path), MAGIC[ndim]
    header_size = 4 * (1 + ndim)
    if len(raw) < header_size:
        raise DataError(f"{path}: only {len(raw)} bytes, shorter than the IDX header")
    found_magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header_size])
    if found_magic != magic:
        raise DataError(
            f"{path}: magic number {found_magic}, expected {magic} for IDX {KIND[ndim]}"
        )
    expected = int(np.prod(dims))
    body = raw[header_size:]
    if len(body) != expected:
        raise DataError(
            f"{path}: header announces {dims} = {expected} bytes of data, file holds {len(body)}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def write(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped IDX file (images if 3-D, labels if 1-D)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(f">{1 + array.ndim}I", MAGIC[array.ndim], *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
