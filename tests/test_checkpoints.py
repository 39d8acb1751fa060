"""Checkpoints are checked before they are trusted; exports complete with their checkpoint; failures are one line."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ggt_ir.train.checkpoint import MARKER, CheckpointError, list_checkpoints, resolve_resume, verify_checkpoint
from ggt_ir.train.options import load_options
from ggt_ir.train.trainer import Trainer
from helpers import ROOT, tiny_options, write_options


@pytest.fixture(scope="module")
def run(demo_root, tmp_path_factory):
    """A tiny 6-iteration run with checkpoints at 2, 4, 6 (all kept)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    opt = tiny_options(demo_root, tmp / "exp", name="ck", logger__save_checkpoint_freq=2, logger__keep_last=0)
    Trainer(load_options(write_options(tmp / "ck.yml", opt)), command="pytest").fit()
    return tmp / "exp" / "ck"


def test_every_checkpoint_lists_its_files_and_has_its_export(run):
    found = list_checkpoints(run / "checkpoints")
    assert [i for i, _ in found] == [2, 4, 6]
    for it, path in found:
        meta = json.loads((path / MARKER).read_text())
        assert meta["iter"] == it and "model.safetensors" in meta["files"]
        assert any(name.startswith("random_states_") for name in meta["files"])
        assert verify_checkpoint(path) is None
        assert (run / "models" / f"net_g_{it}.safetensors").is_file()  # written before the checkpoint completed
    latest = load_file(str(run / "models" / "net_g_latest.safetensors"))
    six = load_file(str(run / "models" / "net_g_6.safetensors"))
    assert latest.keys() == six.keys() and all(torch.equal(latest[k], six[k]) for k in six)


def _copy_run(run, tmp_path):
    import shutil

    dst = tmp_path / "ck"
    shutil.copytree(run, dst)
    return dst


@pytest.mark.parametrize("damage,expect", [
    ("truncate_model", "model.safetensors has"),
    ("delete_rng", "random_states_0.pkl is missing"),
    ("delete_marker", f"{MARKER} is missing"),
    ("corrupt_marker", f"{MARKER} is unreadable"),
    ("empty_folder", f"{MARKER} is missing"),
])
def test_damaged_newest_is_reported_and_passed_over(run, tmp_path, damage, expect):
    r = _copy_run(run, tmp_path)
    newest = r / "checkpoints" / "checkpoint-6"
    if damage == "truncate_model":
        f = newest / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "delete_rng":
        (newest / "random_states_0.pkl").unlink()
    elif damage == "delete_marker":
        (newest / MARKER).unlink()
    elif damage == "corrupt_marker":
        (newest / MARKER).write_text("{not json")
    elif damage == "empty_folder":
        import shutil

        shutil.rmtree(newest)
        newest.mkdir()
    warnings = []
    assert resolve_resume("latest", r / "checkpoints", warn=warnings.append) == r / "checkpoints" / "checkpoint-4"
    assert len(warnings) == 1 and "checkpoint-6" in warnings[0] and expect in warnings[0]
    with pytest.raises(CheckpointError, match=expect):
        resolve_resume(str(newest), r / "checkpoints")


def test_all_damaged_is_an_error_not_a_fresh_start(run, tmp_path):
    r = _copy_run(run, tmp_path)
    for _, path in list_checkpoints(r / "checkpoints"):
        (path / MARKER).unlink()
    with pytest.raises(CheckpointError, match="all 3 are damaged"):
        resolve_resume("latest", r / "checkpoints", warn=lambda _: None)


def test_resume_latest_falls_back_and_finishes(run, tmp_path, demo_root):
    """A damaged newest checkpoint: the run resumes from the previous good one and ends where it should."""
    r = _copy_run(run, tmp_path)
    (r / "checkpoints" / "checkpoint-6" / "random_states_0.pkl").unlink()
    opt = tiny_options(demo_root, tmp_path, name="ck", logger__save_checkpoint_freq=2, logger__keep_last=0)
    summary = Trainer(load_options(write_options(tmp_path / "ck.yml", opt)), resume="latest", command="pytest").fit()
    assert summary["iter"] == 6
    log = max(r.glob("train_ck_*.log"), key=lambda p: p.stat().st_mtime).read_text()
    assert "skipping damaged" in log and "random_states_0.pkl is missing" in log
    assert "resumed from" in log and "checkpoint-4" in log
    a, b = load_file(str(run / "models" / "net_g_6.safetensors")), load_file(str(r / "models" / "net_g_6.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_failure_during_training_is_one_line_with_the_log_path(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path / "exp", name="boom")
    opt["datasets"]["train"]["gt_size"] = 64  # the demo images are 32 px: the first batch fails
    path = write_options(tmp_path / "boom.yml", opt)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "-opt", str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "traceback in" in err[0], out.stderr[-2000:]
    assert "Traceback (most recent call last)" not in out.stderr
    log = err[0].rsplit("traceback in ", 1)[1].rstrip(")")
    assert "Traceback (most recent call last)" in open(log).read()


@pytest.mark.parametrize("override,key", [
    ("val.val_freq=0", "val.val_freq"), ("logger.save_checkpoint_freq=0", "logger.save_checkpoint_freq"),
    ("logger.print_freq=0", "logger.print_freq"), ("datasets.train.batch_size_per_gpu=0", "batch_size_per_gpu"),
    ("scale=0", "scale"), ("train.total_iter=0", "train.total_iter"), ("train.ema_decay=1.0", "train.ema_decay"),
])
def test_zero_and_out_of_range_values_fail_at_load(demo_root, tmp_path, override, key):
    from ggt_ir.config import OptionsError

    path = write_options(tmp_path / "o.yml", tiny_options(demo_root, tmp_path / "exp"))
    with pytest.raises(OptionsError, match=rf"{key}.*(must be|expected)"):
        load_options(path, [override])
    assert not (tmp_path / "exp").exists()  # nothing touched
