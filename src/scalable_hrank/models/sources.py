"""One model spec string -> model, loss and default data (a :class:`ModelBundle`).

Specs:

* ``hf:PATH_OR_ID``: a Hugging Face model (``hf:minilm`` is the packaged all-MiniLM-L6-v2,
  loaded offline); task, loss and targets from :mod:`~scalable_hrank.models.tasks`.
* ``timm:NAME`` / ``torchvision:NAME``: an image classifier, random weights unless
  ``weights=FILE`` (a state dict, ``.pt`` or ``.safetensors``). The library is imported only
  here; a clear error says when it does not import.
* ``file:CHECKPOINT`` (``.pt``/``.pth``/``.safetensors``) with ``builder="module:function"``:
  the builder makes the module, the checkpoint fills its state dict (strict).
* ``module:function`` or ``path/to/file.py:function``: the function returns an ``nn.Module``,
  a pair ``(module, (inputs, targets))`` or a :class:`ModelBundle`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.loaders import batch_to, load_data, load_tensor_file
from ..data.samples import random_images, random_token_ids
from ..operators.outputs import model_outputs
from .tasks import call_model
from .unused import exclude_unused, find_unused_parameters

__all__ = ["ModelBundle", "load_model_spec", "parse_spec", "load_state_dict_file",
           "SCHEMES"]

logger = logging.getLogger(__name__)

#: Spec prefixes with a special meaning; anything else with a colon is ``module:function``.
SCHEMES = ("hf", "timm", "torchvision", "file")

Batch = tuple[Any, Tensor]
_IDENT = re.compile(r"^[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class ModelBundle:
    """A model ready for curvature products, with its loss and default data.

    Attributes:
        model: The module in eval mode; ``model(inputs)`` / ``model(**inputs)`` returns one
            Tensor of shape (M, K). Unused parameters have ``requires_grad=False``.
        loss: A built-in loss name (``"mse"``, ``"cross_entropy"``, ``"logcosh"``) or a
            callable ``loss(outputs, targets) -> scalar`` (mean over the batch).
        data: Default ``(inputs, targets)`` batches on the model's device, or None when the
            source offers none (pass data explicitly then).
        description: One line for logs and result files.
        unused: Names of the parameters left out (not reached by the loss).
        task: ``"embedding"``, ``"classification"``, ``"masked_lm"``, ``"causal_lm"``,
            ``"custom"``.
        tokenizer: The Hugging Face tokenizer, if any.
        make_data: ``make_data(source) -> batches``: loads a text or tensor file the same
            way the default data was made (tokenizer, task targets, batch size, device).
        spec: The spec string this bundle came from.
    """

    model: nn.Module
    loss: str | Callable[[Tensor, Tensor], Tensor]
    data: list[Batch] | None
    description: str
    unused: tuple[str, ...] = ()
    task: str = "custom"
    tokenizer: Any = None
    make_data: Callable[..., list[Batch]] | None = field(default=None, repr=False)
    spec: str = ""

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of scalar parameters (trainable only by default: the used ones)."""
        return sum(p.numel() for p in self.model.parameters()
                   if p.requires_grad or not trainable_only)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(scheme, target)``; ``scheme`` is ``"module"`` for ``module:function``.

    Args:
        spec: See the module docstring.

    Returns:
        ``(scheme, target)``, e.g. ``("hf", "minilm")``, ``("module", "pkg.mod:build")``.

    Raises:
        TypeError: If ``spec`` is not a string.
        ValueError: If the spec is empty, lacks a target, or has no ``:``.
    """
    if not isinstance(spec, str):
        msg = f"model spec must be a string; got {type(spec).__name__}"
        raise TypeError(msg)
    spec = spec.strip()
    forms = ("hf:PATH_OR_ID, timm:NAME, torchvision:NAME, file:CHECKPOINT "
             "(with builder=module:function) or module:function")
    if ":" not in spec:
        msg = f"model spec must be one of {forms}; got {spec!r}"
        raise ValueError(msg)
    head, target = spec.split(":", 1)
    if head in SCHEMES:
        if not target.strip():
            msg = f"model spec {spec!r} names no model after '{head}:'"
            raise ValueError(msg)
        return head, target.strip()
    fn = spec.rsplit(":", 1)
    if len(fn) != 2 or not fn[0] or not _IDENT.match(fn[1]) or "." in fn[1]:
        msg = f"model spec must be one of {forms}; got {spec!r}"
        raise ValueError(msg)
    return "module", spec


def _resolve_function(target: str) -> Callable[..., Any]:
    mod_name, fn_name = target.rsplit(":", 1)
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            msg = f"module file {mod_name!r} of spec {target!r} does not exist"
            raise ValueError(msg)
        mspec = importlib.util.spec_from_file_location(path.stem, path)
        if mspec is None or mspec.loader is None:  # pragma: no cover
            msg = f"cannot import {mod_name!r}"
            raise ValueError(msg)
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
    else:
        if not _IDENT.match(mod_name):
            msg = f"{mod_name!r} in spec {target!r} is not a module name"
            raise ValueError(msg)
        module = _import_module(mod_name, target)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        msg = f"model spec {target!r}: {mod_name!r} has no callable {fn_name!r}"
        raise ValueError(msg)  # noqa: TRY004 - a wrong spec value, not a wrong argument type
    return fn


def _import_module(mod_name: str, target: str) -> Any:
    """Import ``mod_name`` from ``sys.path``, then from the working directory.

    A builder module next to the user (``mycnn.py`` in the current folder) imports without
    ``PYTHONPATH=.``; the error says where it looked.
    """
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        top = mod_name.split(".")[0]
        if exc.name not in (top, mod_name):
            raise  # the module was found, but it imports something that is missing
        cwd = str(Path.cwd())
        if cwd not in sys.path and (Path(cwd, top).is_dir() or Path(cwd, top + ".py").is_file()):
            sys.path.insert(0, cwd)
            logger.info("imported %s from the working directory %s", mod_name, cwd)
            return importlib.import_module(mod_name)
        msg = (f"model spec {target!r}: module {mod_name!r} cannot be imported: not on the "
               f"Python path and no {top}.py or {top}/ in the working directory {cwd}; give "
               f"a file path (path/to/{top}.py:function) or set PYTHONPATH; known prefixes "
               f"are {', '.join(s + ':' for s in SCHEMES)}")
        raise ValueError(msg) from exc


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.pt``/``.pth`` (``weights_only=True``) or ``.safetensors``.

    Checkpoints that nest the state dict under ``state_dict``, ``model``,
    ``model_state_dict`` or ``module`` are unwrapped; a ``module.`` prefix (DDP) is removed.

    Args:
        path: The checkpoint.

    Returns:
        Name -> tensor.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"checkpoint {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        msg = f"checkpoint {str(path)!r} holds no state dict (name -> tensor)"
        raise ValueError(msg)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _load_weights(model: nn.Module, weights: str | Path) -> None:
    sd = load_state_dict_file(weights)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shapes that differ (e.g. another number of classes)
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        msg = f"weights {str(weights)!r} do not fit the model: {detail}"
        raise ValueError(msg) from exc
    if result.missing_keys or result.unexpected_keys:
        msg = (f"weights {str(weights)!r} do not fit the model: missing "
               f"{list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}")
        raise ValueError(msg)


def _import_optional(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        msg = (f"model spec {spec!r} needs the package {name!r}, which does not import here "
               f"({type(exc).__name__}: {exc}); install it, or build the model yourself "
               f"and use a module:function spec")
        raise ModuleNotFoundError(msg, name=name) from exc


def _vision_model(scheme: str, name: str, spec: str, num_classes: int | None) -> nn.Module:
    if scheme == "timm":
        timm = _import_optional("timm", spec)
        kw = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=False, **kw)
    tv = _import_optional("torchvision", spec)
    kw = {} if num_classes is None else {"num_classes": num_classes}
    return tv.models.get_model(name, weights=None, **kw)


def _example_batch(model: nn.Module, input_shape: tuple[int, ...] | None, n: int,
                   gen: torch.Generator) -> Batch | None:
    for attr in ("example_batch", "example_inputs", "example_input"):
        ex = getattr(model, attr, None)
        if ex is not None:
            if attr == "example_batch":
                return ex
            out = model_outputs(call_model(model, ex))
            return ex, _targets_for(out, gen)
    if input_shape is None:
        return None
    x = random_images(n, tuple(input_shape), generator=gen)
    first = next(iter(model.parameters()), None)
    if first is not None and first.dtype.is_floating_point:
        x = x.to(first.dtype)
    with torch.no_grad():
        out = model_outputs(call_model(model, x))
    return x, _targets_for(out, gen)


def _targets_for(out: Tensor, gen: torch.Generator) -> Tensor:
    """Random class labels for (N, K) outputs."""
    return torch.randint(out.shape[-1], (out.shape[0],), generator=gen)


def _default_loss(batch: Batch | None) -> str:
    if batch is None:
        return "cross_entropy"
    return "mse" if batch[1].dtype.is_floating_point else "cross_entropy"


def load_model_spec(
    spec: str,
    *,
    weights: str | Path | None = None,
    builder: str | None = None,
    task: str | None = None,
    loss: str | Callable[[Tensor, Tensor], Tensor] | None = None,
    data: str | Path | list[Batch] | None = None,
    labels: str | Path | None = None,
    batch_size: int = 16,
    max_length: int = 128,
    num_samples: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    detect_unused: bool = True,
    builder_kwargs: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """Load a model from a spec string, with its default loss and data.

    Cost: loading the weights, plus one forward and backward on the first batch to detect
    unused parameters (``detect_unused=True``).

    Args:
        spec: ``hf:PATH_OR_ID``, ``timm:NAME``, ``torchvision:NAME``, ``file:CHECKPOINT``
            or ``module:function`` (see the module docstring).
        weights: State-dict file for ``timm:``/``torchvision:``/``module:`` models.
        builder: ``module:function`` that builds the module for ``file:`` specs.
        task: Override the task of ``hf:`` models (``embedding``, ``classification``,
            ``masked_lm``, ``causal_lm``).
        loss: Override the default loss (a built-in name or a callable; callables allow
            only kind ``"loss"``).
        data: A text / tensor file, or ready batches; None for the default sample (the
            built-in 16 sentences for text models, ``num_samples`` (default 4) random images
            for vision models, the builder's example batch otherwise).
        labels: A file of integer class labels, one per sentence of the text data (hf
            classification).
        batch_size: Samples per batch.
        max_length: Token truncation length (text).
        num_samples: Number of sentences / images of the default sample.
        seed: Seed of random targets, masks and images.
        dtype: Parameter dtype (e.g. ``torch.float64`` for reference runs).
        device: Where model and data go (default: CPU).
        num_classes: Classes of a new classification head (vision / hf classification).
        input_shape: Per-sample input shape (C, H, W) for random default images of
            ``module:``/``file:`` models (vision models default to (3, 224, 224)).
        detect_unused: Find and freeze parameters the loss does not reach.
        builder_kwargs: Keyword arguments for the ``module:function`` builder.

    Returns:
        The :class:`ModelBundle`.

    Raises:
        ValueError: For a malformed spec, a ``file:`` spec without ``builder``, weights that
            do not fit, or a builder returning no module.
        ModuleNotFoundError: If the source library (transformers, timm, torchvision) does
            not import.
    """
    scheme, target = parse_spec(spec)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = None
    task_name = "custom"
    make_data: Callable[..., list[Batch]] | None = None
    default: list[Batch] | None = None
    if scheme == "hf":
        from .hf import load_hf, max_length_of

        module, tokenizer, task_obj, desc = load_hf(target, task=task, dtype=dtype,
                                                    num_labels=num_classes)
        task_name = task_obj.name
        if tokenizer is not None:
            make_data = functools.partial(
                load_data, tokenizer=tokenizer, task=task_obj, batch_size=batch_size,
                max_length=min(max_length, max_length_of(tokenizer, max_length)),
                num_samples=num_samples, seed=seed, labels=labels)
            if not isinstance(data, list):
                default = make_data(data)
        elif not isinstance(data, list) and data is None:
            enc = random_token_ids(num_samples or 8, 16, module.config.vocab_size,
                                   generator=gen)
            default = [task_obj.make_batch(enc, generator=gen)]
        default_loss = task_obj.loss
    else:
        if labels is not None:
            msg = f"labels are for hf: classification models; model {spec!r} takes --data"
            raise ValueError(msg)
        if scheme in ("timm", "torchvision"):
            module = _vision_model(scheme, target, spec, num_classes)
            input_shape = input_shape or (3, 224, 224)
            desc = f"{scheme} {target}"
            task_name = "classification"
        elif scheme == "file":
            if builder is None:
                msg = (f"model spec {spec!r} needs builder='module:function' (CLI: "
                       f"--builder) to build the module the checkpoint fills")
                raise ValueError(msg)
            module = _resolve_function(parse_spec(builder)[1])(**(builder_kwargs or {}))
            weights = target
            desc = f"{builder} with {target}"
        else:
            made = _resolve_function(target)(**(builder_kwargs or {}))
            if isinstance(made, ModelBundle):
                return made
            if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
                module, ex = made
                if data is None:
                    data = [ex] if isinstance(ex, tuple) else list(ex)
            else:
                module = made
            desc = target
        if not isinstance(module, nn.Module):
            msg = f"model spec {spec!r} built a {type(module).__name__}, not an nn.Module"
            raise ValueError(msg)
        if weights is not None:
            _load_weights(module, weights)
            desc += f" (weights {weights})"
        module.eval()
        if dtype is not None:
            module.to(dtype)
        if data is None:
            ex = _example_batch(module, input_shape, num_samples or 4, gen)
            default = None if ex is None else [ex]
        make_data = functools.partial(load_data, batch_size=batch_size)
        default_loss = _default_loss(default[0] if default else
                                     data[0] if isinstance(data, list) else None)
        n = sum(p.numel() for p in module.parameters())
        desc += f" ({n / 1e6:.2f}M parameters)"
    if isinstance(data, list):
        default = data
    elif data is not None and default is None:
        default = make_data(data) if make_data is not None else load_tensor_file(data)
    if device is not None:
        module.to(device)
    if device is not None or dtype is not None:
        default = None if default is None else [batch_to(b, device, dtype) for b in default]
        if make_data is not None:
            inner = make_data

            def make_data(source: Any = None, _inner=inner) -> list[Batch]:  # noqa: D103
                return [batch_to(b, device, dtype) for b in _inner(source)]
    loss = default_loss if loss is None else loss
    bundle = ModelBundle(module, loss, default, desc, (), task_name, tokenizer, make_data, spec)
    if detect_unused and default:
        unused = find_unused_parameters(module, loss, default[0], seed=seed)
        exclude_unused(module, unused)
        bundle = replace(bundle, unused=unused.names)
    elif detect_unused:
        logger.info("no default data for %s: unused-parameter detection skipped", spec)
    logger.info("model: %s", desc)
    return bundle
