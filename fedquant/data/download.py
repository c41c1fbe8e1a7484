"""Checksummed downloads that never leave a half-written file behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from .errors import DatasetError


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    actual = md5sum(path)
    if actual != md5:
        raise DatasetError(f"{path}: checksum mismatch (md5 {actual}, expected {md5}); delete the file and download it again")


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``: write a temporary file beside it, verify its MD5, then rename.

    Raises ``OSError`` when offline; a checksum mismatch raises ``DatasetError``. Either way
    nothing is left at ``dest`` or under a temporary name.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
        actual = md5sum(Path(tmp))
        if actual != md5:
            raise DatasetError(f"{url}: checksum mismatch (md5 {actual}, expected {md5}); nothing was saved, try again")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
