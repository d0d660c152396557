"""One rank problem (model, loss, data) from the settings of ``hrank rank`` or a sweep task.

The model-source options shared by ``hrank rank``, its config files and sweep files:

==================  ==============================================================
``model``           ``mlp:WIDTHS[:ACTIVATION][:bias]``, ``hf:NAME_OR_PATH``, ``timm:NAME``,
                    ``torchvision:NAME``, ``file:CKPT`` (with ``builder``),
                    ``module:function`` or ``path/to/file.py:function``
``builder``         ``module:function`` / ``file.py:function`` building the module a
                    ``file:`` checkpoint fills
``weights``         state dict (``.pt``/``.safetensors``) for timm/torchvision/builder models
``num_classes``     classes of a new classification head (timm, torchvision, hf classification)
``input_shape``     per-sample input shape of random default images, e.g. ``3,32,32``
``task``            hf: ``embedding``, ``classification``, ``masked_lm``, ``causal_lm``
``labels``          hf classification: a file of integer class labels, one per sentence
``max_length``      hf: token truncation length
``batch_size``      samples per batch (the product's activation memory scales with it)
``data``            mlp: ``digits`` | ``gaussian`` | ``FILE.pt``; others: a text/tensor file
``samples``         samples of the mlp data / sentences or images of a default sample
==================  ==============================================================

Everything the user supplies that does not work raises
:class:`~scalable_hrank.errors.InputError` (the CLI: exit code 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalable_hrank.errors import InputError

__all__ = ["MODEL_OPTION_KEYS", "Problem", "add_model_arguments", "build_problem",
           "check_selection", "parse_input_shape"]

#: Settings of the model source (besides ``model``, ``data``, ``samples``, ``loss``, ``seed``).
MODEL_OPTION_KEYS = ("builder", "weights", "num_classes", "input_shape", "task", "labels",
                     "max_length", "batch_size")


@dataclass(frozen=True)
class Problem:
    """What a rank computation runs on.

    Attributes:
        model: The module in eval mode; unused parameters frozen.
        loss: A built-in loss name or a callable.
        data: A list of ``(inputs, targets)`` batches, or an ``(inputs, targets)`` pair.
        description: One line for logs and result files.
        unused: Parameter names left out because the loss does not reach them.
    """

    model: nn.Module
    loss: Any
    data: Any
    description: str
    unused: tuple[str, ...] = ()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the model-source flags (``--builder`` ... ``--batch-size``) on ``parser``.

    Every flag defaults to None so that a config file or sweep setting can fill it.
    """
    g = parser.add_argument_group("model source (see also --model)")
    g.add_argument("--builder", help="for --model file:CKPT: module:function or "
                                     "path/to/file.py:function that builds the module")
    g.add_argument("--weights", help="state dict (.pt/.safetensors) for timm:, torchvision: "
                                     "and module:function models")
    g.add_argument("--num-classes", type=int, dest="num_classes",
                   help="classes of a new head (timm:, torchvision:, hf: classification)")
    g.add_argument("--input-shape", dest="input_shape",
                   help="per-sample shape of random default images, e.g. 3,224,224")
    g.add_argument("--task", help="hf: models: embedding | classification | masked_lm | "
                                  "causal_lm (default: detected from the config)")
    g.add_argument("--labels", help="hf: classification: file of integer labels, one per "
                                    "sentence of --data")
    g.add_argument("--max-length", type=int, dest="max_length",
                   help="hf: models: token truncation length (default 128)")
    g.add_argument("--batch-size", type=int, dest="batch_size",
                   help="samples per batch (default 16); smaller batches need less memory")


def parse_input_shape(value: Any) -> tuple[int, ...] | None:
    """``"3,32,32"``, ``"3x32x32"`` or a list -> ``(3, 32, 32)``; None stays None.

    Raises:
        InputError: Not a list of positive integers.
    """
    if value is None:
        return None
    items = value.replace("x", ",").split(",") if isinstance(value, str) else value
    try:
        shape = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(v < 1 for v in shape):
        msg = f"input_shape must be positive integers such as 3,224,224; got {value!r}"
        raise InputError(msg)
    return shape


def _positive(settings: Mapping[str, Any], key: str) -> int | None:
    value = settings.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{key} must be a positive integer; got {value!r}"
        raise InputError(msg)
    return value


