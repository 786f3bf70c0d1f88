"""Real labelled data that ships inside packages: scikit-learn's digits (and Fashion-MNIST if installed)."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import NboptError

SEED = 0
TEST_FRACTION = 0.2
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, stratified train/held-out split of the 1,797 digits: (x_train, y_train, x_test, y_test).

    Images are ``float32`` of shape (N, 1, 8, 8), standardised with the training set's mean and std.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 16.0
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    norm = lambda a: torch.from_numpy((a - mean) / std)  # noqa: E731
    return norm(x_tr), torch.from_numpy(y_tr), norm(x_te), torch.from_numpy(y_te)


def train_loader(batch_size: int = 64, shuffle: bool = True, seed: int = SEED) -> DataLoader:
    """Labelled training batches ``(x, y)`` for fine-tuning and QAT."""
    x, y, _, _ = digits_split()
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)


def test_loader(batch_size: int = 512) -> DataLoader:
    """Labelled held-out batches ``(x, y)`` (360 images)."""
    _, _, x, y = digits_split()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def calibration_data(n: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
    """Unlabelled training images in batches, for calibrating quantization observers."""
    x = digits_split()[0][:n]
    return list(torch.split(x, batch_size))


def example_input(batch: int = 1) -> torch.Tensor:
    """Real held-out images, shape (batch, 1, 8, 8)."""
    x = digits_split()[2]
    reps = -(-batch // len(x))
    return x.repeat(reps, 1, 1, 1)[:batch].clone()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package: (x (N,1,28,28) in [0,1], y)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise NboptError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists():
        raise NboptError(
            f"Fashion-MNIST is not installed ({images} missing); install it with "
            "`apt-get install dataset-fashion-mnist`, or use the bundled digits (nbopt.demo.digits_split)."
        )
    x = torch.from_numpy(_read_idx(images).astype(np.float32) / 255.0)[:, None]
    return x, torch.from_numpy(_read_idx(labels).astype(np.int64))
