"""Checkpoint files, fingerprints and the pre-emption saver (scalable_hrank.checkpoint)."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch

from scalable_hrank.checkpoint import (
    CheckpointError,
    fingerprint,
    load_checkpoint,
    per_rank_path,
    read_header,
    save_checkpoint,
)
from scalable_hrank.errors import HRankError
from scalable_hrank.preemption import (
    PREEMPTED_EXIT_CODE,
    CheckpointSaver,
    Preempted,
    PreemptionHandler,
)


@dataclasses.dataclass
class _State:  # defined in a test module: refused on load (not scalable_hrank)
    x: torch.Tensor


def _state() -> dict:
    gen = torch.Generator().manual_seed(7)
    torch.randn(3, generator=gen)
    return {
        "basis": torch.randn(10, 4, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(1)),
        "alphas": [1.0, 2.5],
        "step": 4,
        "name": "lanczos",
        "none": None,
        "nested": {"t": (torch.arange(3), 5)},
        "gen": gen,
    }


def test_round_trip_restores_tensors_numbers_and_generator(tmp_path):
    fp = fingerprint([torch.ones(3)], None, {"k": 1})
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state, fingerprint=fp)
    out = load_checkpoint(tmp_path / "c.pt", fingerprint=fp)
    assert torch.equal(out["basis"], state["basis"]) and out["basis"].dtype == torch.float64
    assert out["alphas"] == [1.0, 2.5] and out["step"] == 4 and out["name"] == "lanczos"
    assert out["none"] is None and out["nested"]["t"][1] == 5
    # The restored generator continues the same stream as the original.
    assert torch.equal(torch.randn(5, generator=out["gen"]), torch.randn(5, generator=state["gen"]))
    header = read_header(tmp_path / "c.pt")
    assert header["format"] == 1 and header["fingerprint"] == fp



def test_preempted_exit_code_is_3(tmp_path):
    err = Preempted("x", path=tmp_path / "p", signum=None)
    assert err.exit_code == PREEMPTED_EXIT_CODE == 3 and isinstance(err, HRankError)


def test_foreign_dataclass_is_refused_on_load(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"s": _State(torch.zeros(2))}, fingerprint="f")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt", fingerprint="f")
    assert info.value.reason == "content"


def test_unsupported_type_raises_type_error(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint"):
        save_checkpoint(tmp_path / "c.pt", {"f": object()}, fingerprint="f")
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("cut", [3, 30, -1])
def test_truncated_file_is_refused(tmp_path, cut):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(), fingerprint="f")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path, fingerprint="f")
    assert info.value.reason == "truncated" and info.value.path == path


def test_corrupted_payload_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(), fingerprint="f")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_checkpoint(path, fingerprint="f")
    assert info.value.reason == "corrupted"


def test_not_a_checkpoint_and_missing_and_format(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04 something else entirely")
    with pytest.raises(CheckpointError, match="magic"):
        load_checkpoint(tmp_path / "x", fingerprint="f")
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(tmp_path / "missing", fingerprint="f")
    assert info.value.reason == "missing"
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": 1}, fingerprint="f")
    path.write_bytes(path.read_bytes().replace(b'"format": 1', b'"format": 9', 1))
    with pytest.raises(CheckpointError, match="format version 9") as info:
        load_checkpoint(path, fingerprint="f")
    assert info.value.reason == "format"


def test_other_fingerprint_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": 1}, fingerprint="a" * 64)
    with pytest.raises(CheckpointError, match="another problem") as info:
        load_checkpoint(path, fingerprint="b" * 64)
    assert info.value.reason == "fingerprint"


def test_fingerprint_changes_with_params_data_and_settings():
    w = [torch.ones(2, 3), torch.zeros(3)]
    data = (torch.arange(6.0).reshape(3, 2), torch.ones(3))
    base = fingerprint(w, data, {"kind": "loss", "seed": 0})
    assert base == fingerprint([t.clone() for t in w], [data], {"seed": 0, "kind": "loss"})
    assert len(base) == 64
    w2 = [w[0].clone(), w[1].clone()]
    w2[1][0] = 1e-30
    assert fingerprint(w2, data, {"kind": "loss", "seed": 0}) != base
    assert fingerprint(w, (data[0] + 1, data[1]), {"kind": "loss", "seed": 0}) != base
    assert fingerprint(w, data, {"kind": "loss", "seed": 1}) != base
    assert fingerprint([t.float().double() for t in w], data, {"kind": "loss", "seed": 0}) != base
    # batching is part of the identity (a different split is a different loader)
    batches = [(data[0][:2], data[1][:2]), (data[0][2:], data[1][2:])]
    assert fingerprint(w, batches, {"kind": "loss", "seed": 0}) != base


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1}, fingerprint="f")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2}, fingerprint="f")
    monkeypatch.undo()
    assert load_checkpoint(path, fingerprint="f") == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_saver_periodic_saves_follow_the_clock(tmp_path):
    now = [0.0]
    saver = CheckpointSaver(tmp_path / "c.pt", "f", every_seconds=10, clock=lambda: now[0])
    assert saver.load() is None
    saver({"step": 1})
    assert saver.saves == 0
    now[0] = 10.0
    saver({"step": 2})
    now[0] = 15.0
    saver({"step": 3})
    assert saver.saves == 1 and saver.load() == {"step": 2}
    saver.remove()
    assert not saver.path.exists()
    with pytest.raises(ValueError, match="every_seconds"):
        CheckpointSaver(tmp_path / "c.pt", "f", every_seconds=-1)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_makes_saver_save_then_raise_preempted(tmp_path, sig):
    previous = signal.getsignal(sig)
    with PreemptionHandler() as handler:
        saver = CheckpointSaver(tmp_path / "c.pt", "f", every_seconds=float("inf"),
                                handler=handler)
        saver({"step": 1})
        assert saver.saves == 0 and not handler.signalled
        os.kill(os.getpid(), sig)
        assert handler.signalled and handler.signum == sig
        with pytest.raises(Preempted) as info:
            saver({"step": 2})
    assert info.value.signum == sig and info.value.path == tmp_path / "c.pt"
    assert load_checkpoint(tmp_path / "c.pt", fingerprint="f") == {"step": 2}
    try:
        # the process is on its way out with the checkpoint's code: a repeated signal (the
        # job script forwards a copy) is ignored instead of killing it
        assert signal.getsignal(sig) == signal.SIG_IGN
        os.kill(os.getpid(), sig)
    finally:
        signal.signal(sig, previous)
    assert handler.requeue() is False  # not asked to requeue


def test_handlers_are_restored_when_no_signal_came():
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    with PreemptionHandler() as handler:
        assert signal.getsignal(signal.SIGUSR1) != previous[signal.SIGUSR1]
    assert not handler.signalled
    assert {sig: signal.getsignal(sig) for sig in previous} == previous


def test_requeue_runs_scontrol_inside_slurm_when_asked(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert PreemptionHandler(requeue=False).requeue() is False
    assert not log.exists()
    assert PreemptionHandler(requeue=True).requeue() is True
    assert log.read_text() == "requeue 42\n"
    cancelled = PreemptionHandler(requeue=True)
    cancelled.signum = signal.SIGTERM  # scancel: save, but never requeue
    assert cancelled.requeue() is False and log.read_text() == "requeue 42\n"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert PreemptionHandler(requeue=True).requeue() is False


def test_per_rank_path():
    assert per_rank_path("a/c.pt", 0, 1) == per_rank_path("a/c.pt", 0, 1).__class__("a/c.pt")
    assert per_rank_path("a/c.pt", 3, 8).name == "c.rank3of8.pt"
