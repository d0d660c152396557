"""Small built-in samples, so every command runs with no data argument.

Nothing is downloaded: sentences are written out here, images and token ids are drawn from a
seeded generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SENTENCES", "sample_sentences", "random_images", "random_token_ids"]

#: Sixteen short English sentences (4 to 11 words; 7 to 15 MiniLM tokens with [CLS]/[SEP]).
SENTENCES: tuple[str, ...] = (
    "The cat sat quietly on the warm windowsill.",
    "A storm is expected to reach the coast tonight.",
    "She finished the marathon in under four hours.",
    "Fresh bread smells wonderful in the morning.",
    "The committee postponed its decision until next week.",
    "He forgot his umbrella at the train station.",
    "Quantum computers may break some current encryption schemes.",
    "The children built a sandcastle near the pier.",
    "Our flight was delayed because of heavy fog.",
    "This recipe needs two cups of flour and an egg.",
    "The museum opens a new exhibition on ancient maps.",
    "Prices of electric cars keep falling every year.",
    "A small dog barked at the passing bicycle.",
    "The orchestra played the symphony without a conductor.",
    "Please water the plants while I am away.",
    "The old bridge was closed for repairs.",
)


def sample_sentences(n: int | None = None) -> list[str]:
    """Return the first ``n`` built-in sentences, cycling when ``n > 16``.

    Args:
        n: Number of sentences (default 16).

    Returns:
        A list of ``n`` strings.

    Raises:
        ValueError: If ``n < 1``.
    """
    n = len(SENTENCES) if n is None else n
    if n < 1:
        msg = f"n must be an integer >= 1; got {n!r}"
        raise ValueError(msg)
    return [SENTENCES[i % len(SENTENCES)] for i in range(n)]


def random_images(n: int, shape: tuple[int, ...] = (3, 224, 224), *,
                  generator: torch.Generator) -> Tensor:
    """Return (n, *shape) float32 standard-normal "images" (what a normalised image looks like)."""
    return torch.randn((n, *shape), generator=generator)


def random_token_ids(n: int, length: int, vocab_size: int, *,
                     generator: torch.Generator) -> dict[str, Tensor]:
    """Return tokenizer-like inputs of random ids: ``input_ids`` (n, length), ``attention_mask``.

    Used for models without a tokenizer (e.g. a GPT-2 built from a config).
    """
    ids = torch.randint(vocab_size, (n, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
