"""Shared test helpers: tiny option files and the 2-process CPU launch that really starts two processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_SWINIR = {"type": "SwinIR", "upscale": 1, "img_size": 16, "window_size": 4, "embed_dim": 8,
               "depths": [2], "num_heads": [2], "mlp_ratio": 2, "upsampler": "", "resi_connection": "1conv"}


def tiny_options(demo_root: Path, exp_root: Path, name: str = "tiny", **over) -> dict:
    opt = {
        "name": name,
        "manual_seed": 0,
        "datasets": {
            "train": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "train", "gt_size": 16,
                      "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"},
        },
        "network_g": dict(TINY_SWINIR),
        "path": {"experiments_root": str(exp_root)},
        "train": {"total_iter": 6, "warmup_iter": 2, "optim_g": {"type": "AdamW", "lr": 2e-3},
                  "scheduler": {"type": "CosineAnnealingLR", "eta_min": 1e-5},
                  "pixel_opt": {"type": "L1Loss"}, "ema_decay": 0.9, "grad_clip": 1.0},
        "val": {"val_freq": 3, "num_save_img": 1,
                "metrics": {"psnr": {"type": "psnr"}, "ssim": {"type": "ssim"}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 3, "keep_last": 2, "trackers": []},
    }
    for dotted, value in over.items():
        node = opt
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return opt


def write_options(path: Path, opt: dict) -> Path:
    path.write_text(yaml.safe_dump(opt))
    return path


def launch_two_processes(args: list[str], cwd: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``accelerate launch --cpu --num_processes 2`` silently starts ONE process; this starts two (gloo)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    with socket.socket() as s:  # a free port, so parallel test runs don't collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check_two_processes(proc: subprocess.CompletedProcess) -> None:
    """A :func:`launch_two_processes` run succeeded; else fail with the end of its output."""
    assert proc.returncode == 0, f"2-process run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def train_two_processes(opt: dict, option_file: Path, *args: str) -> None:
    """``train.py`` on ``opt`` (written to ``option_file``) in two real processes (gloo); fails loudly."""
    check_two_processes(launch_two_processes([str(ROOT / "train.py"), "-opt", str(write_options(option_file, opt)),
                                              *args]))


def train_run(opt: dict, tmp_path: Path, resume: str | None = None):
    """(trainer, summary) of a run in this process, from ``opt`` written to ``tmp_path/<name>.yml``."""
    from ggt_ir.train.options import load_options
    from ggt_ir.train.trainer import Trainer

    tr = Trainer(load_options(write_options(tmp_path / f"{opt['name']}.yml", opt)), resume=resume, command="pytest")
    return tr, tr.fit()


def train_straight_killed_resumed(options, tmp_path: Path, monkeypatch, kill_at: int = 2) -> dict:
    """Run ``options("straight")`` to the end; run ``options("killed")``, killed (KeyboardInterrupt) right after
    its checkpoint at ``kill_at``, then resume it from its latest checkpoint. Returns the resumed run's summary."""
    import pytest
    from accelerate.state import AcceleratorState, GradientState

    from ggt_ir.train.trainer import Trainer

    def fresh_accelerate_state():  # one process, several Accelerators one after the other
        AcceleratorState._reset_state(True)
        GradientState._reset_state()

    train_run(options("straight"), tmp_path)
    fresh_accelerate_state()
    original = Trainer.save

    def save_then_die(self):
        original(self)
        if self.state.iter == kill_at:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_run(options("killed"), tmp_path)
    monkeypatch.setattr(Trainer, "save", original)
    fresh_accelerate_state()
    return train_run(options("killed"), tmp_path, resume="latest")[1]
