"""The bundled MNIST: published facts, md5 checks, and the --data-dir layouts."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.config import TrainConfig
from bench.core.data import MD5, MNIST, bundled_dir, load_mnist
from bench.core.splits import split_validation
from bench.errors import UserError

# Published with MNIST (LeCun, Cortes, Burges), and reproduced by every loader.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FILES = list(MD5)


def test_bundled_files_are_present_and_compressed() -> None:
    folder = bundled_dir()
    assert folder.is_absolute()
    for stem in FILES:
        assert (folder / f"{stem}.gz").is_file()


def test_shapes_dtypes_and_range(mnist: MNIST) -> None:
    assert mnist.train_x.shape == (60000, 784) and mnist.test_x.shape == (10000, 784)
    assert mnist.train_y.shape == (60000,) and mnist.test_y.shape == (10000,)
    assert mnist.train_x.dtype == torch.float32 and mnist.train_y.dtype == torch.int64
    assert float(mnist.train_x.min()) == 0.0 and float(mnist.train_x.max()) == 1.0
    # byte / 255: every value is an exact multiple of 1/255
    levels = torch.unique(mnist.test_x[:100])
    torch.testing.assert_close(levels * 255, torch.round(levels * 255), rtol=0, atol=1e-4)


def test_every_pixel_is_its_byte_divided_by_255_in_float32(mnist: MNIST) -> None:
    """The decoded floats are the correctly rounded float32 of byte / 255 (what the seed's ToTensor gives)."""
    for images, stem in ((mnist.train_x, "train-images-idx3-ubyte"), (mnist.test_x, "t10k-images-idx3-ubyte")):
        raw = np.frombuffer(gzip.decompress((bundled_dir() / f"{stem}.gz").read_bytes()), np.uint8, offset=16)
        expected = (raw.astype(np.float64) / 255.0).astype(np.float32).reshape(-1, 784)
        assert np.array_equal(images.numpy(), expected)


def test_published_sanity_facts(mnist: MNIST) -> None:
    assert int(mnist.train_y[0]) == 5 and int(mnist.test_y[0]) == 7
    assert torch.bincount(mnist.train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.test_y, minlength=10).tolist() == TEST_COUNTS
    assert float(mnist.train_x.double().mean()) == pytest.approx(0.1307, abs=5e-5)
    assert float(mnist.train_x.double().std()) == pytest.approx(0.3081, abs=5e-5)


def test_digest_names_the_data(mnist: MNIST) -> None:
    assert len(mnist.digest) == 8 and int(mnist.digest, 16) >= 0
    assert Path(mnist.source) == bundled_dir()


def test_limit_train_takes_the_first_images(mnist: MNIST) -> None:
    train_x, held_out = split_validation(mnist, TrainConfig(limit_train=100))
    assert torch.equal(train_x, mnist.train_x[:100]) and held_out is None
    train_x, held_out = split_validation(mnist, TrainConfig(limit_train=100, validation=500))
    assert torch.equal(train_x, mnist.train_x[:100]) and torch.equal(held_out, mnist.train_x[-500:])


def test_loads_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert bundled_dir().is_dir()
    assert (bundled_dir() / f"{FILES[0]}.gz").is_file()


def copy_bundled(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for stem in FILES:
        shutil.copy(bundled_dir() / f"{stem}.gz", dest / f"{stem}.gz")
    return dest


def gunzip_into(dest: Path, stems: list[str] = FILES) -> Path:
    """The bundled files, decompressed into dest (the form torchvision and most mirrors leave them in)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (dest / stem).write_bytes(gzip.decompress((bundled_dir() / f"{stem}.gz").read_bytes()))
    return dest


@pytest.fixture(scope="module")
def uncompressed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gunzip_into(tmp_path_factory.mktemp("raw"))


def assert_same_data(a: MNIST, b: MNIST) -> None:
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.digest == b.digest


def test_data_dir_with_uncompressed_files(uncompressed: Path, mnist: MNIST) -> None:
    data = load_mnist(uncompressed)
    assert_same_data(data, mnist)
    assert data.source == str(uncompressed)


def test_data_dir_with_torchvision_layout(tmp_path: Path, uncompressed: Path, mnist: MNIST) -> None:
    """torchvision's MNIST(root) keeps root/MNIST/raw/<stem> (and the .gz beside it)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in FILES:
        (raw / stem).symlink_to(uncompressed / stem)
        shutil.copy(bundled_dir() / f"{stem}.gz", raw / f"{stem}.gz")
    assert_same_data(load_mnist(tmp_path), mnist)


def test_data_dir_with_torchvision_layout_gz_only(tmp_path: Path, mnist: MNIST) -> None:
    copy_bundled(tmp_path / "MNIST" / "raw")
    assert_same_data(load_mnist(str(tmp_path)), mnist)


def test_data_dir_with_a_mix_of_gz_and_uncompressed(tmp_path: Path, uncompressed: Path, mnist: MNIST) -> None:
    for stem in FILES[:2]:
        shutil.copy(uncompressed / stem, tmp_path / stem)
    for stem in FILES[2:]:
        shutil.copy(bundled_dir() / f"{stem}.gz", tmp_path / f"{stem}.gz")
    assert_same_data(load_mnist(tmp_path), mnist)


def flip_byte_in_payload(path: Path, offset: int) -> None:
    """Corrupt one byte of the decompressed content but keep a valid .gz: only the md5 can notice."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[offset] ^= 0x01
    path.write_bytes(gzip.compress(bytes(data), compresslevel=1))


@pytest.mark.parametrize("stem", FILES)
def test_corrupt_content_is_a_user_error_naming_the_file(stem: str, tmp_path: Path) -> None:
    folder = copy_bundled(tmp_path)
    flip_byte_in_payload(folder / f"{stem}.gz", offset=5000 if "images" in stem else 100)
    with pytest.raises(UserError) as e:
        load_mnist(folder)
    message = str(e.value)
    assert f"{stem}.gz" in message and "corrupt" in message and MD5[stem] in message
    assert "\n" not in message


def flip_byte(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_uncompressed_file_is_a_user_error(tmp_path: Path) -> None:
    folder = gunzip_into(tmp_path, FILES[2:])  # the two test-set files, uncompressed
    for stem in FILES[:2]:
        shutil.copy(bundled_dir() / f"{stem}.gz", folder / f"{stem}.gz")
    flip_byte(folder / "t10k-labels-idx1-ubyte", -1)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_mnist(folder)


def test_flipped_byte_in_the_gz_stream_is_a_user_error(tmp_path: Path) -> None:
    """A byte flipped in the compressed file itself: gzip's CRC (or the md5) catches it, never a traceback."""
    folder = copy_bundled(tmp_path)
    target = folder / "train-labels-idx1-ubyte.gz"
    flip_byte(target, target.stat().st_size // 2)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(folder)


def test_truncated_file_is_a_user_error(tmp_path: Path) -> None:
    folder = copy_bundled(tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(folder)


@pytest.mark.parametrize("stem", FILES)
def test_missing_file_is_a_user_error_naming_it(stem: str, tmp_path: Path) -> None:
    folder = copy_bundled(tmp_path)
    (folder / f"{stem}.gz").unlink()
    with pytest.raises(UserError) as e:
        load_mnist(folder)
    assert stem in str(e.value) and "\n" not in str(e.value)


def test_data_dir_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a folder"):
        load_mnist(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        load_mnist(tmp_path / "file")


def test_empty_folder_names_the_first_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=FILES[0]):
        load_mnist(tmp_path)


def test_a_file_changed_after_a_load_is_read_and_checked_again(tmp_path: Path) -> None:
    """A process keeps the checked bytes of what it loaded (a grid worker's runs load MNIST once); a file that
    changes afterwards, here corrupted in place, is read again and refused, not served from memory."""
    for stem in MD5:
        shutil.copy(bundled_dir() / f"{stem}.gz", tmp_path / f"{stem}.gz")
    first, again = load_mnist(tmp_path), load_mnist(tmp_path)
    assert torch.equal(first.test_y, again.test_y) and first.test_x is not again.test_x  # fresh tensors each time
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(target.read_bytes()))
    data[500] ^= 0x04
    target.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_mnist(tmp_path)
