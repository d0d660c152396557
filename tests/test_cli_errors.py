"""Exit codes: every user-caused error is one line `hrank: error: ...` and exit 2, no traceback;
an internal error is exit 4 with its traceback; -v shows the traceback of a user error."""

from __future__ import annotations

import sys

import pytest
import torch

from scalable_hrank.cli import EXIT_CODES, main
from scalable_hrank.cli import rank as rank_cli
from scalable_hrank.cli.errors import user_error_message
from scalable_hrank.errors import InputError, NonFiniteError

MLP = ["rank", "--model", "mlp:8,4,3", "--data", "gaussian", "--samples", "10", "--loss", "mse"]


def _files(tmp_path):
    """Bad input files of every sort, in tmp_path."""
    x = torch.randn(6, 8)
    torch.save({"inputs": x, "labels": torch.zeros(6)}, tmp_path / "no_inputs.pt")
    x_nan = x.clone()
    x_nan[2, 3] = float("nan")
    torch.save({"inputs": x_nan, "targets": torch.randn(6, 3)}, tmp_path / "nan.pt")
    (tmp_path / "garbage.pt").write_text("not a tensor file")
    (tmp_path / "garbage.ckpt").write_text("not a checkpoint")
    (tmp_path / "bad.toml").write_text("model = [unclosed\n")
    (tmp_path / "unknown.toml").write_text('modle = "mlp:8,4,3"\n')
    (tmp_path / "list.json").write_text("[1, 2]\n")
    (tmp_path / "run.yaml").write_text("model: mlp:8,4,3\n")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "folder").mkdir()


def _cases(t):
    return {
        "negative rtol": [*MLP, "--rtol", "-1"],
        "no parameter matches": [*MLP, "--params", "nothing.*"],
        "digits with wrong widths": ["rank", "--model", "mlp:30,4,10"],
        "unknown model spec": ["rank", "--model", "nonsense"],
        "mlp spec without widths": ["rank", "--model", "mlp:"],
        "mlp widths not integers": ["rank", "--model", "mlp:8,x,3", "--data", "gaussian"],
        "missing hf folder": ["rank", "--model", f"hf:{t}/no_such_model"],
        "cuda without cuda": [*MLP, "--device", "cuda"],
        "unknown device": [*MLP, "--device", "tpu"],
        "out under /proc": [*MLP, "--out", "/proc/hrank-result.json"],
        "out is a folder": [*MLP, "--out", str(t / "folder")],
        "out under a file": [*MLP, "--out", str(t / "a_file" / "r.json")],
        "checkpoint under /proc": [*MLP, "--checkpoint", "/proc/none/run.ckpt"],
        "garbage checkpoint": [*MLP, "--checkpoint", str(t / "garbage.ckpt")],
        "missing data file": ["rank", "--model", "mlp:8,4,3", "--data", str(t / "none.pt")],
        "tensor file without inputs": ["rank", "--model", "mlp:8,4,3", "--data",
                                       str(t / "no_inputs.pt")],
        "garbage tensor file": ["rank", "--model", "mlp:8,4,3", "--data",
                                str(t / "garbage.pt")],
        "data with NaN": ["rank", "--model", "mlp:8,4,3", "--loss", "mse", "--data",
                          str(t / "nan.pt")],
        "missing config": ["rank", "--config", str(t / "none.toml")],
        "config syntax": ["rank", "--config", str(t / "bad.toml")],
        "config unknown key": ["rank", "--config", str(t / "unknown.toml")],
        "config not a mapping": ["rank", "--config", str(t / "list.json")],
        "memory not a size": [*MLP, "--memory", "lots"],
        "zero budget": [*MLP, "--max-matvecs", "0"],
        "zero block size": [*MLP, "--block-size", "0", "--method", "sketch"],
        "zero threads": [*MLP, "--threads", "0"],
        "plot of a missing file": ["plot", str(t / "none.json"), "--out", str(t / "f.png")],
        "plot of a non-result": ["plot", str(t / "list.json"), "--out", str(t / "f.png")],
        "submit rank arguments without --": ["submit", "rank", "--dry-run", "mlp:8,4,3"],
    }


