"""Data sources: a text file, a tensor file, or the built-in sample.

Every loader returns a list of ``(inputs, targets)`` batches, the form the operators take
(docs/CONTRACTS.md): inputs a Tensor, a tuple, or a Mapping of tensors (``model(**inputs)``).
Targets for text come from the model's :class:`~scalable_hrank.models.tasks.Task`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scalable_hrank.errors import InputError

from .samples import sample_sentences

__all__ = ["load_data", "read_sentences", "tokenized_batches", "load_tensor_file",
           "split_batches", "batch_to", "count_samples"]

logger = logging.getLogger(__name__)

Batch = tuple[Any, Tensor]

_TEXT_SUFFIXES = (".txt", ".text", ".tsv")
_TENSOR_SUFFIXES = (".pt", ".pth", ".safetensors")


def read_sentences(path: str | Path) -> tuple[list[str], Tensor | None]:
    """Read one sentence per line (blank lines skipped).

    Lines of the form ``LABEL<TAB>sentence`` with an integer LABEL on every line give class
    labels (for classification models).

    Args:
        path: A UTF-8 text file.

    Returns:
        ``(sentences, labels (N,) int64 or None)``.

    Raises:
        ValueError: If the file holds no sentence.
    """
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        msg = f"data file {str(path)!r} holds no sentence (one per line expected)"
        raise ValueError(msg)
    parts = [ln.split("\t", 1) for ln in lines]
    if all(len(p) == 2 and p[0].strip().lstrip("-").isdigit() for p in parts):
        return [p[1].strip() for p in parts], torch.tensor([int(p[0]) for p in parts])
    return lines, None


def tokenized_batches(sentences: Sequence[str], tokenizer: Any, task: Any, *,
                      batch_size: int = 16, max_length: int = 128, seed: int = 0,
                      labels: Tensor | None = None) -> list[Batch]:
    """Tokenize sentences into padded batches and attach the task's targets.

    Args:
        sentences: N strings.
        tokenizer: A Hugging Face tokenizer (padding side as configured).
        task: A :class:`~scalable_hrank.models.tasks.Task` (``make_batch``).
        batch_size: Sentences per batch; each batch is padded to its longest sentence.
        max_length: Truncation length in tokens (special tokens included).
        seed: Seed of the CPU generator for random targets / masks; the same seed gives the
            same batches.
        labels: (N,) int64 class labels, or None.

    Returns:
        ``ceil(N / batch_size)`` batches ``(inputs dict, targets)``.

    Raises:
        ValueError: If ``batch_size`` or ``max_length`` is < 1.
    """
    if batch_size < 1 or max_length < 1:
        msg = f"batch_size and max_length must be >= 1; got {batch_size!r}, {max_length!r}"
        raise ValueError(msg)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(sentences), batch_size):
        chunk = list(sentences[start:start + batch_size])
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        lab = None if labels is None else labels[start:start + batch_size]
        out.append(task.make_batch(dict(enc), generator=gen, labels=lab))
    return out


def _first_dim(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.shape[0]
    if isinstance(x, Mapping):
        return _first_dim(next(iter(x.values())))
    return _first_dim(x[0])


def _slice(x: Any, s: slice) -> Any:
    if isinstance(x, Tensor):
        return x[s]
    if isinstance(x, Mapping):
        return {k: _slice(v, s) for k, v in x.items()}
    return tuple(_slice(v, s) for v in x)


def split_batches(inputs: Any, targets: Tensor, batch_size: int | None) -> list[Batch]:
    """Split ``(inputs, targets)`` along dim 0 into batches of ``batch_size`` samples.

    Args:
        inputs: A Tensor (N, ...), a tuple of them, or a Mapping of them.
        targets: (N, ...) tensor.
        batch_size: Samples per batch; None for one batch.

    Returns:
        The batches.

    Raises:
        ValueError: If inputs and targets disagree on N.
    """
    n = _first_dim(inputs)
    if targets.shape[0] != n:
        msg = f"inputs hold {n} samples but targets hold {targets.shape[0]}"
        raise ValueError(msg)
    bs = n if batch_size is None else batch_size
    return [(_slice(inputs, slice(i, i + bs)), targets[i:i + bs]) for i in range(0, n, bs)]


def load_tensor_file(path: str | Path, *, batch_size: int | None = None) -> list[Batch]:
    """Load ``(inputs, targets)`` from a tensor file.

    Accepted layouts: a ``.pt`` file holding a dict with keys ``inputs``/``targets`` (or
    ``x``/``y``), a pair ``(inputs, targets)``, or a list of such pairs (already batched);
    a ``.safetensors`` file with tensors ``inputs`` and ``targets``. ``.pt`` files are read
    with ``weights_only=True`` (no code runs).

    Args:
        path: The file.
        batch_size: Re-batch to this many samples (None keeps one batch / the stored ones).

    Returns:
        The batches.

    Raises:
        InputError: If the file is missing, unreadable, or its layout is none of the above.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"tensor file {str(path)!r} does not exist (give digits, gaussian or a .pt file)"
        raise InputError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        first = (str(exc).strip().splitlines() or [""])[0]
        msg = f"tensor file {str(path)!r} is not readable ({type(exc).__name__}: {first})"
        raise InputError(msg) from exc
    if isinstance(obj, Mapping):
        keys = ("inputs", "targets") if "inputs" in obj else ("x", "y")
        if keys[0] not in obj or keys[1] not in obj:
            msg = (f"tensor file {str(path)!r} must hold keys 'inputs' and 'targets' "
                   f"(or 'x' and 'y'); found {sorted(obj)}")
            raise InputError(msg)
        return split_batches(obj[keys[0]], obj[keys[1]], batch_size)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[1], Tensor):
        return split_batches(obj[0], obj[1], batch_size)
    if isinstance(obj, (tuple, list)) and obj and all(
            isinstance(b, (tuple, list)) and len(b) == 2 for b in obj):
        batches = [(b[0], b[1]) for b in obj]
        if batch_size is None:
            return batches
        return [c for b in batches for c in split_batches(b[0], b[1], batch_size)]
    msg = (f"tensor file {str(path)!r} must hold a dict with 'inputs'/'targets', a pair "
           f"(inputs, targets) or a list of pairs; got {type(obj).__name__}")
    raise InputError(msg)


def batch_to(batch: Batch, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> Batch:
    """Move a batch to ``device``; floating tensors (inputs and float targets) to ``dtype``."""

    def conv(x: Any) -> Any:
        if isinstance(x, Tensor):
            dt = dtype if (dtype is not None and x.dtype.is_floating_point) else None
            return x.to(device=device, dtype=dt)
        if isinstance(x, Mapping):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return tuple(conv(v) for v in x)
        return x

    return conv(batch[0]), conv(batch[1])


def count_samples(batches: Sequence[Batch]) -> int:
    """Total number of samples (dim 0 of the targets) over ``batches``."""
    return sum(int(b[1].shape[0]) for b in batches)


def read_labels(path: str | Path, count: int, task: Any) -> Tensor:
    """Class labels (count,) int64 from a file with one integer per line (blank lines skipped).

    Raises:
        InputError: The file is missing, a line is not an integer, the count differs from the
            sentences', a label is outside [0, classes), or the task is not classification.
    """
    path = Path(path)
    if getattr(task, "name", None) != "classification":
        msg = (f"labels {str(path)!r} need the classification task (--task classification); "
               f"the model's task is {getattr(task, 'name', None)!r}")
        raise InputError(msg)
    if not path.is_file():
        msg = f"labels file {str(path)!r} does not exist"
        raise InputError(msg)
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    bad = [ln for ln in lines if not ln.lstrip("-").isdigit()]
    if bad:
        msg = f"labels file {str(path)!r}: every line must be an integer; got {bad[0]!r}"
        raise InputError(msg)
    if len(lines) < count:
        msg = (f"labels file {str(path)!r} has {len(lines)} labels for {count} sentences; "
               "give one per sentence")
        raise InputError(msg)
    values = torch.tensor([int(v) for v in lines[:count]], dtype=torch.int64)
    classes = int(task.output_dim)
    if values.min() < 0 or values.max() >= classes:
        msg = (f"labels file {str(path)!r}: labels must lie in [0, {classes}) (the model's "
               f"classes; --num-classes sets a new head); got {int(values.min())} to "
               f"{int(values.max())}")
        raise InputError(msg)
    return values


def load_data(source: str | Path | None = None, *, tokenizer: Any = None, task: Any = None,
              batch_size: int = 16, max_length: int = 128, num_samples: int | None = None,
              seed: int = 0, labels: str | Path | None = None) -> list[Batch]:
    """Load batches from a text file, a tensor file, or the built-in sentences.

    Args:
        source: None (built-in 16 sentences, needs ``tokenizer`` and ``task``), a text file
            (``.txt``/``.tsv``: one sentence per line), or a tensor file
            (``.pt``/``.pth``/``.safetensors``, see :func:`load_tensor_file`).
        tokenizer: Hugging Face tokenizer (text sources).
        task: :class:`~scalable_hrank.models.tasks.Task` making targets (text sources).
        batch_size: Samples per batch.
        max_length: Truncation length for text.
        num_samples: Keep the first this many sentences (text sources; the built-in sample
            cycles when larger than 16).
        seed: Seed for random targets / masks.
        labels: A file of integer class labels, one per sentence (classification tasks;
            overrides labels given in the text file).

    Returns:
        A list of ``(inputs, targets)`` batches on the CPU.

    Raises:
        ValueError: If the source type is unknown or text comes without tokenizer/task.
        FileNotFoundError: If ``source`` does not exist.
    """
    label_file, labels = labels, None
    if source is None:
        sentences = sample_sentences(num_samples)
    else:
        path = Path(source)
        if not path.exists():
            msg = f"data file {str(path)!r} does not exist"
            raise FileNotFoundError(msg)
        suffix = path.suffix.lower()
        if suffix in _TENSOR_SUFFIXES:
            return load_tensor_file(path, batch_size=batch_size)
        if suffix not in _TEXT_SUFFIXES:
            msg = (f"data file {str(path)!r}: suffix must be one of "
                   f"{_TEXT_SUFFIXES + _TENSOR_SUFFIXES}; got {suffix!r}")
            raise ValueError(msg)
        sentences, labels = read_sentences(path)
        if num_samples is not None:
            sentences = sentences[:num_samples]
            labels = None if labels is None else labels[:num_samples]
    if tokenizer is None or task is None:
        msg = ("text data needs a model with a tokenizer and a task (an hf: model); "
               "give a tensor file (.pt with inputs/targets) instead")
        raise ValueError(msg)
    if label_file is not None:
        labels = read_labels(label_file, len(sentences), task)
    batches = tokenized_batches(sentences, tokenizer, task, batch_size=batch_size,
                                max_length=max_length, seed=seed, labels=labels)
    logger.info("data: %d sentences in %d batches (%s)", len(sentences), len(batches),
                "built-in sample" if source is None else source)
    return batches
