"""Datasets and augmentations for sbnn training, written on tensors.

Every dataset is read whole into memory as a ``uint8`` tensor ``(N, C, H, W)`` plus ``int64``
labels: Fashion-MNIST / MNIST (60k x 28 x 28) and CIFAR (50k x 3 x 32 x 32) fit easily, and a batch
is then one index into a tensor instead of a Python loop over a ``Dataset``. Augmentations work on a
whole batch at once (on the training device) and draw from an explicit ``torch.Generator`` so that
the data order and every random crop/flip/angle is a pure function of ``(seed, epoch, rank)``. That
is what makes ``sbnn train --resume`` reproduce an uninterrupted run exactly.

Nothing is ever downloaded: a missing folder raises :class:`DatasetNotFoundError`, whose message
names the path, the files expected there and how to get them.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_FASHION_MNIST",
    "DATASETS",
    "DATASET_SHAPES",
    "DatasetNotFoundError",
    "ImageDataset",
    "BatchLoader",
    "Augment",
    "read_idx",
    "write_idx",
    "write_synthetic_idx",
    "load_dataset",
    "resolve_root",
    "random_crop",
    "random_hflip",
    "random_rotation",
    "normalize",
    "mixup",
]

DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DEFAULT_MNIST = "/usr/share/datasets/mnist"

# name -> (channels, classes, mean, std); mean/std are per channel on [0, 1] pixels. CIFAR-10 uses
# the authors' constants (robustml-eurecom/SBNN, CIFAR-10): std 0.2023/0.1994/0.2010, the widely
# copied values; the per-pixel std of the training set is 0.2470/0.2435/0.2616. CIFAR-100 uses
# the authors' CIFAR-100/main*.py constants.
DATASETS: dict[str, dict] = {
    "fashion_mnist": {
        "channels": 1, "classes": 10, "mean": (0.2860,), "std": (0.3530,),
        "default_root": DEFAULT_FASHION_MNIST,
    },
    "mnist": {
        "channels": 1, "classes": 10, "mean": (0.1307,), "std": (0.3081,),
        "default_root": DEFAULT_MNIST,
    },
    "cifar10": {
        "channels": 3, "classes": 10, "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2023, 0.1994, 0.2010), "default_root": None,
    },
    "cifar100": {
        "channels": 3, "classes": 100, "mean": (0.5071, 0.4867, 0.4408),
        "std": (0.2675, 0.2565, 0.2761), "default_root": None,
    },
}

# name -> (C, H, W) of one sample, as the models see it (export's input shape, the sweep's)
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}

_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_HOW_TO_GET = {
    "fashion_mnist": (
        "install the Debian package 'dataset-fashion-mnist' (sudo apt-get install "
        "dataset-fashion-mnist), or put the four IDX files of Fashion-MNIST (gzipped or not, from "
        "https://github.com/zalandoresearch/fashion-mnist) in a folder and pass it with "
        "--set data.root=FOLDER or the environment variable SBNN_DATA"
    ),
    "mnist": (
        "put the four MNIST IDX files (gzipped or not) in a folder and pass it with "
        "--set data.root=FOLDER or the environment variable SBNN_DATA"
    ),
    "cifar10": (
        "download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (the python "
        "version) and pass the folder holding 'cifar-10-batches-py' (or that folder itself) with "
        "--set data.root=FOLDER"
    ),
    "cifar100": (
        "download and extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (the python "
        "version) and pass the folder holding 'cifar-100-python' (or that folder itself) with "
        "--set data.root=FOLDER"
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing or malformed; the message says how to fix it."""


def _fail(name: str, path: str | os.PathLike, expected: str, detail: str = "") -> None:
    msg = f"{name}: {detail + '; ' if detail else ''}expected {expected} in '{path}'. "
    msg += f"To get it: {_HOW_TO_GET[name]}. sbnn never downloads data."
    raise DatasetNotFoundError(msg)


