"""Datasets and tensor augmentations (sbnn.pipeline.data)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import sbnn.pipeline.data as sdata


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / ("x.idx" + (".gz" if gz else ""))
    sdata.write_idx(path, a)
    b = sdata.read_idx(path)
    assert b.shape == a.shape and b.dtype == np.uint8
    assert np.array_equal(a, b)


def test_read_idx_rejects_garbage(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(ValueError, match="not an IDX file"):
        sdata.read_idx(p)


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_folder(tmp_path, gz):
    sdata.write_synthetic_idx(tmp_path, n_train=50, n_test=20, gz=gz)
    tr = sdata.load_dataset("fashion_mnist", str(tmp_path), train=True)
    te = sdata.load_dataset("fashion_mnist", str(tmp_path), train=False)
    assert tr.images.shape == (50, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert te.labels.shape == (20,) and te.labels.dtype == torch.int64
    assert tr.num_classes == 10 and len(tr.subset(10)) == 10


def test_dotted_idx_names_and_env(tmp_path, monkeypatch):
    sdata.write_synthetic_idx(tmp_path, n_train=10, n_test=10, gz=False)
    for f in tmp_path.iterdir():  # mirrors that name them train-images.idx3-ubyte
        f.rename(tmp_path / f.name.replace("-idx", ".idx"))
    monkeypatch.setenv("SBNN_DATA", str(tmp_path))
    assert len(sdata.load_dataset("mnist", None, train=True)) == 10


def test_missing_folder_error_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(sdata.DatasetNotFoundError) as e:
        sdata.load_dataset("fashion_mnist", str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "train-images-idx3-ubyte" in msg
    assert "dataset-fashion-mnist" in msg and "data.root" in msg


def test_malformed_idx_error(tmp_path):
    sdata.write_synthetic_idx(tmp_path, n_train=10, n_test=10, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"junk")
    with pytest.raises(sdata.DatasetNotFoundError, match="could not read"):
        sdata.load_dataset("fashion_mnist", str(tmp_path))


def _write_cifar(root, name):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 4))}
            (folder / f).write_bytes(pickle.dumps(d))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir()
        for f in ("train", "test"):
            d = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                 b"fine_labels": list(rng.integers(0, 100, 6))}
            (folder / f).write_bytes(pickle.dumps(d))
    return folder


@pytest.mark.parametrize("name,n_train,n_test,classes",
                         [("cifar10", 20, 4, 10), ("cifar100", 6, 6, 100)])
def test_cifar_pickles(tmp_path, name, n_train, n_test, classes):
    folder = _write_cifar(tmp_path, name)
    for root in (tmp_path, folder):  # the parent folder or the folder itself
        tr = sdata.load_dataset(name, str(root), train=True)
        te = sdata.load_dataset(name, str(root), train=False)
        assert tr.images.shape == (n_train, 3, 32, 32) and len(te) == n_test
        assert tr.num_classes == classes


def test_cifar_missing_names_expected_folder(tmp_path):
    with pytest.raises(sdata.DatasetNotFoundError) as e:
        sdata.load_dataset("cifar10", str(tmp_path))
    assert "cifar-10-batches-py" in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
    with pytest.raises(sdata.DatasetNotFoundError, match="data.root"):
        sdata.load_dataset("cifar100", None)


def test_random_crop_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 5, 7)
    y = sdata.random_crop(x, 2, g)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert y.shape == x.shape
    for i in range(len(x)):  # brute force: some offset reproduces the crop exactly
        assert any(torch.equal(y[i], xp[i, :, r:r + 5, c:c + 7])
                   for r in range(5) for c in range(5))
    assert torch.equal(sdata.random_crop(x, 0, g), x)


def test_hflip_flips_some_and_keeps_others():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 4, 4)
    y = sdata.random_hflip(x, g)
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_rotation_zero_and_bounded():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 9, 9)
    assert torch.equal(sdata.random_rotation(x, 0, g), x)
    y = sdata.random_rotation(x, 15, g)
    assert y.shape == x.shape
    # the centre pixel of an odd image is the rotation centre: it does not move
    torch.testing.assert_close(y[:, :, 4, 4], x[:, :, 4, 4], atol=1e-5, rtol=0)
    assert not torch.equal(y, x)
    # nearest neighbour, as the authors' RandomRotation: every output pixel is an input pixel of
    # the same image and channel, or the zero fill
    for i in range(3):
        for c in range(3):
            vals = set(x[i, c].flatten().tolist()) | {0.0}
            assert set(y[i, c].flatten().tolist()) <= vals


def test_normalize_and_mixup():
    x = torch.rand(8, 3, 4, 4)
    z = sdata.normalize(x, (0.5, 0.4, 0.3), (0.2, 0.1, 0.5))
    torch.testing.assert_close(z[:, 1], (x[:, 1] - 0.4) / 0.1)
    y = torch.arange(8)
    g = torch.Generator().manual_seed(0)
    xm, ya, yb, lam = sdata.mixup(x, y, 1.0, g=g, rng=np.random.default_rng(0))
    assert 0 <= lam <= 1 and torch.equal(ya, y)
    perm = yb  # labels are the indices, so yb is the permutation
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])


def test_batch_loader_order_is_a_function_of_seed_and_epoch(tmp_path):
    sdata.write_synthetic_idx(tmp_path, n_train=50, n_test=10)
    ds = sdata.load_dataset("fashion_mnist", str(tmp_path))
    # make every label unique so a batch's labels identify its samples
    ds = sdata.ImageDataset(ds.name, ds.images, torch.arange(50), 50, ds.mean, ds.std)

    def order(epoch, rank=0, world=1):
        ld = sdata.BatchLoader(ds, 8, shuffle=True, seed=3, rank=rank, world_size=world)
        ld.set_epoch(epoch)
        return torch.cat([y for _, y in ld])

    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    assert sorted(order(0).tolist()) == list(range(50))
    shards = [order(2, r, 3) for r in range(3)]
    assert all(len(s) == 17 for s in shards)  # padded to 3 x 17 = 51
    assert set(torch.cat(shards).tolist()) == set(range(50))
    x, _ = next(iter(sdata.BatchLoader(ds, 8)))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)
