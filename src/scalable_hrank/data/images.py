"""Local image datasets in their usual formats, downsampled to small grayscale inputs.

MNIST / Fashion-MNIST IDX files (``*-images-idx3-ubyte[.gz]`` with the matching
``*-labels-idx1-ubyte[.gz]`` beside them), CIFAR-10/100 python batches (pickles with
``data`` and ``labels`` / ``fine_labels``), and ``.npz`` archives with ``x`` (N, H, W[, C]) and
``y`` (N,). Nothing is downloaded: the paper's MNIST experiments at 8x8 run from a local copy.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _open(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def _idx(path: Path) -> np.ndarray:
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        msg = f"{path}: not an IDX file of unsigned bytes"
        raise ValueError(msg)
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) or (N, H, W, C) as floats in [0, 1] and integer labels (N,)."""
    name = path.name
    if "idx3" in name:
        labels_path = path.with_name(name.replace("images-idx3", "labels-idx1"))
        if not labels_path.exists():
            msg = f"{path}: labels file {labels_path.name} not found beside it"
            raise FileNotFoundError(msg)
        return _idx(path) / 255.0, _idx(labels_path).astype(np.int64)
    if path.suffix == ".npz":
        with np.load(path) as blob:
            if "x" not in blob or "y" not in blob:
                msg = f"{path}: an .npz dataset needs arrays 'x' and 'y'; has {list(blob)}"
                raise ValueError(msg)
            x = blob["x"].astype(np.float64)
            return x / (255.0 if x.max() > 1 else 1.0), blob["y"].astype(np.int64)
    with path.open("rb") as fh:
        try:
            batch = pickle.load(fh, encoding="bytes")  # noqa: S301 - a local file the user names
        except pickle.UnpicklingError as exc:
            msg = f"{path}: not an IDX, .npz or CIFAR python batch ({exc})"
            raise ValueError(msg) from None
    key = next((k for k in (b"labels", b"fine_labels", "labels") if k in batch), None)
    if key is None or (b"data" not in batch and "data" not in batch):
        msg = f"{path}: a CIFAR batch needs 'data' and 'labels'"
        raise ValueError(msg)
    data = np.asarray(batch.get(b"data", batch.get("data")), dtype=np.float64) / 255.0
    side = int(round((data.shape[1] // 3) ** 0.5))
    images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[key], dtype=np.int64)


def load_image_file(path: str | Path, num_samples: int, *, side: int = 8,
                    loss: str = "cross_entropy", num_classes: int | None = None,
                    dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The first ``num_samples`` images, grayscale, average-pooled to side x side, flattened.

    Args:
        path: IDX images file, CIFAR python batch, or ``.npz``.
        num_samples: N.
        side: Output height and width (8 gives the paper's 8x8 MNIST inputs, d = 64).
        loss: "cross_entropy" gives class indices, anything else one-hot rows.
        num_classes: K for one-hot targets (default: largest label + 1).
        dtype: Input dtype.

    Returns:
        Inputs (N, side^2) in [0, 1] and targets.

    Raises:
        FileNotFoundError: Missing file (or IDX labels file).
        ValueError: Unknown format, or fewer than ``num_samples`` images.
    """
    path = Path(path)
    if not path.exists():
        msg = f"no such data file: {path}"
        raise FileNotFoundError(msg)
    images, labels = _read(path)
    if len(images) < num_samples:
        msg = f"{path} holds {len(images)} images; {num_samples} requested"
        raise ValueError(msg)
    x = torch.as_tensor(images[:num_samples], dtype=torch.float64)
    if x.dim() == 4:  # (N, H, W, C) -> grayscale
        x = x.mean(dim=-1)
    x = torch.nn.functional.adaptive_avg_pool2d(x.unsqueeze(1), side).reshape(num_samples, -1)
    y = torch.as_tensor(labels[:num_samples])
    if loss == "cross_entropy":
        return x.to(dtype), y
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    return x.to(dtype), torch.nn.functional.one_hot(y, k).to(dtype)
