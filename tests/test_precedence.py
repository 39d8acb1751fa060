"""Precedence for what both Accelerate and the option file set: command line > option file > accelerate config
> default, printed in the start-up banner (ggt_ir/train/precedence.py)."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from ggt_ir.config import OptionsError
from ggt_ir.train.precedence import Launcher, launcher_args, read_launcher, resolve
from helpers import ROOT, tiny_options, write_options


def _opt(mp=None, gas=None):
    return SimpleNamespace(train=SimpleNamespace(mixed_precision=mp, gradient_accumulation_steps=gas))


def _launcher(flags=None, config=None):
    return Launcher(True, flags or {}, "/cfg/default_config.yaml" if config is not None else None, config or {})


@pytest.fixture(autouse=True)
def _no_accelerate_env(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)


def test_command_line_beats_the_option_file_which_beats_the_config():
    d = resolve(_opt(mp="no"), set(), "x.yml", _launcher({"mixed_precision": "bf16"}, {"mixed_precision": "fp16"}))
    assert (d["mixed precision"].value, d["mixed precision"].source) == ("bf16", "command line: accelerate launch --mixed_precision")
    d = resolve(_opt(mp="fp16"), set(), "x.yml", _launcher({}, {"mixed_precision": "bf16"}))
    assert (d["mixed precision"].value, d["mixed precision"].source) == ("fp16", "option file")
    opt = _opt()
    d = resolve(opt, set(), "x.yml", _launcher({}, {"mixed_precision": "bf16"}))
    assert d["mixed precision"].value == "bf16" and d["mixed precision"].source.startswith("accelerate config")
    assert opt.train.mixed_precision == "bf16"  # written back for the rest of the run
    d = resolve(_opt(), set(), "x.yml", Launcher())
    assert (d["mixed precision"].value, d["mixed precision"].source) == ("no", "default")
    assert (d["gradient accumulation"].value, d["gradient accumulation"].source) == (1, "default")


def test_set_on_train_py_is_command_line_and_must_agree_with_the_launcher():
    d = resolve(_opt(mp="fp16"), {"train.mixed_precision"}, "x.yml", _launcher({}, {"mixed_precision": "bf16"}))
    assert d["mixed precision"].source == "command line: --set train.mixed_precision"
    with pytest.raises(OptionsError, match="sets mixed_precision twice"):
        resolve(_opt(mp="fp16"), {"train.mixed_precision"}, "x.yml", _launcher({"mixed_precision": "bf16"}))


def test_gradient_accumulation_and_the_environment(monkeypatch):
    d = resolve(_opt(), set(), "x.yml", _launcher({}, {"deepspeed_config": {"gradient_accumulation_steps": 4}}))
    assert d["gradient accumulation"].value == 4 and "accelerate config" in d["gradient accumulation"].source
    d = resolve(_opt(gas=2), set(), "x.yml", _launcher({}, {"deepspeed_config": {"gradient_accumulation_steps": 4}}))
    assert (d["gradient accumulation"].value, d["gradient accumulation"].source) == (2, "option file")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # exported by hand, no launcher
    d = resolve(_opt(), set(), "x.yml", Launcher())
    assert (d["mixed precision"].value, d["mixed precision"].source) == ("bf16", "environment ACCELERATE_MIXED_PRECISION")
    assert resolve(_opt(mp="no"), set(), "x.yml", Launcher())["mixed precision"].value == "no"


def test_the_launchers_command_line_is_read_up_to_the_script(tmp_path):
    cmd = ["/venv/bin/python3", "/venv/bin/accelerate", "launch", "--num_processes", "8", "--mixed_precision=bf16",
           "train.py", "-opt", "x.yml", "--set", "train.mixed_precision=fp16"]
    assert launcher_args(cmd) == ["--num_processes", "8", "--mixed_precision=bf16"]
    assert launcher_args(["python", "-m", "accelerate.commands.launch", "--cpu", "-m", "ggt_ir", "eval"]) == ["--cpu"]
    assert launcher_args(["python", "train.py"]) is None
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("mixed_precision: fp16\n")
    got = read_launcher(["accelerate", "launch", "--config_file", str(cfg), "--mixed-precision", "bf16", "t.py"])
    assert got.found and got.flags == {"mixed_precision": "bf16"} and got.config == {"mixed_precision": "fp16"}


def _launch(tmp_path, opt: dict, *launch_args: str) -> str:
    path = write_options(tmp_path / f"{opt['name']}.yml", opt)
    accelerate = str(os.path.join(os.path.dirname(sys.executable), "accelerate"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), GGT_IR_PROGRESS="off")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    proc = subprocess.run([accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--dynamo_backend",
                           "no", *launch_args, str(ROOT / "train.py"), "-opt", str(path)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_accelerate_launch_flag_and_config_reach_the_run(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path / "exp", name="flag")
    opt["train"].update(total_iter=1, mixed_precision="no")
    opt["val"]["val_freq"] = 1
    out = _launch(tmp_path, opt, "--mixed_precision", "bf16")
    assert "mixed precision       : bf16 (command line: accelerate launch --mixed_precision)" in out, out[-3000:]
    cfg = tmp_path / "accelerate.yaml"
    cfg.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "distributed_type": "NO",
                                   "mixed_precision": "bf16", "num_processes": 1, "use_cpu": True}))
    opt = tiny_options(demo_root, tmp_path / "exp", name="config")
    opt["train"]["total_iter"] = 1
    opt["val"]["val_freq"] = 1
    out = _launch(tmp_path, opt, "--config_file", str(cfg))
    assert f"mixed precision       : bf16 (accelerate config {cfg})" in out, out[-3000:]
    opt["name"], opt["train"]["mixed_precision"] = "file", "no"
    out = _launch(tmp_path, opt, "--config_file", str(cfg))
    assert "mixed precision       : no (option file)" in out, out[-3000:]
