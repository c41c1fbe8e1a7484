"""Dataset readers on fixtures in the real formats, the real Fashion-MNIST, and the error paths."""

import gzip
import hashlib
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedquant.data import CIFAR, DatasetError, load_dataset
from fedquant.data import datasets as ds
from fedquant.data.formats import read_idx
from tests.fixtures import cifar_files, idx_bytes, write_cifar_archive, write_fmnist

OFFLINE = "http://127.0.0.1:9/"  # nothing listens on the discard port: connection refused at once


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "CACHE", tmp_path / "array-cache")


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "DEBIAN_FMNIST", tmp_path / "no-debian-package")
    monkeypatch.setattr(ds, "DEFAULT_ROOT", tmp_path / "default-root")


def test_idx_reader_parses_and_rejects_corrupt_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "x-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(good), arr)
    truncated = tmp_path / "t-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(arr)[:-5]))
    with pytest.raises(DatasetError, match=r"t-idx3-ubyte.gz: truncated or corrupt IDX file"):
        read_idx(truncated)
    bad_magic = tmp_path / "m-idx3-ubyte.gz"
    bad_magic.write_bytes(gzip.compress(b"\x01\x02" + idx_bytes(arr)[2:]))
    with pytest.raises(DatasetError, match="m-idx3-ubyte.gz: not an unsigned-byte IDX file"):
        read_idx(bad_magic)
    not_gzip = tmp_path / "g-idx3-ubyte.gz"
    not_gzip.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="g-idx3-ubyte.gz: cannot read IDX file"):
        read_idx(not_gzip)


def test_fmnist_from_dataset_root(tmp_path, no_debian):
    arrays = write_fmnist(tmp_path / "fm")
    data = load_dataset("fmnist", root=tmp_path / "fm")
    assert data.train_x.shape == (40, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.num_classes == 10
    assert np.array_equal(data.train_x[:, 0].numpy(), arrays["train-images"])
    assert np.array_equal(data.test_y.numpy(), arrays["t10k-labels"])


def test_a_given_root_is_used_not_the_debian_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "DEFAULT_ROOT", tmp_path / "default-root")
    debian = write_fmnist(tmp_path / "debian")
    monkeypatch.setattr(ds, "DEBIAN_FMNIST", tmp_path / "debian")
    monkeypatch.setattr(ds, "FMNIST_URL", OFFLINE)
    assert np.array_equal(ds._load_fmnist(None).train_x[:, 0].numpy(), debian["train-images"])  # no root: Debian
    (tmp_path / "mine").mkdir()
    with pytest.raises(DatasetError, match="not in " + str(tmp_path / "mine") + " and downloading"):
        ds._load_fmnist(tmp_path / "mine")  # before: silently loaded the Debian copy
    mine = write_fmnist(tmp_path / "mine", seed=2)
    assert np.array_equal(ds._load_fmnist(tmp_path / "mine").train_x[:, 0].numpy(), mine["train-images"])


def test_fmnist_decoded_once_then_memory_mapped_and_invalidated_by_changes(tmp_path, no_debian):
    arrays = write_fmnist(tmp_path / "fm")
    first = ds._load_fmnist(tmp_path / "fm")
    cached = list((tmp_path / "array-cache").glob("*/train_x.npy"))
    assert len(cached) == 1
    second = ds._load_fmnist(tmp_path / "fm")
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert np.array_equal(second.train_x[:, 0].numpy(), arrays["train-images"])
    new = write_fmnist(tmp_path / "fm", seed=1)  # new files: new size/mtime, so a new cache entry
    third = ds._load_fmnist(tmp_path / "fm")
    assert np.array_equal(third.train_x[:, 0].numpy(), new["train-images"])
    assert len(list((tmp_path / "array-cache").glob("*/train_x.npy"))) == 2


def test_fmnist_missing_offline_is_one_line_with_instructions(tmp_path, no_debian, monkeypatch):
    monkeypatch.setattr(ds, "FMNIST_URL", OFFLINE)
    with pytest.raises(DatasetError) as err:
        load_dataset("fmnist", root=tmp_path / "empty")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("fmnist:")
    assert "apt-get install dataset-fashion-mnist" in msg and "dataset.root=" in msg and str(tmp_path / "empty") in msg
    assert not any((tmp_path / "empty").glob("*.part"))


