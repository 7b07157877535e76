"""The MNIST / Fashion-MNIST / CIFAR-10 readers, on tiny files written in the real distribution formats."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from eos_core.data import DatasetFilesMissing, load_dataset
from eos_core.data.files import (
    CIFAR_FOLDER,
    CIFAR_TEST,
    CIFAR_TRAIN,
    DATA_DIR_VARIABLE,
    IDX_FILES,
    IDX_FOLDERS,
    load_cifar10,
    load_idx_dataset,
    read_idx,
)
from eos_core.spec import DatasetSpec

N_TRAIN, N_TEST = 30, 10
IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}

# --- writers of the standard formats ------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, a type code, the number of dims, the dims as big-endian uint32, then the data."""
    code = IDX_TYPE_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fake_mnist(seed: int) -> dict[str, np.ndarray]:
    """Random uint8 images (n, 28, 28) and labels covering all ten classes."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(N_TEST) % 10).astype(np.uint8),
    }


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    for key, stem in IDX_FILES.items():
        write_idx(folder / stem, arrays[key], gz)


def fake_cifar(seed: int, per_batch: int = 4, n_test: int = 6) -> dict[str, list[tuple[np.ndarray, list[int]]]]:
    rng = np.random.default_rng(seed)

    def batch(n: int) -> tuple[np.ndarray, list[int]]:
        return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, size=n)]

    train = [batch(per_batch) for _ in CIFAR_TRAIN]
    train[0] = (train[0][0], [9, *train[0][1][1:]])  # class 9 present, so there are ten classes
    return {"train": train, "test": [batch(n_test)]}


def write_cifar(base: Path, batches: dict[str, list[tuple[np.ndarray, list[int]]]]) -> None:
    folder = base / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for names, key in ((CIFAR_TRAIN, "train"), (CIFAR_TEST, "test")):
        for name, (data, labels) in zip(names, batches[key], strict=True):
            content = {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            }
            with (folder / name).open("wb") as fh:
                pickle.dump(content, fh, protocol=2)


# --- read_idx --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reads_back_images_and_labels(tmp_path: Path, gz: bool) -> None:
    arrays = fake_mnist(0)
    images = write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train_images"], gz)
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train_labels"], gz)
    stored = images.read_bytes()
    assert stored[:2] == b"\x1f\x8b" if gz else stored[:4] == b"\x00\x00\x08\x03"
    got_images, got_labels = read_idx(images), read_idx(labels)
    assert got_images.shape == (N_TRAIN, 28, 28) and got_images.dtype == np.uint8
    assert got_labels.shape == (N_TRAIN,)
    np.testing.assert_array_equal(got_images, arrays["train_images"])
    np.testing.assert_array_equal(got_labels, arrays["train_labels"])


def test_read_idx_magic_numbers_are_the_standard_ones() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    assert idx_bytes(images)[:4] == struct.pack(">I", 0x00000803)
    assert idx_bytes(np.zeros(2, dtype=np.uint8))[:4] == struct.pack(">I", 0x00000801)


@pytest.mark.parametrize("dtype", [np.dtype(">i2"), np.dtype(">i4"), np.dtype(np.int8)])
def test_read_idx_multibyte_types_are_big_endian(tmp_path: Path, dtype: np.dtype) -> None:
    values = np.array([[-3, 0, 7], [100, -100, 1]], dtype=dtype)
    path = write_idx(tmp_path / "values-idx2", values, gz=False)
    got = read_idx(path)
    np.testing.assert_array_equal(got.astype(np.int64), values.astype(np.int64))


def _corruptions(good: bytes) -> dict[str, bytes]:
    zipped = gzip.compress(good)
    middle = len(zipped) // 2
    return {
        "truncated body": good[:-1],
        "extra bytes": good + b"\x00",
        "truncated header": good[:9],
        "bad magic": b"\x01" + good[1:],
        "unknown type code": good[:2] + b"\x07" + good[3:],
        "empty": b"",
        "truncated gzip": zipped[:middle],
        "corrupt gzip": zipped[:middle] + bytes(b ^ 0xFF for b in zipped[middle : middle + 16]) + zipped[middle + 16 :],
        "gzip of a truncated body": gzip.compress(good[:-5]),
    }


@pytest.mark.parametrize("case", list(_corruptions(b"x")))
def test_read_idx_rejects_damaged_files(tmp_path: Path, case: str) -> None:
    good = idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251)
    path = tmp_path / "damaged-idx3-ubyte"
    path.write_bytes(_corruptions(good)[case])
    with pytest.raises(ValueError, match=re.escape(path.name)):
        read_idx(path)


# --- MNIST / Fashion-MNIST folders -----------------------------------------------------------------


LAYOUTS = [(kind, folder) for kind, folders in IDX_FOLDERS.items() for folder in folders]


@pytest.mark.parametrize(("kind", "folder"), LAYOUTS)
@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset_finds_every_documented_layout(tmp_path: Path, kind: str, folder: str, gz: bool) -> None:
    arrays = fake_mnist(1)
    write_mnist(tmp_path / folder, arrays, gz)
    got = load_idx_dataset(kind, tmp_path)
    for key, value in zip(("train_images", "train_labels", "test_images", "test_labels"), got, strict=True):
        np.testing.assert_array_equal(value, arrays[key])


def test_load_idx_dataset_accepts_dotted_file_names(tmp_path: Path) -> None:
    arrays = fake_mnist(2)
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / "mnist" / stem.replace("-idx", ".idx"), arrays[key], gz=False)
    np.testing.assert_array_equal(load_idx_dataset("mnist", tmp_path)[0], arrays["train_images"])


def test_load_idx_dataset_reads_base_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = fake_mnist(3)
    write_mnist(tmp_path / "mnist", arrays, gz=True)
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    np.testing.assert_array_equal(load_idx_dataset("mnist")[3], arrays["test_labels"])


def _assert_names_everything(message: str, names: list[str]) -> None:
    assert DATA_DIR_VARIABLE in message
    for name in names:
        assert name in message, f"{name!r} missing from: {message}"


@pytest.mark.parametrize("kind", list(IDX_FOLDERS))
def test_missing_idx_files_name_the_variable_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    with pytest.raises(DatasetFilesMissing) as unset:
        load_idx_dataset(kind)
    _assert_names_everything(str(unset.value), list(IDX_FILES.values()))
    assert "not set" in str(unset.value)

    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(DatasetFilesMissing) as empty:
        load_idx_dataset(kind)
    _assert_names_everything(str(empty.value), [*IDX_FILES.values(), str(tmp_path), IDX_FOLDERS[kind][0]])
    assert isinstance(empty.value, FileNotFoundError)


def test_incomplete_idx_folder_counts_as_missing(tmp_path: Path) -> None:
    arrays = fake_mnist(4)
    write_mnist(tmp_path / "mnist", arrays, gz=False)
    (tmp_path / "mnist" / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(DatasetFilesMissing, match=IDX_FILES["test_labels"]):
        load_idx_dataset("mnist", tmp_path)


def test_damaged_idx_in_dataset_folder_raises_value_error(tmp_path: Path) -> None:
    arrays = fake_mnist(5)
    write_mnist(tmp_path / "mnist", arrays, gz=False)
    path = tmp_path / "mnist" / IDX_FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="header promises"):
        load_idx_dataset("mnist", tmp_path)


# --- CIFAR-10 --------------------------------------------------------------------------------------


def test_load_cifar10_reads_back_the_pickled_batches(tmp_path: Path) -> None:
    batches = fake_cifar(0)
    write_cifar(tmp_path, batches)
    xtr, ytr, xte, yte = load_cifar10(tmp_path)
    assert xtr.dtype == np.uint8 and xtr.shape == (5 * 4, 3072) and xte.shape == (6, 3072)
    np.testing.assert_array_equal(xtr, np.concatenate([d for d, _ in batches["train"]]))
    np.testing.assert_array_equal(ytr, np.concatenate([lab for _, lab in batches["train"]]))
    np.testing.assert_array_equal(xte, batches["test"][0][0])
    np.testing.assert_array_equal(yte, batches["test"][0][1])


def test_missing_cifar_files_name_the_variable_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [f"{CIFAR_FOLDER}/{name}" for name in CIFAR_TRAIN + CIFAR_TEST]
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    with pytest.raises(DatasetFilesMissing) as unset:
        load_cifar10()
    _assert_names_everything(str(unset.value), expected)

    write_cifar(tmp_path, fake_cifar(1))
    (tmp_path / CIFAR_FOLDER / "data_batch_3").unlink()
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(DatasetFilesMissing) as partial:
        load_cifar10()
    _assert_names_everything(str(partial.value), [*expected, str(tmp_path)])


def test_malformed_cifar_batch_raises_value_error(tmp_path: Path) -> None:
    batches = fake_cifar(2)
    batches["train"][2] = (np.zeros((4, 1024), dtype=np.uint8), [0, 1, 2, 3])
    write_cifar(tmp_path, batches)
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(tmp_path)


# --- end to end through load_dataset ---------------------------------------------------------------


def _write_kind(kind: str, base: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write tiny files for `kind`; return (train_x, train_y, test_x, test_y) as pixel/255 rows and labels."""
    if kind == "cifar10":
        batches = fake_cifar(7)
        write_cifar(base, batches)
        xtr = np.concatenate([d for d, _ in batches["train"]])
        ytr = np.concatenate([lab for _, lab in batches["train"]])
        xte, yte = batches["test"][0][0], np.asarray(batches["test"][0][1])
    else:
        arrays = fake_mnist(8)
        write_mnist(base / IDX_FOLDERS[kind][-1], arrays, gz=kind == "fashion_mnist")
        xtr, ytr = arrays["train_images"], arrays["train_labels"]
        xte, yte = arrays["test_images"], arrays["test_labels"]
    return (
        xtr.reshape(len(xtr), -1) / 255.0,
        ytr.astype(np.int64),
        xte.reshape(len(xte), -1) / 255.0,
        yte.astype(np.int64),
    )


