"""Readers for the standard distribution files of MNIST, Fashion-MNIST and CIFAR-10.

Nothing is downloaded: the files must lie in the directory named by `EOS_DATA_DIR`.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

DATA_DIR_VARIABLE = "EOS_DATA_DIR"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Where each dataset's files may sit below EOS_DATA_DIR (torchvision's layout included).
IDX_FOLDERS = {
    "mnist": ["mnist", "MNIST/raw", "MNIST", "."],
    "fashion_mnist": ["fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"],
}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetFilesMissing(FileNotFoundError):
    """The dataset's files are not where EOS_DATA_DIR says; the message names them."""


def data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value) if value else None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): magic 0x0000TTDD, DD dimensions of big-endian uint32."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt gzip stream
            raise ValueError(f"{path} is a damaged gzip file: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated inside its header")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims))
    expected = 4 + 4 * ndim + count * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} holds {len(raw)} bytes, its header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing_message(kind: str, base: Path | None, expected: list[str]) -> str:
    where = f"{DATA_DIR_VARIABLE}={base}" if base else f"{DATA_DIR_VARIABLE} is not set"
    return (
        f"{kind}: the dataset files were not found ({where}). Expected {', '.join(expected)} "
        f"in one of these folders below {DATA_DIR_VARIABLE}. Copy the standard distribution files there, "
        f"or set {DATA_DIR_VARIABLE} to the folder that holds them; nothing is downloaded."
    )


def load_idx_dataset(kind: str, base: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) of MNIST or Fashion-MNIST; images as uint8 (n, 28, 28)."""
    base = base if base is not None else data_dir()
    folders = IDX_FOLDERS[kind]
    expected = [f"{f}/{stem}[.gz]" for f in folders[:1] for stem in IDX_FILES.values()]
    if base is not None:
        for sub in folders:
            folder = base / sub
            found = {key: _find(folder, stem) for key, stem in IDX_FILES.items()}
            if all(found.values()):
                arrays = {key: read_idx(path) for key, path in found.items() if path is not None}
                return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
    raise DatasetFilesMissing(_missing_message(kind, base, [*expected, f"(or below {', '.join(folders[1:])})"]))


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data of shape (n, 3072) and n labels, got {data.shape}")
    return data, labels


def load_cifar10(base: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) from CIFAR-10's python pickles; images as uint8 (n, 3072)."""
    base = base if base is not None else data_dir()
    expected = [f"{CIFAR_FOLDER}/{name}" for name in CIFAR_TRAIN + CIFAR_TEST]
    if base is None or not all((base / p).is_file() for p in expected):
        raise DatasetFilesMissing(_missing_message("cifar10", base, expected))
    train = [_read_cifar_batch(base / CIFAR_FOLDER / name) for name in CIFAR_TRAIN]
    test = _read_cifar_batch(base / CIFAR_FOLDER / CIFAR_TEST[0])
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test[0],
        test[1],
    )
