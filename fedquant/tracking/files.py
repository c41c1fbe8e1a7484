"""The atomic file writer, for the tracking layer's readers: it lives in :mod:`fedquant.files`
(below every layer, so the federation's residual store uses it too)."""

from __future__ import annotations

from ..files import atomic_write, write_text_atomic

__all__ = ["atomic_write", "write_text_atomic"]
