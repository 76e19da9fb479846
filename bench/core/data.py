"""MNIST from the four IDX files, md5-checked, held in memory as tensors.

The bundled copy (data/mnist in the repository, bench/_mnist in an installed wheel) is found relative to
the package, so commands work from any working directory. ``--data-dir`` may point at a folder holding
the four files (.gz or not) or at torchvision's layout (``DIR/MNIST/raw``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from bench.errors import UserError, first_line

if TYPE_CHECKING:  # torch loads when the tensors are made (bench.run checks the data before: issue 17)
    from torch import Tensor

# md5 of the uncompressed IDX bytes, as published with MNIST.
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
NAME = "mnist"
T = TypeVar("T")


@dataclass(frozen=True)
class MNIST:
    """Images as float32 [N, 784] in [0, 1] (byte / 255), labels as int64 [N]."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str
    digest: str  # md5 over the four files' md5s: names this exact data


def bundled_dir() -> Path:
    """data/mnist of the source tree if present, else the copy installed as package data."""
    repo = Path(__file__).resolve().parents[2] / "data" / "mnist"
    if repo.is_dir():
        return repo
    return Path(str(importlib.resources.files("bench") / "_mnist"))


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / "MNIST" / "raw" / stem,
                      folder / "MNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"MNIST file {stem}[.gz] not found in {folder} (nor in {folder / 'MNIST' / 'raw'}); "
                    "give --data-dir a folder with the four IDX files")


def _read_checked(path: Path, stem: str) -> bytes:
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read MNIST file {path}: {first_line(e)}") from None
    return _read_checked_once(str(path.resolve()), st.st_size, st.st_mtime_ns, stem)


@functools.lru_cache(maxsize=len(MD5))
def _read_checked_once(name: str, size: int, mtime_ns: int, stem: str) -> bytes:
    """The decompressed, md5-checked bytes of one file, read once per process while the file is unchanged (size
    and mtime): a process that trains several runs (a grid worker, a test session) decompresses and checksums
    MNIST once, not per run (about 1 s each). Bytes are immutable: every caller decodes its own tensors."""
    path = Path(name)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib.error: a corrupt deflate stream
        raise UserError(f"cannot read MNIST file {path}: {first_line(e)}") from None
    if hashlib.md5(data).hexdigest() != MD5[stem]:
        raise UserError(f"MNIST file {path} is corrupt: md5 of its bytes is not the published {MD5[stem]}")
    return data


def _parse_idx(data: bytes) -> np.ndarray:
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass(frozen=True)
class CheckedMNIST:
    """The four files found, read and md5-checked (no tensors yet): what a run's params and checks need."""

    source: str
    digest: str
    n_train: int


def _folder(data_dir: str | Path | None) -> Path:
    folder = Path(data_dir).expanduser() if data_dir is not None else bundled_dir()
    if not folder.is_dir():
        raise UserError(f"--data-dir {folder} is not a folder; give a folder with the four MNIST IDX files")
    return folder


def _digest() -> str:
    return hashlib.md5("".join(MD5.values()).encode()).hexdigest()[:8]


def check_mnist(data_dir: str | Path | None = None) -> CheckedMNIST:
    """Find, read and md5-check the four files without torch; raises UserError naming the file on any problem.
    The bytes stay cached (_read_checked_once): load_mnist then only decodes them."""
    folder = _folder(data_dir)
    data = {stem: _read_checked(_find(folder, stem), stem) for stem in MD5}
    return CheckedMNIST(str(folder), _digest(), len(_parse_idx(data["train-labels-idx1-ubyte"])))


def load_mnist(data_dir: str | Path | None = None) -> MNIST:
    """Read, md5-check and decode MNIST; raises UserError naming the file on any problem."""
    import torch

    folder = _folder(data_dir)
    arrays = {stem: _parse_idx(_read_checked(_find(folder, stem), stem)) for stem in MD5}

    def images(stem: str) -> Tensor:  # torch's cast and division: numpy's floats to the bit, 4x faster
        raw = torch.from_numpy(arrays[stem].copy())  # the parsed bytes are read-only; a uint8 copy is quick
        return raw.reshape(-1, 784).to(torch.float32).div_(255.0)

    def labels(stem: str) -> Tensor:
        return torch.from_numpy(arrays[stem].astype(np.int64))

    return MNIST(
        train_x=images("train-images-idx3-ubyte"),
        train_y=labels("train-labels-idx1-ubyte"),
        test_x=images("t10k-images-idx3-ubyte"),
        test_y=labels("t10k-labels-idx1-ubyte"),
        source=str(folder),
        digest=_digest(),
    )


@contextmanager
def _on_a_thread(read: Callable[[str | Path | None], T], data_dir: str | Path | None) -> Iterator[Callable[[], T]]:
    """``read(data_dir)`` on a thread (decompressing and checksumming release the GIL) while the block does
    something else, e.g. open the tracking store; the block calls what it is given to get the result (or its
    UserError)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnist") as pool:
        yield pool.submit(read, data_dir).result


def checking_mnist(data_dir: str | Path | None = None) -> AbstractContextManager[Callable[[], CheckedMNIST]]:
    """check_mnist on a thread, no torch: bench.run creates its run with this, then loads torch and the tensors."""
    return _on_a_thread(check_mnist, data_dir)


def loading_mnist(data_dir: str | Path | None = None) -> AbstractContextManager[Callable[[], MNIST]]:
    """load_mnist on a thread, while the block opens the store."""
    return _on_a_thread(load_mnist, data_dir)
