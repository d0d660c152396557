"""Device and thread choice: CUDA availability, LOCAL_RANK and the CPU affinity monkeypatched."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from scalable_hrank.cli import main
from scalable_hrank.cli import rank as rank_cli
from scalable_hrank.distributed import resources
from scalable_hrank.distributed.resources import (
    allowed_cpus,
    configure_threads,
    default_threads,
    resolve_device,
    to_device,
)
from scalable_hrank.errors import InputError


@pytest.mark.parametrize(("requested", "env", "cuda", "count", "expected"), [
    ("auto", {}, False, 0, "cpu"),
    (None, {"LOCAL_RANK": "3"}, False, 0, "cpu"),
    ("auto", {}, True, 2, "cuda:0"),
    ("auto", {"LOCAL_RANK": "3"}, True, 4, "cuda:3"),
    ("auto", {"LOCAL_RANK": "5"}, True, 4, "cuda:1"),  # more processes than GPUs: wrap
    ("auto", {"SLURM_LOCALID": "1"}, True, 2, "cuda:1"),  # srun without torchrun
    ("auto", {"LOCAL_RANK": "0", "SLURM_LOCALID": "1"}, True, 2, "cuda:0"),  # torchrun wins
    ("cuda", {"LOCAL_RANK": "1"}, True, 2, "cuda:1"),
    ("cuda:1", {"LOCAL_RANK": "0"}, True, 2, "cuda:1"),
    ("cpu", {"LOCAL_RANK": "1"}, True, 2, "cpu"),  # --device cpu forces the CPU
    ("CPU", {}, True, 2, "cpu"),
])
def test_device_choice(requested, env, cuda, count, expected) -> None:
    got = resolve_device(requested, environ=env, cuda_available=cuda, device_count=count)
    assert got == torch.device(expected)


@pytest.mark.parametrize(("requested", "cuda", "needle"), [
    ("cuda", False, "CUDA is not available"),
    ("cuda:0", False, "CUDA is not available"),
    ("cuda:2", True, "only 2 CUDA device(s)"),
    ("cuda:x", True, "integer N"),
    ("gpu", True, "auto, cpu, cuda or cuda:N"),
])
def test_bad_device_is_an_input_error(requested, cuda, needle) -> None:
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(requested, environ={}, cuda_available=cuda, device_count=2)


def test_bad_local_rank_is_an_input_error() -> None:
    with pytest.raises(InputError, match="LOCAL_RANK"):
        resolve_device("auto", environ={"LOCAL_RANK": "x"}, cuda_available=True, device_count=1)


def test_threads_follow_affinity_slurm_and_torchrun(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert allowed_cpus({}) == 8
    assert allowed_cpus({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert allowed_cpus({"SLURM_CPUS_PER_TASK": "32"}) == 8  # the affinity is the limit
    assert default_threads({}) == 8
    assert default_threads({"OMP_NUM_THREADS": "2"}) == 2
    assert default_threads({"LOCAL_WORLD_SIZE": "4"}) == 2  # torchrun: 4 processes share 8
    assert default_threads({"LOCAL_WORLD_SIZE": "16"}) == 1
    assert default_threads({"SLURM_CPUS_PER_TASK": "4", "LOCAL_WORLD_SIZE": "2"}) == 4


def test_oversubscription_is_named(monkeypatch, caplog) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    try:
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        with caplog.at_level(logging.WARNING, logger=resources.__name__):
            assert configure_threads(None, environ={}) == 2
        assert not caplog.records and torch.get_num_threads() == 2
        with caplog.at_level(logging.WARNING, logger=resources.__name__):
            configure_threads(4, environ={})
        assert "oversubscribed" in caplog.text and "4 torch threads on 2" in caplog.text
        caplog.clear()
        monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 1.0, 1.0))  # another job running
        with caplog.at_level(logging.WARNING, logger=resources.__name__):
            configure_threads(2, environ={})
        assert "oversubscribed" in caplog.text and "--threads 1" in caplog.text
        with pytest.raises(InputError, match="positive integer"):
            configure_threads(0, environ={})
    finally:
        torch.set_num_threads(before)


def test_to_device_moves_every_tensor_and_loaders_lazily() -> None:
    x, y = torch.randn(3, 2, dtype=torch.float64), torch.arange(3)
    meta = torch.device("meta")
    moved = to_device(({"ids": x, "name": "a"}, y), meta)
    assert moved[0]["ids"].device == meta and moved[1].device == meta
    assert moved[0]["name"] == "a"
    loader = to_device((b for b in [(x, y), (x, y)]), meta)
    assert not isinstance(loader, (list, tuple))
    assert all(b[0].device == meta for b in loader)


def test_rank_moves_model_and_data_to_the_chosen_device(monkeypatch, capsys) -> None:
    seen = {}
    real = rank_cli.estimate_rank

    def spy(model, loss, data, kind, **kw):
        seen["model"] = {p.device for p in model.parameters()}
        seen["data"] = {data[0].device, data[1].device}
        return real(model, loss, data, kind, **kw)

    monkeypatch.setattr(rank_cli, "estimate_rank", spy)
    monkeypatch.setenv("HRANK_DEVICE", "cpu")
    assert main(["rank", "--model", "mlp:8,4,3", "--data", "gaussian", "--samples", "10",
                 "--loss", "mse", "--method", "sketch"]) == 0
    assert seen == {"model": {torch.device("cpu")}, "data": {torch.device("cpu")}}
    assert "selected parameters on cpu" in capsys.readouterr().err
    monkeypatch.setenv("HRANK_DEVICE", "cuda")  # what a GPU job script exports
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["rank", "--model", "mlp:8,4,3", "--data", "gaussian"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["rank", "--model", "mlp:8,4,3", "--data", "gaussian", "--samples", "10",
                 "--loss", "mse", "--device", "cpu"]) == 0  # the flag wins over the job's
