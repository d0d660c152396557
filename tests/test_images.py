"""Local image files (MNIST IDX, CIFAR python batch, .npz) for the reproduction scripts."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scalable_hrank.data.images import load_image_file

ROOT = Path(__file__).resolve().parents[1]


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 10, 30)


def test_mnist_idx_pooled_to_8x8(tmp_path, images) -> None:
    x, y = images
    _idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    inputs, targets = load_image_file(tmp_path / "train-images-idx3-ubyte.gz", 20)
    assert inputs.shape == (20, 64) and inputs.dtype == torch.float64
    # pooling 28 -> 8 averages blocks: compare with torch's own pooling of the raw bytes
    ref = torch.nn.functional.adaptive_avg_pool2d(
        torch.as_tensor(x[:20], dtype=torch.float64).unsqueeze(1) / 255.0, 8).reshape(20, 64)
    assert torch.allclose(inputs, ref)
    assert torch.equal(targets, torch.as_tensor(y[:20]))
    _, onehot = load_image_file(tmp_path / "train-images-idx3-ubyte.gz", 5, loss="mse",
                                num_classes=10)
    assert onehot.shape == (5, 10) and torch.equal(onehot.argmax(1), torch.as_tensor(y[:5]))


def test_cifar_batch_and_npz(tmp_path, images) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (12, 3 * 32 * 32), dtype=np.uint8)
    with (tmp_path / "data_batch_1").open("wb") as fh:
        pickle.dump({b"data": data, b"labels": list(range(12))}, fh)
    x, y = load_image_file(tmp_path / "data_batch_1", 12, side=4)
    gray = data.reshape(12, 3, 32, 32).mean(axis=1) / 255.0
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(gray).unsqueeze(1), 4)
    assert torch.allclose(x, ref.reshape(12, 16)) and torch.equal(y, torch.arange(12))
    np.savez(tmp_path / "d.npz", x=images[0], y=images[1])
    assert load_image_file(tmp_path / "d.npz", 7)[0].shape == (7, 64)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image_file(tmp_path / "missing.npz", 3)
    (tmp_path / "junk.bin").write_bytes(b"not a dataset")
    with pytest.raises(ValueError, match="not an IDX, .npz or CIFAR"):
        load_image_file(tmp_path / "junk.bin", 3)
    np.savez(tmp_path / "small.npz", x=np.zeros((2, 8, 8)), y=np.zeros(2))
    with pytest.raises(ValueError, match="holds 2 images; 5 requested"):
        load_image_file(tmp_path / "small.npz", 5)


def test_reproduction_script_accepts_local_images(tmp_path, images) -> None:
    np.savez(tmp_path / "mnist_like.npz", x=np.repeat(images[0], 4, axis=0),
             y=np.repeat(images[1], 4))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/reproduce/spectrum_linear_vs_tanh.py"), "--small",
         "--data", str(tmp_path / "mnist_like.npz"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(out.glob("*.csv")) and list(out.glob("*.png"))
