"""Small files in the datasets' real release formats."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0x00 0x00, dtype 0x08 (ubyte), ndim, big-endian uint32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, arr in arrays.items():
        kind = "idx3" if "images" in name else "idx1"
        (folder / f"{name}-{kind}-ubyte.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    return arrays


def cifar_bytes(images: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None) -> bytes:
    """CIFAR binary records: [coarse label,] label, then 1024 R, 1024 G, 1024 B bytes."""
    rows = []
    for i in range(len(labels)):
        head = ([int(coarse[i])] if coarse is not None else []) + [int(labels[i])]
        rows.append(bytes(head) + images[i].astype(np.uint8).tobytes())
    return b"".join(rows)


def cifar_files(name: str, n: int = 6, seed: int = 0) -> tuple[dict[str, bytes], dict]:
    """Member files (name -> bytes) of a miniature CIFAR-10 or CIFAR-100 binary release."""
    rng = np.random.default_rng(seed)
    classes, files = (10, [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]) \
        if name == "cifar10" else (100, ["train.bin", "test.bin"])
    out, truth = {}, {}
    for f in files:
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, classes, n)
        coarse = rng.integers(0, 20, n) if name == "cifar100" else None
        out[f] = cifar_bytes(images, labels, coarse)
        truth[f] = (images, labels)
    return out, truth


def write_cifar_archive(path: Path, folder: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()