KINDS = ["mnist", "fashion_mnist", "cifar10"]


@pytest.mark.parametrize("kind", KINDS)
def test_load_dataset_scales_to_unit_max_norm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    xtr, ytr, xte, yte = _write_kind(kind, tmp_path)
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    data = load_dataset(DatasetSpec(kind=kind), seed=0)  # type: ignore[arg-type]
    original_scale = float(np.linalg.norm(xtr, axis=1).max())
    assert original_scale > 1.0  # otherwise the scaling below would be vacuous
    assert data.info["input_scale"] == pytest.approx(original_scale, rel=1e-12)
    assert abs(data.info["R"] - 1.0) <= 1e-12
    assert abs(np.linalg.norm(data.x_train, axis=1).max() - 1.0) <= 1e-12
    assert data.x_train.dtype == np.float64
    np.testing.assert_allclose(data.x_train * original_scale, xtr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.x_test * original_scale, xte, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(data.y_train, ytr)
    np.testing.assert_array_equal(data.y_test, yte)
    assert data.classes == 10 and data.info["classes"] == 10
    assert data.info["dim"] == xtr.shape[1] and data.info["n_train"] == len(xtr) and data.info["n_test"] == len(xte)
    assert data.info["class_counts"] == np.bincount(ytr, minlength=10).tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_load_dataset_class_subset_relabels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    xtr, ytr, _xte, yte = _write_kind(kind, tmp_path)
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    subset = [9, 2, 5] if kind == "cifar10" else [7, 2, 5]
    spec = DatasetSpec(kind=kind, class_subset=subset)  # type: ignore[arg-type]
    data = load_dataset(spec, seed=0, check_separability=False)  # the LP takes seconds at d = 784 / 3072
    assert data.classes == 3 and data.info["classes"] == 3
    keep, keep_test = np.isin(ytr, subset), np.isin(yte, subset)
    assert len(data.y_train) == keep.sum() > 0
    assert set(data.y_train.tolist()) <= {0, 1, 2}
    # relabelled in the order of the subset: new label i is old label subset[i]
    np.testing.assert_array_equal(np.asarray(subset)[data.y_train], ytr[keep])
    np.testing.assert_array_equal(np.asarray(subset)[data.y_test], yte[keep_test])
    scale = float(np.linalg.norm(xtr[keep], axis=1).max())
    assert data.info["input_scale"] == pytest.approx(scale, rel=1e-12)
    np.testing.assert_allclose(data.x_train * scale, xtr[keep], rtol=0, atol=1e-12)
    assert abs(data.info["R"] - 1.0) <= 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_load_dataset_n_train_subsets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    xtr, ytr, _, _ = _write_kind(kind, tmp_path)
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    spec = DatasetSpec(kind=kind, n_train=12, n_test=3)  # type: ignore[arg-type]
    data = load_dataset(spec, seed=0, check_separability=False)  # the LP takes seconds at d = 784 / 3072
    assert len(data.x_train) == len(data.y_train) == 12 and data.info["n_train"] == 12
    assert len(data.x_test) == 3
    scale = data.info["input_scale"]
    assert scale == pytest.approx(float(np.linalg.norm(data.x_train * scale, axis=1).max()), rel=1e-12)
    assert abs(data.info["R"] - 1.0) <= 1e-12
    # every kept row is an original row with its own label
    originals = {row.tobytes(): label for row, label in zip(np.round(xtr * 255).astype(np.uint8), ytr, strict=True)}
    for row, label in zip(np.round(data.x_train * scale * 255).astype(np.uint8), data.y_train, strict=True):
        assert originals[row.tobytes()] == label
    again = load_dataset(spec, seed=0, check_separability=False)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    other = load_dataset(spec, seed=1, check_separability=False)
    assert not np.array_equal(other.x_train, data.x_train)


@pytest.mark.parametrize("kind", KINDS)
def test_load_dataset_without_files_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(DatasetFilesMissing, match=DATA_DIR_VARIABLE):
        load_dataset(DatasetSpec(kind=kind), seed=0)  # type: ignore[arg-type]
