"""Data for curvature products: text files, tensor files and built-in samples."""

from .loaders import (
    batch_to,
    count_samples,
    load_data,
    load_tensor_file,
    read_sentences,
    split_batches,
    tokenized_batches,
)
from .samples import SENTENCES, random_images, random_token_ids, sample_sentences

__all__ = [
    "SENTENCES",
    "batch_to",
    "count_samples",
    "load_data",
    "load_tensor_file",
    "random_images",
    "random_token_ids",
    "read_sentences",
    "sample_sentences",
    "split_batches",
    "tokenized_batches",
]
