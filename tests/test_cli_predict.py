"""``hrank predict`` against the theory functions and the paper's table of ranks.

The formulas and their conditions: docs/theory.md#rank-formulas.
"""

import json

import pytest

from scalable_hrank.cli import main
from scalable_hrank.theory import predict_rank_from_widths

# d, hidden, K, N, r, loss, bias -> (H_O, H_F, H_L)   (rows of the paper's rank table)
PAPER_ROWS = [
    (25, [5, 10], 10, 50, 25, "mse", False, (150, 175, 250)),
    (25, [5, 10], 10, 50, 25, "cross_entropy", False, (145, 165, 245)),
    (64, [12, 12], 10, 100, 41, "cross_entropy", False, (369, 351, 639)),
    (10, [6, 1, 6], 3, 30, 10, "mse", False, (12, 28, 35)),
    (16, [8, 8], 4, 40, 16, "logcosh", False, (64, 112, 160)),
    (16, [8, 8], 4, 40, 16, "mse", True, (68, 116, 172)),
    (16, [8, 8], 4, 40, 16, "cross_entropy", True, (51, 90, 135)),
    (16, [], 4, 40, 16, "mse", False, (64, 0, 64)),
]


def _argv(d, hidden, k, n, r, loss, bias):
    argv = ["predict", "--widths", ",".join(map(str, [d, *hidden, k])), "--input-rank", str(r),
            "--loss", loss, "--samples", str(n), "--json"]
    return argv + (["--bias"] if bias else [])


@pytest.mark.parametrize("row", PAPER_ROWS, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}-{r[5]}-{r[6]}")
def test_json_matches_paper_table_and_theory(row, capsys):
    *args, (h_o, h_f, h_l) = row
    assert main(_argv(*args)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"loss": h_l, "outer": h_o, "functional": h_f}
    d, hidden, k, n, r, loss, bias = args
    pred = predict_rank_from_widths([d, *hidden, k], loss=loss, input_rank=r, bias=bias,
                                    num_samples=n)
    assert out == {"loss": pred.loss, "outer": pred.outer, "functional": pred.functional}


def test_json_stdout_is_only_the_object(capsys):
    assert main(["predict", "--widths", "16,8,8,4", "--json"]) == 0
    text = capsys.readouterr().out
    assert text.strip().startswith("{") and text.count("\n") == 1
    assert set(json.loads(text)) == {"loss", "outer", "functional"}


def test_reference_width_sweep_cross_entropy(capsys):
    # the paper's rank table: the reference code's stored sweep, MNIST 8x8 (r = 41), N = 100
    h_l = [216, 464, 639, 783, 927, 1071, 1215, 1359, 1503]
    for w, expected in zip(range(4, 37, 4), h_l, strict=True):
        assert main(["predict", "--widths", f"64,{w},{w},10", "--input-rank", "41",
                     "--samples", "100", "--loss", "cross_entropy", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["loss"] == expected


def test_text_output_names_exactness_and_reasons(capsys):
    assert main(["predict", "--widths", "16,8,2,4", "--input-rank", "16", "--samples", "40",
                 "--bias"]) == 0
    text = capsys.readouterr().out
    assert "rank(H_O) =     40  exact" in text
    assert "p = 166" in text
    assert main(["predict", "--widths", "16,8,8,4", "--samples", "10", "--bias"]) == 0
    text = capsys.readouterr().out
    assert "none" in text and "outside the regime" in text  # N <= d: no bias formula


def test_residual_rank_zero_gives_outer(capsys):
    assert main(["predict", "--widths", "64,12,12,10", "--input-rank", "20",
                 "--residual-rank", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"loss": 200, "outer": 200, "functional": 0}


@pytest.mark.parametrize("argv", [
    ["predict", "--widths", "64"],
    ["predict", "--widths", "a,b"],
    ["predict", "--widths", "16,8,4", "--loss", "hinge"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["predict", "--widths", "16,8,4", "--input-rank", "20"],
    ["predict", "--widths", "16,0,4"],
    ["predict", "--widths", "16,8,4", "--residual-rank", "9"],
])
def test_out_of_range_values_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hrank: error:")
