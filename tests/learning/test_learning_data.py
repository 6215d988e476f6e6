"""Datasets: the IDX parser, the Fashion-MNIST search order, digits, synthetic, user arrays."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.core.errors import ConfigError
from fedge.learning import fashion
from fedge.learning.data import (
    ArrayDataset,
    DatasetNotFoundError,
    from_arrays,
    from_torch_dataset,
    load_digits_dataset,
    make_synthetic,
)
from fedge.learning.datasets import DATASETS, load_dataset
from fedge.learning.fashion import IdxFormatError, load_fashion_mnist, parse_idx, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0 0 8 ndim, big-endian dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> None:
    """Tiny but well-formed Fashion-MNIST files (pixel values 0..255, labels 0..9)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


@pytest.fixture
def no_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environment where no Fashion-MNIST copy can be found."""
    monkeypatch.delenv("FEDGE_DATA", raising=False)  # a set FEDGE_DATA must hold the files
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDGE_DOWNLOAD", raising=False)
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "system")
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(path), arr)


def test_parse_idx_big_endian_int32() -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    data = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes()
    np.testing.assert_array_equal(parse_idx(data), [1, -2, 70000])


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(IdxFormatError, match=r"broken-idx3-ubyte.*magic"):
        read_idx(path)


def test_truncated_body_is_rejected() -> None:
    data = idx_bytes(np.zeros((2, 2), dtype=np.uint8))[:-1]
    with pytest.raises(IdxFormatError, match="need 4"):
        parse_idx(data, "x.idx")


def test_fashion_not_found_says_how_to_get_it(no_fashion: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FEDGE_DATA" in message and "FEDGE_DOWNLOAD=1" in message
    assert str(no_fashion / "system") in message


@pytest.mark.parametrize("where", ["root", "env", "env_sub", "cache", "system"])
def test_fashion_search_order(
    no_fashion: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where.startswith("env"):
        monkeypatch.setenv("FEDGE_DATA", str(no_fashion / "data"))
    folders = {
        "root": no_fashion / "mine",
        "env": no_fashion / "data",
        "env_sub": no_fashion / "data" / "fashion-mnist",
        "cache": no_fashion / "cache" / "fedge" / "fashion-mnist",
        "system": no_fashion / "system",
    }
    write_fake_fashion(folders[where], gz=where != "cache")
    train, test = load_fashion_mnist(folders[where] if where == "root" else None)
    assert (len(train), len(test)) == (6, 4)
    assert train.x.shape == (6, 1, 28, 28) and train.x.dtype == torch.float32
    assert train.n_classes == 10 and len(train.class_names) == 10


def test_fashion_normalisation(no_fashion: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_DATA", str(no_fashion / "data"))
    write_fake_fashion(no_fashion / "data")
    train, _ = load_fashion_mnist()
    raw = read_idx(no_fashion / "data" / "train-images-idx3-ubyte.gz")
    expected = (raw / 255.0 - fashion.MEAN) / fashion.STD
    np.testing.assert_allclose(train.x[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(train.labels, np.arange(6) % 10)


def test_fashion_corrupt_file_is_named(no_fashion: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_DATA", str(no_fashion / "data"))
    folder = no_fashion / "data"
    write_fake_fashion(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"junk-junk"))
    with pytest.raises(IdxFormatError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist()


class FakeResponse:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self) -> bytes:
        return self.payload


@pytest.mark.parametrize("tamper", [False, True])
def test_download_only_when_allowed_and_verified(
    no_fashion: Path, monkeypatch: pytest.MonkeyPatch, tamper: bool
) -> None:
    source = no_fashion / "mirror"
    write_fake_fashion(source)
    digests = {
        s: hashlib.sha256(read_raw(source / (s + ".gz"))).hexdigest() for s in fashion.SHA256
    }
    monkeypatch.setattr(fashion, "SHA256", digests)
    monkeypatch.setattr(fashion, "MIRRORS", ("fake://mirror/",))
    fetched: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> FakeResponse:
        fetched.append(url)
        payload = (source / url.removeprefix("fake://mirror/")).read_bytes()
        return FakeResponse(gzip.compress(b"tampered") if tamper else payload)

    monkeypatch.setattr(fashion.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DatasetNotFoundError):
        load_fashion_mnist()  # FEDGE_DOWNLOAD is not set: no download
    assert fetched == []
    monkeypatch.setenv("FEDGE_DOWNLOAD", "1")
    if tamper:
        with pytest.raises(DatasetNotFoundError, match="checksum"):
            load_fashion_mnist()
        return
    train, _ = load_fashion_mnist()
    assert len(train) == 6 and len(fetched) == 4
    assert (no_fashion / "cache" / "fedge" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def read_raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


@pytest.mark.skipif(fashion.find_files() is None, reason="Fashion-MNIST files not installed")
def test_real_fashion_mnist() -> None:
    train, test = load_fashion_mnist()
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.n_classes == 10
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert abs(float(train.x.mean())) < 0.01 and abs(float(train.x.std()) - 1.0) < 0.01


def test_digits_split_is_deterministic() -> None:
    train, test = load_digits_dataset()
    again, _ = load_digits_dataset()
    assert (len(train), len(test)) == (1437, 360)
    assert train.input_shape == (1, 8, 8) and train.n_classes == 10
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)


def test_synthetic_is_reproducible_and_shaped() -> None:
    a, _ = make_synthetic(n_train=50, n_test=10, input_shape=(1, 4, 4), n_classes=3, seed=5)
    b, _ = make_synthetic(n_train=50, n_test=10, input_shape=(1, 4, 4), n_classes=3, seed=5)
    c, _ = make_synthetic(n_train=50, n_test=10, input_shape=(1, 4, 4), n_classes=3, seed=6)
    assert a.input_shape == (1, 4, 4) and a.y.dtype == torch.int64
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    with pytest.raises(ConfigError, match="n_classes"):
        make_synthetic(n_classes=1)


def test_from_arrays_adds_a_channel_and_infers_classes() -> None:
    ds = from_arrays(np.zeros((5, 6, 6), dtype=np.uint8), np.array([0, 1, 2, 1, 4.0]))
    assert ds.input_shape == (1, 6, 6) and ds.x.dtype == torch.float32
    assert ds.n_classes == 5 and ds.y.dtype == torch.int64
    assert len(ds.subset(np.array([4, 0]))) == 2
    assert ds.subset(np.array([4, 0])).y.tolist() == [4, 0]


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "field"),
    [
        (np.zeros((3, 2)), [0, 1], {}, "y"),
        (np.zeros((3, 2)), [0, 1, -1], {}, "y"),
        (np.zeros((3, 2)), [0, 1, 0.5], {}, "y"),
        (np.zeros((3, 2)), ["a", "b", "c"], {}, "y"),
        (np.zeros((3, 2)), [0, 1, 5], {"n_classes": 3}, "n_classes"),
        (np.zeros(3), [0, 1, 2], {}, "x"),
    ],
)
def test_from_arrays_rejects_bad_input(x: object, y: object, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_arrays(x, y, **kwargs)
    assert info.value.field == field


def test_from_torch_dataset() -> None:
    tds = torch.utils.data.TensorDataset(torch.randn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    ds = from_torch_dataset(tds, name="mine")
    assert len(ds) == 7 and ds.input_shape == (3,) and ds.n_classes == 3 and ds.name == "mine"


def test_array_dataset_validates() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.shape"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(ConfigError, match=r"dataset\.dtype"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(3), 2)


def test_dataset_registry() -> None:
    assert {"fashion_mnist", "digits", "synthetic"} <= set(DATASETS.names())
    train, test = load_dataset("synthetic", n_train=20, n_test=5, n_features=3)
    assert (len(train), len(test), train.input_shape) == (20, 5, (3,))
    with pytest.raises(ConfigError, match="n_trian"):
        load_dataset("synthetic", n_trian=20)
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("cifar10")
