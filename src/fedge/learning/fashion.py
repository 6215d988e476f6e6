"""Fashion-MNIST from its IDX files: locate, (optionally) download, parse, normalise.

Search order: an explicit ``root``, ``$FEDGE_DATA`` and ``$FEDGE_DATA/fashion-mnist``, the user
cache (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``fedge/fashion-mnist``), and
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Files may be
gzipped or raw. A download into the cache happens only when ``FEDGE_DOWNLOAD=1``; the
downloaded content is checked against pinned SHA-256 digests of the decompressed files.
An explicit ``root`` or a set ``$FEDGE_DATA`` that does not hold the files is an error, never a
fall-back to a later folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.core.errors import FedgeError
from fedge.learning.data import ArrayDataset, DatasetNotFoundError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860
STD = 0.3530
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SHA256 = {  # of the decompressed files; the gzip wrappers differ between mirrors
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRRORS = (  # the S3 website endpoint of the official README serves plain HTTP only
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(FedgeError):
    """A file that is not a valid IDX file (bad magic number, truncated, wrong shape)."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes (magic ``0 0 dtype ndim``, big-endian u32 dims, then the values)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IdxFormatError(f"{source}: not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{source}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxFormatError(
            f"{source}: IDX body has {len(data) - header} bytes, dims {dims} need {expected}"
        )
    values: np.ndarray = np.frombuffer(data, dtype=dtype, offset=header)
    return values.reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped (detected by its magic bytes) or raw."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise IdxFormatError(f"{path}: corrupt gzip data ({exc})") from exc
    return parse_idx(raw, str(path))


def candidate_dirs(root: str | Path | None = None) -> list[Path]:
    """The folders searched for the IDX files, in order."""
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root))
    env = os.environ.get("FEDGE_DATA")
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    dirs += [cache_dir(), SYSTEM_DIR]
    return dirs


def cache_dir() -> Path:
    """The user cache folder for Fashion-MNIST (honours ``XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedge" / "fashion-mnist"


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing(folder: Path) -> list[str]:
    return [f"{stem}(.gz)" for stem in FILES.values() if _find_file(folder, stem) is None]


def check_explicit(root: str | Path | None = None) -> None:
    """An explicit ``root`` (``data.root``), else a set ``$FEDGE_DATA``, must hold the files:
    a folder the user named is never silently replaced by another copy."""
    if root is not None:
        folders, what = [Path(root)], f"data.root {str(root)!r}"
    elif os.environ.get("FEDGE_DATA"):
        env = Path(os.environ["FEDGE_DATA"])
        folders, what = [env, env / "fashion-mnist"], f"FEDGE_DATA {str(env)!r}"
    else:
        return
    if any(not _missing(folder) for folder in folders):
        return
    where = folders[0] if folders[0].is_dir() else None
    reason = f"lacks {', '.join(_missing(folders[0]))}" if where else "is not a directory"
    raise DatasetNotFoundError(
        f"{what} does not hold Fashion-MNIST: {folders[0]} {reason}; allowed: a folder with "
        f"the four *-ubyte(.gz) files, or unset it to use {SYSTEM_DIR} (`sudo apt-get install "
        "dataset-fashion-mnist`) or the user cache"
    )


def source(root: str | Path | None = None) -> dict[str, Any]:
    """Where the files come from: the folder and the SHA-256 of each file as stored."""
    check_explicit(root)
    files = find_files(root)
    if files is None:
        raise _not_found(root)
    folders = sorted({str(path.parent) for path in files.values()})
    digests = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files.values()}
    return {"dataset": "fashion_mnist", "dir": folders[0], "files": digests}


def find_files(root: str | Path | None = None) -> dict[str, Path] | None:
    """Paths of the four IDX files in the first folder that holds all of them, else None."""
    for folder in candidate_dirs(root):
        found = {key: _find_file(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return {k: v for k, v in found.items() if v is not None}
    return None


def _not_found(root: str | Path | None) -> DatasetNotFoundError:
    searched = "\n  ".join(str(d) for d in candidate_dirs(root))
    return DatasetNotFoundError(
        "Fashion-MNIST IDX files not found. Searched:\n  " + searched + "\nTo get them: "
        "`sudo apt-get install dataset-fashion-mnist`, or set FEDGE_DATA to a folder with "
        "the four *-ubyte(.gz) files, or set FEDGE_DOWNLOAD=1 to allow a download into "
        f"{cache_dir()}."
    )


def download(target: Path | None = None) -> Path:
    """Download the four files into ``target`` (the cache by default), verifying digests."""
    folder = target or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        if _find_file(folder, stem) is None:
            _download_one(stem, folder)
    return folder


def _download_one(stem: str, folder: Path) -> None:
    errors = []
    for base in MIRRORS:
        try:
            with urllib.request.urlopen(base + stem + ".gz", timeout=60) as resp:
                payload = resp.read()
        except OSError as exc:
            errors.append(f"{base}: {exc}")
            continue
        if _digest(payload) != SHA256[stem]:
            errors.append(f"{base}: corrupt download (checksum mismatch)")
            continue
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
            tmp.write(payload)
        Path(tmp.name).replace(folder / (stem + ".gz"))
        return
    raise DatasetNotFoundError(f"download of {stem} failed: " + "; ".join(errors))


def _digest(payload: bytes) -> str:
    try:
        return hashlib.sha256(gzip.decompress(payload)).hexdigest()
    except (OSError, EOFError):
        return ""


def _dataset(images: np.ndarray, labels: np.ndarray, paths: tuple[Path, Path]) -> ArrayDataset:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IdxFormatError(f"{paths[0]}: expected uint8 N×28×28 images, got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.max(initial=0) > 9:
        raise IdxFormatError(f"{paths[1]}: expected {images.shape[0]} labels in 0..9")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    x.mul_(1.0 / (255.0 * STD)).sub_(MEAN / STD)  # (v/255 - mean) / std, in place
    y = torch.from_numpy(labels.astype(np.int64))
    return ArrayDataset(x, y, 10, "fashion_mnist", CLASS_NAMES)


def load_fashion_mnist(root: str | Path | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """(train 60000, test 10000) as N×1×28×28 float32, scaled to [0, 1] then normalised."""
    check_explicit(root)
    files = find_files(root)
    if files is None and os.environ.get("FEDGE_DOWNLOAD") == "1":
        download()
        files = find_files(root)
    if files is None:
        raise _not_found(root)
    arrays = {key: read_idx(path) for key, path in files.items()}
    train = _dataset(arrays["train_x"], arrays["train_y"], (files["train_x"], files["train_y"]))
    test = _dataset(arrays["test_x"], arrays["test_y"], (files["test_x"], files["test_y"]))
    return train, test
