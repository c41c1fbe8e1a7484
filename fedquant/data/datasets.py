"""Datasets as compact in-memory tensors: uint8 images ``[N, C, H, W]`` and int64 labels.

Each loader reads a dataset's real release format once per process (``load_dataset`` is
cached); images are normalised per batch by :meth:`Dataset.normalize`, so memory stays at one
byte per pixel.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .download import download, verify_md5
from .errors import DatasetError
from .formats import parse_cifar_records, read_idx

DEFAULT_ROOT = Path("~/.cache/fedquant/data").expanduser()
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_FILES = {  # official MD5s of the gzipped releases (verified on download)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR binary release lives and how its records are laid out."""

    url: str
    md5: str
    folder: str  # the archive's top-level folder
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int
    num_classes: int

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR = {
    "cifar10": CifarSpec("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                         "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
                         tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 10),
    "cifar100": CifarSpec("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                          "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
                          ("train.bin",), ("test.bin",), 2, 100),
}


@dataclass
class Dataset:
    """Train and test splits of one dataset, uint8 images and int64 labels, on the CPU."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    max_value: float = 255.0
    mean: torch.Tensor = field(init=False)
    std: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        # per-channel moments in float64 sums over uint8 counts: no float copy of the images
        c = self.train_x.shape[1]
        counts = torch.stack([torch.bincount(self.train_x[:, i].reshape(-1), minlength=256) for i in range(c)]).double()
        values = torch.arange(256, dtype=torch.float64) / self.max_value
        n = counts.sum(1)
        mean = (counts * values).sum(1) / n
        var = (counts * (values - mean[:, None]) ** 2).sum(1) / (n - 1)
        self.mean = mean.float().reshape(-1, 1, 1)
        self.std = var.sqrt().float().clamp_min(1e-6).reshape(-1, 1, 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float ``(x / max_value - mean) / std`` per channel, on ``x``'s device."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() / self.max_value - mean) / std


def _tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # np.frombuffer views are read-only; torch wants writable memory
        images = images.copy()
    return torch.from_numpy(images), torch.from_numpy(np.asarray(labels).astype(np.int64))


def _load_digits(root: Path | None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16); a fixed seeded 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:360], order[360:]
    return Dataset("digits", *_tensors(images[train], bunch.target[train]),
                   *_tensors(images[test], bunch.target[test]), num_classes=10, max_value=16.0)


CACHE = Path("~/.cache/fedquant/arrays").expanduser()


def _cached_arrays(sources: list[Path], read: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``read()``'s arrays, decoded once and kept as .npy files keyed by the sources' path, size and
    mtime; later loads memory-map them (copy-on-write), so every Ray worker starts in
    milliseconds and shares the pages instead of holding its own decompressed copy."""
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources)
    folder = CACHE / hashlib.sha256(stamp.encode()).hexdigest()[:20]
    arrays = None
    if (folder / "done").is_file():
        try:
            arrays = {f.stem: np.load(f, mmap_mode="c") for f in folder.glob("*.npy")}
        except (OSError, ValueError):
            arrays = None
    if arrays is None:
        arrays = read()
        try:  # best effort: a read-only home just means no cache
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
            (tmp / "done").touch()
            os.replace(tmp, folder)
        except OSError:
            pass
    return arrays


def _find_fmnist(root: Path | None) -> Path | None:
    """The folder holding the four IDX files: in ``root`` (or its ``fashion-mnist`` subfolder)
    when given, and only there; else fedquant's data folder or Debian's package."""
    candidates = [root, root / "fashion-mnist"] if root else [DEFAULT_ROOT / "fmnist", DEBIAN_FMNIST]
    for folder in candidates:
        if all((folder / f).is_file() for f in FMNIST_FILES):
            return folder
    return None