CASES = sorted(_cases(__import__("pathlib").Path("/t")))


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_and_exit_2(name, tmp_path, monkeypatch, capsys) -> None:
    _files(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_products(*args, **kwargs):
        raise AssertionError("a product ran before the error was found")

    if name.startswith(("out", "checkpoint under", "cuda", "unknown device", "zero threads")):
        monkeypatch.setattr(rank_cli, "estimate_rank", no_products)
    assert main(_cases(tmp_path)[name]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hrank: error: ") and len(last) > 30, err


def test_missing_optional_package_is_exit_2(tmp_path, monkeypatch, capsys) -> None:
    _files(tmp_path)
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ModuleNotFoundError
    assert main(["rank", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "optional package 'yaml' is not installed" in err and "Traceback" not in err


def test_argparse_errors_exit_2_and_no_abbreviations(capsys) -> None:
    for argv in (["rank", "--mod", "mlp:8,4,3"], ["rank", "--kind", "everything"],
                 ["rank", "--dtype", "float16"], ["submit", "rank", "--dry-run", "--out",
                                                  "r.json", "--model", "mlp:8,4,3"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --mod" in err
    # --out is not taken for --output: the job's arguments need `--`, and the error shows how
    assert ("hrank submit rank [sbatch options] -- --out r.json --model mlp:8,4,3"
            in err.splitlines()[-1])


def test_verbose_shows_the_traceback_of_a_user_error(capsys) -> None:
    assert main(["-v", *MLP, "--rtol", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("hrank: error:")


def test_internal_error_has_its_own_code_and_traceback(monkeypatch, capsys) -> None:
    def bug(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(rank_cli, "estimate_rank", bug)
    assert main([*MLP, "--method", "sketch"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "internal error" in err
    assert EXIT_CODES[4].startswith("internal error")


def test_classification_of_exceptions() -> None:
    assert user_error_message(InputError("bad --x")) == "bad --x"
    assert "NaN" in user_error_message(NonFiniteError("loss is nan"))
    assert "Permission denied" in user_error_message(PermissionError(13, "Permission denied",
                                                                     "/x"))
    assert user_error_message(ModuleNotFoundError("x", name="scalable_hrank.gone")) is None
    for exc in (KeyError("k"), TypeError("t"), RuntimeError("r"), AttributeError("a")):
        assert user_error_message(exc) is None


def test_single_process_distributed_run_exits_0(tmp_path, monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert main([*MLP, "--method", "sketch", "--distributed"]) == 0


def test_broken_pipe_is_quiet(monkeypatch, capsys) -> None:
    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(rank_cli, "run", closed)
    from scalable_hrank.cli import build_parser

    parser = build_parser()
    monkeypatch.setattr("scalable_hrank.cli.build_parser", lambda: parser)
    args = parser.parse_args(MLP)
    args._run = closed  # noqa: SLF001
    monkeypatch.setattr(parser, "parse_args", lambda argv: args)
    assert main(MLP) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_output_piped_into_head_ends_quietly(tmp_path) -> None:
    import os
    import subprocess
    from pathlib import Path

    cfg = tmp_path / "big.toml"
    cfg.write_text('[sweep]\nname = "bp"\ninput_dim = 3\noutput_dim = 2\nnum_samples = 5\n'
                   f"width = {list(range(1, 200))}\ndepth = [1, 2, 3, 4, 5, 6, 7, 8]\n")
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = (f"{sys.executable} -c 'import sys; from scalable_hrank.cli import main; "
           f"sys.exit(main(sys.argv[1:]))' sweep {cfg} --list | head -n 1; "
           "exit ${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
