"""Tests for crash-safe file writes shared by checkpoints, graph caches, MP snapshots and run-directory files."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from crystal_train.atomic_file import atomic_torch_save, atomic_write, unfinished_writes
from crystal_train.training import artifacts


def test_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path, umask_022):
    path = tmp_path / "sub" / "state.pt"
    atomic_torch_save({"w": torch.arange(3)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def write_half_then_fail(handle):
        handle.write(b"new but unfin")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old"
    assert unfinished_writes(tmp_path) == [] and sorted(tmp_path.iterdir()) == [path]


def test_data_reaches_the_disk_before_the_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """fsync the file, rename, then fsync the folder so that the rename itself is durable."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda src, dst: (calls.append("replace"), real_replace(src, dst))[1])
    atomic_write(tmp_path / "data.bin", lambda handle: handle.write(b"payload"))
    assert calls == ["fsync file", "replace", "fsync folder"]
    assert (tmp_path / "data.bin").read_bytes() == b"payload"


def test_a_folder_that_cannot_be_fsynced_does_not_fail_a_finished_write(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # as some network and FUSE filesystems answer
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "data.bin", lambda handle: handle.write(b"payload"))
    assert (tmp_path / "data.bin").read_bytes() == b"payload" and unfinished_writes(tmp_path) == []


def test_unfinished_writes_lists_only_temporaries_beside_the_target(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    leftover = tmp_path / ".last.pt.k3j2h1.tmp"
    leftover.write_bytes(b"")
    assert unfinished_writes(tmp_path) == [leftover]


def test_run_directory_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A history.csv or metrics.json write that fails part-way (here at the flush to disk) keeps the previous file."""
    row = {"epoch": 1, "lr": 1e-3, "train_loss": 0.5, "train_mae": 0.4, "val_mae": float("nan"), "seconds": 2.0}
    history, metrics = tmp_path / "history.csv", tmp_path / "metrics.json"
    artifacts.write_history(history, [row])
    artifacts.write_json(metrics, {"best_epoch": 1})
    assert history.read_bytes() == b"epoch,lr,train_loss,train_mae,val_mae,seconds\r\n1,0.001,0.5,0.4,nan,2.0\r\n"
    assert metrics.read_bytes() == b'{\n  "best_epoch": 1\n}\n'
    kept = {path: path.read_bytes() for path in (history, metrics)}

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        artifacts.write_history(history, [row, {**row, "epoch": 2}])
    with pytest.raises(OSError, match="disk full"):
        artifacts.write_json(metrics, {"best_epoch": 2})
    assert {path: path.read_bytes() for path in kept} == kept
    assert unfinished_writes(tmp_path) == []


def test_a_file_name_that_is_not_utf8_is_written_escaped_not_a_crash(tmp_path):
    item_id = b"Ni\x96Al".decode("utf-8", "surrogateescape")  # a cp1252 name, as os.listdir hands it over
    artifacts.write_predictions(tmp_path / "p.csv", [item_id], [1.5])
    assert (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines() == ["id,prediction", "Ni\\udc96Al,1.5"]