def _load_fmnist(root: Path | None) -> Dataset:
    folder = _find_fmnist(root)
    if folder is None:
        target = root or DEFAULT_ROOT / "fmnist"
        try:
            for name, md5 in FMNIST_FILES.items():
                if not (target / name).is_file():
                    download(FMNIST_URL + name, target / name, md5)
        except OSError as err:
            looked = ", ".join(str(p) for p in ([root] if root else [target, DEBIAN_FMNIST]))
            raise DatasetError(
                f"fmnist: the IDX files are not in {looked} and downloading from {FMNIST_URL} failed "
                f"({getattr(err, 'reason', err)}); install them with 'apt-get install dataset-fashion-mnist' "
                "or put the four *-ubyte.gz files in a folder and set dataset.root=FOLDER") from None
        folder = target

    def read() -> dict[str, np.ndarray]:
        out = {}
        for p in ("train", "t10k"):
            out[f"{p}_x"] = read_idx(folder / f"{p}-images-idx3-ubyte.gz")[:, None]
            out[f"{p}_y"] = read_idx(folder / f"{p}-labels-idx1-ubyte.gz")
            if len(out[f"{p}_x"]) != len(out[f"{p}_y"]):
                raise DatasetError(f"{folder}: {p} has {len(out[f'{p}_x'])} images but {len(out[f'{p}_y'])} labels")
        return out

    a = _cached_arrays(sorted(folder / f for f in FMNIST_FILES), read)
    return Dataset("fmnist", *_tensors(a["train_x"], a["train_y"]), *_tensors(a["t10k_x"], a["t10k_y"]), num_classes=10)


def _read_cifar_files(spec: CifarSpec, read: Callable[[str], bytes]) -> tuple[np.ndarray, ...]:
    out = []
    for files in (spec.train_files, spec.test_files):
        parts = [parse_cifar_records(read(f), spec.label_bytes, f) for f in files]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    if out[1].max(initial=0) >= spec.num_classes or out[3].max(initial=0) >= spec.num_classes:
        raise DatasetError(f"{spec.folder}: labels outside 0..{spec.num_classes - 1}; the files are corrupt")
    return tuple(out)


def _load_cifar(name: str, root: Path | None) -> Dataset:
    """CIFAR binary release: an extracted folder, else the archive in ``root``, else download it."""
    spec = CIFAR[name]
    root = root or DEFAULT_ROOT
    folder, archive = root / spec.folder, root / spec.archive
    if folder.is_dir():
        def read(f: str) -> bytes:
            try:
                return (folder / f).read_bytes()
            except OSError as err:
                raise DatasetError(f"{name}: cannot read {folder / f} ({err.strerror}); provide the complete '{spec.folder}' folder") from None
    else:
        if not archive.is_file():
            try:
                download(spec.url, archive, spec.md5)
            except OSError as err:
                raise DatasetError(
                    f"{name}: neither {folder} nor {archive} exists and downloading {spec.url} failed "
                    f"({getattr(err, 'reason', err)}); download it elsewhere and put '{spec.archive}' "
                    "(or its extracted folder) in a folder set as dataset.root=FOLDER") from None
        verify_md5(archive, spec.md5)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = {f: tar.extractfile(f"{spec.folder}/{f}").read() for f in spec.train_files + spec.test_files}
        except (tarfile.TarError, KeyError, AttributeError, OSError, EOFError) as err:
            raise DatasetError(f"{archive}: corrupt or incomplete archive ({err}); delete it and download it again") from None
        read = members.__getitem__
    tx, ty, vx, vy = _read_cifar_files(spec, read)
    return Dataset(name, *_tensors(tx, ty), *_tensors(vx, vy), num_classes=spec.num_classes)


LOADERS: dict[str, Callable[[Path | None], Dataset]] = {
    "digits": _load_digits,
    "fmnist": _load_fmnist,
    "cifar10": functools.partial(_load_cifar, "cifar10"),
    "cifar100": functools.partial(_load_cifar, "cifar100"),
}
DATASETS = tuple(LOADERS)


@functools.lru_cache(maxsize=4)
def _cached(name: str, root: Path | None) -> Dataset:
    return LOADERS[name](root)


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load dataset ``name`` (once per process) from ``root`` or its default places."""
    if name not in LOADERS:
        raise ValueError(f"dataset.name={name!r} is not valid: allowed are {', '.join(DATASETS)}")
    return _cached(name, Path(root).expanduser().resolve() if root else None)