def _mlp_problem(spec: str, s: Mapping[str, Any]) -> Problem:
    from scalable_hrank.data.digits import digits, gaussian
    from scalable_hrank.models.mlp import describe, mlp

    parts = spec.split(":")[1:]
    try:
        widths = [int(w) for w in parts[0].replace("-", ",").split(",")]
    except (IndexError, ValueError):
        widths = []
    if not widths:
        msg = f"mlp spec needs widths, e.g. mlp:64,12,12,10[:tanh][:bias]; got {spec!r}"
        raise InputError(msg)
    activation = next((p for p in parts[1:] if p != "bias"), "linear")
    bias = "bias" in parts[1:]
    loss = s.get("loss") or "cross_entropy"
    source = s.get("data") or "digits"
    samples = int(s.get("samples") or 100)
    seed = int(s.get("seed") or 0)
    if source == "digits":
        if widths[0] != 64 or widths[-1] != 10:
            msg = f"digits data needs widths 64,...,10; got {widths}"
            raise InputError(msg)
        data = digits(samples, loss=loss)
    elif source == "gaussian":
        data = gaussian(samples, widths[0], widths[-1], loss=loss, seed=seed)
    else:
        from scalable_hrank.data.loaders import load_tensor_file

        data = load_tensor_file(source)
    try:
        model = mlp(widths, activation=activation, bias=bias, seed=seed)
    except ValueError as exc:
        msg = f"model {spec!r}: {exc}"
        raise InputError(msg) from exc
    return Problem(model, loss, data, f"{describe(widths, activation, bias)} on {source}")


def build_problem(settings: Mapping[str, Any]) -> Problem:
    """Build model, loss and data from ``hrank rank`` settings (flags, config or sweep task).

    Cost: loading the model; for non-MLP models one forward and backward on the first batch
    (unused-parameter detection).

    Args:
        settings: ``model`` (default ``mlp:64,12,12,10``), ``data``, ``samples``, ``loss``,
            ``seed``, ``dtype`` (a name, for non-MLP models' weights left as loaded),
            ``device`` (``"auto"``/None: left to the caller), and the keys of
            :data:`MODEL_OPTION_KEYS`.

    Returns:
        The :class:`Problem`.

    Raises:
        InputError: A malformed spec, a builder that cannot be found, weights that do not fit,
            an unknown task, labels that do not fit, a source library that does not import,
            a model without data.
    """
    spec = str(settings.get("model") or "mlp:64,12,12,10")
    if spec.startswith("mlp:"):
        return _mlp_problem(spec, settings)
    from scalable_hrank.models.sources import load_model_spec

    device = settings.get("device")
    kw: dict[str, Any] = {
        "builder": settings.get("builder"), "weights": settings.get("weights"),
        "task": settings.get("task"), "labels": settings.get("labels"),
        "num_classes": _positive(settings, "num_classes"),
        "input_shape": parse_input_shape(settings.get("input_shape")),
        "batch_size": _positive(settings, "batch_size") or 16,
        "max_length": _positive(settings, "max_length") or 128,
        "num_samples": _positive(settings, "samples"),
        "device": None if device in (None, "auto") else device,
    }
    try:
        bundle = load_model_spec(spec, data=settings.get("data"), loss=settings.get("loss"),
                                 seed=int(settings.get("seed") or 0), **kw)
    except InputError:
        raise
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as exc:
        text = str(exc) if spec in str(exc) else f"model {spec!r}: {exc}"
        raise InputError(text) from exc
    if bundle.data is None:
        msg = (f"model {spec!r} comes with no data; pass --data (a tensor file with inputs "
               "and targets) or --input-shape for random images")
        raise InputError(msg)
    return Problem(bundle.model, bundle.loss, bundle.data, bundle.description, bundle.unused)


def check_selection(model: nn.Module, params: Sequence[str] | str | None,
                    unused: Sequence[str] = ()) -> None:
    """Refuse ``params`` patterns that select frozen parameters (e.g. ones the loss misses).

    Args:
        model: The module.
        params: Name patterns, or None (every trainable parameter: nothing to check).
        unused: Names the loader froze because the loss does not reach them.

    Raises:
        InputError: A pattern matches nothing, or selects frozen parameters (named, with
            the reason where known).
    """
    if params is None:
        return
    from scalable_hrank.operators.params import match_parameters

    named = list(model.named_parameters())
    try:
        chosen = match_parameters(named, params)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    frozen = {n for n, p in named if not p.requires_grad}
    bad = [n for n in chosen if n in frozen]
    if bad:
        missed = set(unused)
        why = ("not reached by the loss" if all(n in missed for n in bad)
               else "frozen (requires_grad=False)")
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        msg = (f"--params selects parameters that are {why}, so they have no curvature: "
               f"{shown}; leave them out of the patterns")
        raise InputError(msg)


def dtype_of(name: Any) -> torch.dtype:
    """``"float64"``/``"float32"`` -> the torch dtype.

    Raises:
        InputError: Any other name.
    """
    dtypes = {"float64": torch.float64, "float32": torch.float32}
    if name not in dtypes:
        msg = f"dtype must be one of {sorted(dtypes)}; got {name!r}"
        raise InputError(msg)
    return dtypes[name]