@pytest.mark.skipif(not ds.DEBIAN_FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    data = load_dataset("fmnist")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10 and set(data.train_y.unique().tolist()) == set(range(10))
    assert torch.bincount(data.test_y).tolist() == [1000] * 10


def test_digits_is_the_offline_default():
    data = load_dataset("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    x = data.normalize(data.train_x)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_extracted_folder(tmp_path, name):
    spec = CIFAR[name]
    members, truth = cifar_files(name)
    (tmp_path / spec.folder).mkdir()
    for f, raw in members.items():
        (tmp_path / spec.folder / f).write_bytes(raw)
    data = load_dataset(name, root=tmp_path)
    n_train = 6 * len(spec.train_files)
    assert data.train_x.shape == (n_train, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.num_classes == spec.num_classes
    first = spec.train_files[0]
    assert np.array_equal(data.train_x[:6].numpy(), truth[first][0])  # R, G, B planes in order
    assert np.array_equal(data.train_y[:6].numpy(), truth[first][1])  # the fine label for CIFAR-100


def test_cifar_truncated_file_names_the_file(tmp_path):
    spec = CIFAR["cifar10"]
    members, _ = cifar_files("cifar10")
    (tmp_path / spec.folder).mkdir()
    for f, raw in members.items():
        (tmp_path / spec.folder / f).write_bytes(raw[:-100] if f == "data_batch_3.bin" else raw)
    with pytest.raises(DatasetError, match="data_batch_3.bin: truncated or corrupt CIFAR binary file"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_archive_checksum_verified(tmp_path, monkeypatch):
    members, _ = cifar_files("cifar10")
    archive = tmp_path / CIFAR["cifar10"].archive
    md5 = hashlib.md5(write_cifar_archive(archive, CIFAR["cifar10"].folder, members)).hexdigest()
    monkeypatch.setitem(CIFAR, "cifar10", replace(CIFAR["cifar10"], md5=md5))
    assert load_dataset("cifar10", root=tmp_path).train_x.shape == (30, 3, 32, 32)
    other = tmp_path / "other"
    other.mkdir()
    write_cifar_archive(other / archive.name, CIFAR["cifar10"].folder, {**members, "test_batch.bin": b"x" * 3073})
    with pytest.raises(DatasetError, match=r"cifar-10-binary.tar.gz: checksum mismatch"):
        load_dataset("cifar10", root=other)


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_cifar_download_verifies_then_renames(tmp_path, monkeypatch, http_server):
    served, url = http_server
    members, _ = cifar_files("cifar100")
    spec = CIFAR["cifar100"]
    md5 = hashlib.md5(write_cifar_archive(served / spec.archive, spec.folder, members)).hexdigest()
    root = tmp_path / "root"
    monkeypatch.setitem(CIFAR, "cifar100", replace(spec, url=url + spec.archive, md5="0" * 32))
    with pytest.raises(DatasetError, match="checksum mismatch.*nothing was saved"):
        load_dataset("cifar100", root=root)
    assert list(root.iterdir()) == []  # no half-written or unverified file left behind
    monkeypatch.setitem(CIFAR, "cifar100", replace(spec, url=url + spec.archive, md5=md5))
    data = load_dataset("cifar100", root=root)
    assert data.train_x.shape == (6, 3, 32, 32) and data.num_classes == 100
    assert [p.name for p in root.iterdir()] == [spec.archive]


def test_cifar_missing_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(CIFAR, "cifar10", replace(CIFAR["cifar10"], url=OFFLINE + "cifar-10-binary.tar.gz"))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cifar10:") and "dataset.root=" in msg
    assert list(Path(tmp_path).iterdir()) == []


def test_unknown_dataset_lists_allowed():
    with pytest.raises(ValueError, match="dataset.name='mnist' is not valid: allowed are digits, fmnist, cifar10, cifar100"):
        load_dataset("mnist")
