"""Readers for the datasets' own binary formats (no torchvision, no unpickling)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

IDX_DTYPES = {0x08: np.uint8}
CIFAR_IMAGE_BYTES = 3 * 32 * 32


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: ``0x00 0x00 <dtype> <ndim>``, ``ndim`` big-endian uint32 sizes, data."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DatasetError(f"{path}: cannot read IDX file ({err}); delete it and provide it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetError(f"{path}: truncated or corrupt IDX file ({len(raw)} bytes, expected {expected} for shape {shape})")
    return np.frombuffer(raw, IDX_DTYPES[raw[2]], offset=header).reshape(shape)


def parse_cifar_records(raw: bytes, label_bytes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse CIFAR binary records ``<label bytes><3072 bytes: R, G, B planes of 32x32>``.

    CIFAR-10 has one label byte; CIFAR-100 two (coarse, fine), of which the fine label is used.
    Returns images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]``.
    """
    record = label_bytes + CIFAR_IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise DatasetError(f"{name}: truncated or corrupt CIFAR binary file ({len(raw)} bytes is not a multiple of {record})")
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels
