r"""Checkpoint files: a self-checking format that lets a stopped run resume to the same answer.

A checkpoint file is written atomically (temporary file, fsync, rename) and has three parts::

    HRANKCKPT\n                      magic line
    {"format": 1, ...}\n             JSON header: format version, fingerprint, payload size, sha256
    <payload>                       torch.save of a plain dict (tensors, numbers, strings, lists)

:func:`load_checkpoint` refuses, with a :class:`CheckpointError` naming the reason, a file that
is truncated or corrupted (size or sha256 mismatch), written by another format version, or
written for another problem (fingerprint mismatch: other parameters, data or settings). The
payload is read with ``torch.load(weights_only=True)``: no code runs on load. Dataclasses and
``torch.Generator`` objects are stored as tagged dicts (the generator by its uint8 state) and
rebuilt on load; only dataclasses defined in ``scalable_hrank`` modules, or declared as a
registered estimator's ``resume_state``, are rebuilt. A dataclass
with a ``snapshot()`` method (``KrylovState``) is saved through it (a compact copy).

When to save and how to stop on a signal is :mod:`scalable_hrank.preemption`'s concern; its
names (``CheckpointSaver``, ``PreemptionHandler``, ``Preempted``, ``PREEMPTED_EXIT_CODE``,
``in_slurm``) are also importable from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scalable_hrank._io import atomic_write_bytes
from scalable_hrank.errors import HRankError

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "fingerprint",
    "load_checkpoint",
    "per_rank_path",
    "read_header",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

#: Version of the file layout; files of another version are refused.
FORMAT_VERSION = 1
_MAGIC = b"HRANKCKPT\n"
_MAX_HEADER = 64 * 1024
_TAG_GENERATOR = "__torch_generator__"
_TAG_DATACLASS = "__dataclass__"
_TAG_DTYPE = "__torch_dtype__"
_TAG_DEVICE = "__torch_device__"


class CheckpointError(HRankError):
    """A checkpoint cannot be used: missing, truncated, corrupted, or for another problem.

    Attributes:
        path: The checkpoint file.
        reason: One of "missing", "truncated", "corrupted", "format", "fingerprint", "content".

    """

    def __init__(self, message: str, *, path: str | Path, reason: str) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Fingerprints


def _update_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _update_obj(h: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        _update_tensor(h, obj)
    elif isinstance(obj, Mapping):
        h.update(b"M{")
        for key in sorted(obj, key=str):
            h.update(f"{key!s}:".encode())
            _update_obj(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}[".encode())
        for item in obj:
            _update_obj(h, item)
        h.update(b"]")
    else:
        h.update(f"V{obj!r};".encode())


def fingerprint(model_params: Iterable[Tensor], data_batches: Any = None,
                settings: Mapping[str, Any] | None = None) -> str:
    """Return a sha256 hex digest identifying a rank computation.

    Two runs share a fingerprint only when their parameter values (dtype, shape, bytes, order),
    data (every tensor of every batch, in order) and settings agree. A checkpoint written for
    one fingerprint is refused for any other.

    Args:
        model_params: The parameters the curvature is taken over, e.g. ``model.parameters()``.
        data_batches: An ``(inputs, targets)`` pair, an iterable of such batches (it is iterated
            once: pass a re-iterable loader, not a one-shot generator), or None. Tensors may be
            nested in tuples, lists and mappings.
        settings: JSON-serializable options that change the answer (kind, method, tolerances,
            seed, dtype, ...). Keys are sorted; values that JSON cannot encode use ``str``.

    Returns:
        64 hexadecimal characters.

    Cost: one pass over the parameters and the data, copying each tensor to the CPU.

    """
    h = hashlib.sha256(b"scalable-hrank fingerprint v1\n")
    h.update(b"params:")
    for p in model_params:
        _update_tensor(h, p)
    h.update(b"data:")
    if data_batches is not None:
        if isinstance(data_batches, (tuple, list)) and len(data_batches) == 2 and isinstance(
                data_batches[0], (Tensor, tuple, Mapping)) and isinstance(data_batches[1], Tensor):
            _update_obj(h, data_batches)
        else:
            for batch in data_batches:
                _update_obj(h, batch)
    h.update(b"settings:")
    h.update(json.dumps(dict(settings or {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Encoding of state: plain containers only, so that torch.load(weights_only=True) can read it.


def _encode(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return {_TAG_GENERATOR: obj.get_state(), "device": str(obj.device)}
    if isinstance(obj, torch.dtype):
        return {_TAG_DTYPE: str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {_TAG_DEVICE: str(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if callable(getattr(obj, "snapshot", None)):
            obj = obj.snapshot()  # a compact copy (e.g. KrylovState trims its basis)
        cls = type(obj)
        fields = {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_TAG_DATACLASS: f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_encode(v) for v in obj)
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    msg = (f"cannot checkpoint an object of type {type(obj).__name__}: use tensors, numbers, "
           "strings, None, lists, tuples, dicts, dataclasses, dtypes, devices or generators")
    raise TypeError(msg)


def _dataclass_named(name: str, path: Path) -> Any:
    """The class a checkpoint names: one of scalable_hrank's, or a registered resume state.

    A class from another package is rebuilt only when a registered estimator declares it as
    its ``resume_state`` (:mod:`scalable_hrank.estimators`); nothing else is imported.
    """
    module, _, qualname = name.partition(":")
    if module == "scalable_hrank" or module.startswith("scalable_hrank."):
        try:
            cls: Any = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            msg = (f"checkpoint {path} holds a solver state ({name}) of another version of "
                   "scalable_hrank, which this version cannot continue: delete it to start "
                   "afresh")
            raise CheckpointError(msg, path=path, reason="content") from None
        return cls
    from scalable_hrank.estimators import resume_state_classes

    for cls in resume_state_classes():
        if f"{cls.__module__}:{cls.__qualname__}" == name:
            return cls
    msg = (f"checkpoint {path} holds a dataclass {name} from outside scalable_hrank that no "
           "registered estimator declares as its resume state; refusing to rebuild it")
    raise CheckpointError(msg, path=path, reason="content")


def _decode(obj: Any, path: Path) -> Any:
    if isinstance(obj, dict):
        if _TAG_GENERATOR in obj:
            gen = torch.Generator(device=obj.get("device", "cpu"))
            gen.set_state(obj[_TAG_GENERATOR])
            return gen
        if _TAG_DTYPE in obj:
            dtype = getattr(torch, obj[_TAG_DTYPE], None)
            if not isinstance(dtype, torch.dtype):
                msg = f"checkpoint {path} names an unknown dtype {obj[_TAG_DTYPE]!r}"
                raise CheckpointError(msg, path=path, reason="content")
            return dtype
        if _TAG_DEVICE in obj:
            return torch.device(obj[_TAG_DEVICE])
        if _TAG_DATACLASS in obj:
            cls = _dataclass_named(obj[_TAG_DATACLASS], path)
            fields = {k: _decode(v, path) for k, v in obj["fields"].items()}
            return cls(**fields)
        return {k: _decode(v, path) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_decode(v, path) for v in obj)
    if isinstance(obj, list):
        return [_decode(v, path) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Save and load


def save_checkpoint(path: str | Path, state: Any, *, fingerprint: str) -> None:
    """Write ``state`` to ``path`` atomically, tagged with ``fingerprint``.

    Readers see the previous checkpoint or the new one, never a partial file.

    Args:
        path: Destination file; its folder is created.
        state: A dict (or a dataclass) of tensors (moved to the CPU), numbers, strings, None,
            lists, tuples, dicts, dataclasses and ``torch.Generator`` objects.
        fingerprint: From :func:`fingerprint`; :func:`load_checkpoint` must be given the same.

    Raises:
        TypeError: If ``state`` holds an object of another type.

    """
    buf = io.BytesIO()
    torch.save({"state": _encode(state)}, buf)
    payload = buf.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "fingerprint": str(fingerprint),
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "created": time.time(),
        "torch": torch.__version__,
    }
    data = _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload
    atomic_write_bytes(Path(path), data)
    logger.debug("saved checkpoint %s (%d bytes)", path, len(data))


def read_header(path: str | Path) -> dict[str, Any]:
    """Return the JSON header of a checkpoint without checking or reading the payload.

    Raises:
        CheckpointError: If the file is missing or does not start with a checkpoint header.

    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_MAGIC) + _MAX_HEADER)
    except FileNotFoundError:
        msg = f"checkpoint {path} does not exist"
        raise CheckpointError(msg, path=path, reason="missing") from None
    return _parse_header(head, path)[0]


def _parse_header(data: bytes, path: Path) -> tuple[dict[str, Any], int]:
    if not data.startswith(_MAGIC):
        reason = "truncated" if len(data) < len(_MAGIC) and _MAGIC.startswith(data) else "corrupted"
        msg = f"checkpoint {path} is {reason}: it does not start with the checkpoint magic line"
        raise CheckpointError(msg, path=path, reason=reason)
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        msg = f"checkpoint {path} is truncated: its header is incomplete"
        raise CheckpointError(msg, path=path, reason="truncated")
    try:
        header = json.loads(data[len(_MAGIC):end])
        if not isinstance(header, dict):
            raise TypeError(type(header).__name__)  # noqa: TRY301
    except (ValueError, TypeError) as exc:
        msg = f"checkpoint {path} is corrupted: unreadable header ({exc})"
        raise CheckpointError(msg, path=path, reason="corrupted") from None
    return header, end + 1


def load_checkpoint(path: str | Path, *, fingerprint: str) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`, after checking it.

    Args:
        path: The checkpoint file.
        fingerprint: The fingerprint of the current problem; must equal the one saved.

    Returns:
        The saved state, with dataclasses and generators rebuilt, tensors on the CPU.

    Raises:
        CheckpointError: With ``reason`` "missing" (no file), "truncated" (shorter than its
            header says), "corrupted" (bad magic, header or sha256), "format" (another format
            version), "fingerprint" (written for other parameters, data or settings) or
            "content" (a payload that cannot be read safely).

    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        msg = f"checkpoint {path} does not exist"
        raise CheckpointError(msg, path=path, reason="missing") from None
    header, start = _parse_header(data, path)
    if header.get("format") != FORMAT_VERSION:
        msg = (f"checkpoint {path} has format version {header.get('format')!r}; this version "
               f"of scalable-hrank reads version {FORMAT_VERSION}")
        raise CheckpointError(msg, path=path, reason="format")
    payload = data[start:]
    size = header.get("size")
    if not isinstance(size, int) or len(payload) < size:
        msg = f"checkpoint {path} is truncated: payload has {len(payload)} of {size} bytes"
        raise CheckpointError(msg, path=path, reason="truncated")
    if len(payload) > size or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        msg = f"checkpoint {path} is corrupted: the payload's sha256 does not match its header"
        raise CheckpointError(msg, path=path, reason="corrupted")
    if header.get("fingerprint") != fingerprint:
        msg = (f"checkpoint {path} was written for another problem (fingerprint "
               f"{str(header.get('fingerprint'))[:12]}..., expected {fingerprint[:12]}...): "
               "the parameters, data or settings differ; delete it or use another path")
        raise CheckpointError(msg, path=path, reason="fingerprint")
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable content
        msg = f"checkpoint {path} cannot be read safely: {exc}"
        raise CheckpointError(msg, path=path, reason="content") from exc
    return _decode(obj["state"], path)


def per_rank_path(path: str | Path, rank: int, world: int) -> Path:
    """Checkpoint file of one process: ``path`` itself when ``world == 1``, else ``x.rank3.pt``.

    With a basis sharded across processes every process saves its own slice; the fingerprint
    should then include the rank and world size (settings), so a restart with another world
    size is refused rather than resumed wrongly.
    """
    path = Path(path)
    if world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}of{world}{path.suffix}")


_PREEMPTION_NAMES = ("PREEMPTED_EXIT_CODE", "CheckpointSaver", "Preempted", "PreemptionHandler",
                     "in_slurm")


def __getattr__(name: str) -> object:
    """The pre-emption names, importable from here too (``scalable_hrank.preemption``)."""
    if name in _PREEMPTION_NAMES:
        from scalable_hrank import preemption

        return getattr(preemption, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