# --------------------------------------------------------------------------------------------
# IDX files (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its stored shape.

    Format: 2 zero bytes, a dtype byte, a byte with the number of dims, then one big-endian
    uint32 per dim, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"'{path}' is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``); used by tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_synthetic_idx(root: str | os.PathLike, n_train: int = 600, n_test: int = 200,
                        num_classes: int = 10, seed: int = 0, gz: bool = True) -> Path:
    """Write a Fashion-MNIST-shaped toy dataset (four IDX files, 28x28 uint8) into ``root``.

    Each class is a fixed random blob pattern plus noise and a random shift, so a small network
    learns it well above chance in a few epochs. For tests and smoke runs without the real data.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.random((num_classes, 7, 7)) > 0.6
    templates = templates.repeat(4, 1).repeat(4, 2).astype(np.float32)  # (K, 28, 28)
    suffix = ".gz" if gz else ""
    for train, n in ((True, n_train), (False, n_test)):
        labels = rng.integers(0, num_classes, n)
        imgs = templates[labels] * 180 + rng.normal(0, 40, (n, 28, 28))
        for i in range(n):  # a shift of up to 2 pixels, so the task is not a lookup
            imgs[i] = np.roll(imgs[i], tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        img_name, lbl_name = _IDX_FILES[train]
        write_idx(root / (img_name + suffix), np.clip(imgs, 0, 255).astype(np.uint8))
        write_idx(root / (lbl_name + suffix), labels.astype(np.uint8))
    return root


def _find_idx(root: Path, stem: str) -> Path | None:
    # Accept both the official names and the dotted variant some mirrors use.
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in (".gz", ""):
            p = root / (name + suffix)
            if p.is_file():
                return p
    return None


def _load_idx_dataset(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = _IDX_FILES[train]
    expected = f"'{img_stem}[.gz]' and '{lbl_stem}[.gz]' (the {'train' if train else 'test'} split)"
    if not root.is_dir():
        _fail(name, root, expected, "the folder does not exist")
    img_path, lbl_path = _find_idx(root, img_stem), _find_idx(root, lbl_stem)
    if img_path is None or lbl_path is None:
        _fail(name, root, expected, "files missing")
    try:
        images, labels = read_idx(img_path), read_idx(lbl_path)
    except (OSError, ValueError, EOFError, struct.error) as e:
        _fail(name, root, expected, f"could not read the IDX files ({e})")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        _fail(name, root, expected,
              f"malformed IDX files (images {images.shape}, labels {labels.shape})")
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1)  # a writable copy
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


# --------------------------------------------------------------------------------------------
# CIFAR (python pickle version)
# --------------------------------------------------------------------------------------------

# The only globals the official CIFAR pickles (and numpy arrays pickled by numpy 1.x or 2.x)
# refer to: rebuilding an ndarray, its dtype, numpy scalars, and bytes from str. Anything else
# is refused, so a crafted file cannot run code (plain pickle.load calls whatever it names).
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes written by Python 3: str -> bytes
}


class _CifarUnpickler(pickle.Unpickler):
    """Dicts, lists, tuples, bytes/str, numbers and numpy arrays; every other global refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused global '{module}.{name}': a CIFAR batch file holds only dicts, lists, "
            "bytes and numpy arrays (loading anything else could run code)")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict):
        raise pickle.UnpicklingError(f"expected a dict, got {type(d).__name__}")
    for v in d.values():
        if isinstance(v, np.ndarray) and v.dtype.hasobject:
            raise pickle.UnpicklingError("refused an object array (CIFAR data is uint8)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _load_cifar(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key = "labels"
    else:
        files = ["train"] if train else ["test"]
        label_key = "fine_labels"
    expected = f"the folder '{folder}' with the files {', '.join(files)}"
    if root.name != folder and (root / folder).is_dir():
        root = root / folder
    if not root.is_dir():
        _fail(name, root, expected, "the folder does not exist")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        _fail(name, root, expected, f"missing {', '.join(missing)}")
    xs, ys = [], []
    for f in files:
        try:
            d = _unpickle(root / f)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except Exception as e:  # noqa: BLE001 - any failure here means a malformed file
            _fail(name, root, expected, f"could not read '{root / f}' ({type(e).__name__}: {e})")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

@dataclass
class ImageDataset:
    """A whole split in memory: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> ImageDataset:
        """The first ``n`` samples (all when ``n`` is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return ImageDataset(self.name, self.images[:n], self.labels[:n], self.num_classes,
                            self.mean, self.std)


def resolve_root(name: str, root: str | None) -> Path:
    """Where to read ``name`` from: the given root, else ``$SBNN_DATA``, else the default folder."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
    if root:
        return Path(os.path.expanduser(str(root)))
    env = os.environ.get("SBNN_DATA")
    if env:
        return Path(os.path.expanduser(env))
    default = DATASETS[name]["default_root"]
    if default is None:
        _fail(name, "<no path given>", f"a data root for {name}",
              "no default folder for this dataset; set data.root")
    return Path(default)


def load_dataset(name: str, root: str | None = None, train: bool = True) -> ImageDataset:
    """Load one split of ``name`` (fashion_mnist, mnist, cifar10, cifar100) into memory."""
    path = resolve_root(name, root)
    meta = DATASETS[name]
    if name in ("fashion_mnist", "mnist"):
        x, y = _load_idx_dataset(name, path, train)
    else:
        x, y = _load_cifar(name, path, train)
    if int(y.max()) >= meta["classes"] or int(y.min()) < 0:
        _fail(name, path, f"labels in [0, {meta['classes']})", "labels out of range")
    return ImageDataset(name, x, y, meta["classes"], meta["mean"], meta["std"])


# --------------------------------------------------------------------------------------------
# Augmentations on batches: x (N, C, H, W) float -> same shape
# --------------------------------------------------------------------------------------------

def _rand(n: int, g: torch.Generator | None, device) -> torch.Tensor:
    # Draw on the CPU generator, then move: the same numbers on every device.
    return torch.rand(n, generator=g).to(device)


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` on each side, then crop each sample back to ``H x W`` at a random
    offset (the torchvision ``RandomCrop(size, padding)`` augmentation, batched)."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    idx = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: (N, H, W, C) -> (N, C, H, W).
    return xp[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, g: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each sample left-right with probability ``p``."""
    flip = (_rand(x.shape[0], g, x.device) < p)[:, None, None, None]
    return torch.where(flip, x.flip(3), x)


def random_rotation(x: torch.Tensor, degrees: float, g: torch.Generator | None = None
                    ) -> torch.Tensor:
    """Rotate each sample by an angle uniform in ``[-degrees, degrees]`` about its centre
    (nearest neighbour, zeros outside, as the authors' torchvision ``RandomRotation`` whose
    default interpolation is nearest), via ``affine_grid`` + ``grid_sample``."""
    if degrees <= 0:
        return x
    n = x.shape[0]
    theta = (_rand(n, g, x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(theta)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator | None = None,
          rng: np.random.Generator | None = None):
    """Mixup (Zhang et al., arXiv:1710.09412): ``x' = lam x + (1-lam) x[perm]``.

    Returns ``(x', y, y[perm], lam)``; the loss is ``lam CE(y) + (1-lam) CE(y[perm])``.
    ``lam ~ Beta(alpha, alpha)`` (alpha = 1 is uniform on [0, 1]).
    """
    rng = rng if rng is not None else np.random.default_rng()
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


@dataclass
class Augment:
    """Training-time augmentations applied to each batch, in order: crop, flip, rotation."""

    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0

    def __call__(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        x = random_crop(x, self.crop_padding, g)
        if self.hflip:
            x = random_hflip(x, g)
        return random_rotation(x, self.rotation, g)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------

class BatchLoader:
    """Iterates over an in-memory :class:`ImageDataset` in batches of normalised float tensors.

    Shuffling follows ``torch.utils.data.DistributedSampler`` (seeded with ``seed + epoch``,
    padded so every rank sees the same number of samples, rank ``r`` takes ``r::world``), so the
    order depends only on ``(seed, epoch, rank, world)``; call :meth:`set_epoch` before each epoch.
    Augmentations draw from a generator seeded the same way.
    """

    def __init__(self, data: ImageDataset, batch_size: int, *, shuffle: bool = False,
                 augment: Augment | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.augment, self.device, self.seed = augment, torch.device(device), seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        # Move the whole split once: per-batch host->device copies dominate on a GPU otherwise.
        self._images = data.images.to(self.device)
        self._labels = data.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:
            per_rank = math.ceil(n / self.world_size)
            total = per_rank * self.world_size
            if total > n:  # pad by wrapping, as DistributedSampler does
                idx = torch.cat([idx, idx[: total - n]])
            idx = idx[self.rank : total : self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def generator(self) -> torch.Generator:
        """The augmentation/mixup generator of the current epoch and rank."""
        return torch.Generator().manual_seed((self.seed + 1) * 1_000_003 + self.epoch * 1009
                                             + self.rank)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices().to(self.device)
        g = self.generator()
        nb = len(self)
        for b in range(nb):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._images[sel].float().div_(255)  # (B, C, H, W) in [0, 1]
            if self.augment is not None:
                x = self.augment(x, g)
            yield normalize(x, self.data.mean, self.data.std), self._labels[sel]
