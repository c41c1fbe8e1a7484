"""The one atomic writer: readers see the old file or the new one, never a half-written file."""

from __future__ import annotations

import pytest
import torch

from fedquant.runtime.checkpoint import load_checkpoint, save_checkpoint
from fedquant.tracking.files import atomic_write, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_text_atomic(target, "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_checkpoints_go_through_the_same_writer(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"arrays": {"w": torch.ones(2)}})

    def broken_save(obj, f):
        f.write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="killed"):
        save_checkpoint(tmp_path, 2, {"arrays": {"w": torch.zeros(2)}})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_r00001.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint_r00001.pt")["arrays"]["w"], torch.ones(2))
