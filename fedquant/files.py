"""The one atomic file writer: results, reports, checkpoints and clients' error-feedback residuals
all go through it. It imports nothing from fedquant, so every layer may use it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` a temporary file beside ``path``, flush it to disk, then rename it onto
    ``path``: readers see the old file or the new one, never half of one. On any error the
    temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
