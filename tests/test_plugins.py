"""Plugins without editing the package: a user's module (--import / imports:) or an installed package's entry
points register architectures, datasets, losses and steps for every command."""
import json
import os
import subprocess
import sys
import textwrap

import yaml

from helpers import ROOT, tiny_options, write_options

PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn

    from ggt_ir.archs import ARCHS


    @ARCHS.register()
    class UserResNet(nn.Module):
        """A user's own network, registered from outside the package."""

        def __init__(self, width: int = 8):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, width, 3, 1, 1), nn.Conv2d(width, 3, 3, 1, 1)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(x)))
''')


def test_user_module_trains_and_eval_restore_find_it_in_a_fresh_process(demo_root, tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "user_archs.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugins))
    from ggt_ir.train.cli import main as train_main

    opt = tiny_options(demo_root, tmp_path / "exp", name="plug", network_g={"type": "UserResNet", "width": 4})
    opt["train"]["total_iter"] = 2
    opt["val"]["val_freq"] = 2
    opt["logger"]["save_checkpoint_freq"] = 2
    assert train_main(["-opt", str(write_options(tmp_path / "plug.yml", opt)), "--import", "user_archs"]) == 0
    run = tmp_path / "exp" / "plug"
    assert yaml.safe_load((run / "options.yml").read_text())["imports"] == ["user_archs"]  # recorded

    eval_opt = write_options(tmp_path / "eval.yml", {
        "name": "plug_eval", "results_root": str(tmp_path / "results"), "model": {"run": str(run)},
        "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
        "metrics": ["psnr"]})
    lq_dir = next(demo_root.glob("test/haze/LQ"))
    # a fresh interpreter that has never seen the plugin: only the run's options.yml names it
    script = (f"from ggt_ir.cli import main\n"
              f"rc = main(['eval', '-opt', {str(eval_opt)!r}])\n"
              f"rc += main(['restore', {str(lq_dir)!r}, '-o', {str(tmp_path / 'restored')!r}, '--run', {str(run)!r}, "
              f"'--device', 'cpu'])\n"
              f"raise SystemExit(rc)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugins), str(ROOT)]), GGT_IR_PROGRESS="off")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "plug_eval" / "summary.json").read_text())
    assert "test" in json.dumps(summary)
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == sorted(p.name for p in lq_dir.iterdir())


def test_imports_key_and_a_missing_module(demo_root, tmp_path, monkeypatch):
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "user_archs2.py").write_text(PLUGIN.replace("class UserResNet", "class UserResNet2"))
    monkeypatch.syspath_prepend(str(plugins))
    opt = tiny_options(demo_root, tmp_path, network_g={"type": "UserResNet2"})
    opt["imports"] = ["user_archs2"]
    assert load_options(write_options(tmp_path / "a.yml", opt)).network_g["type"] == "UserResNet2"
    opt["imports"] = ["no_such_plugin_module"]
    try:
        load_options(write_options(tmp_path / "b.yml", opt))
    except OptionsError as e:
        assert "imports: cannot import 'no_such_plugin_module'" in str(e) and "PYTHONPATH" in str(e)
    else:
        raise AssertionError("a missing plugin module must be an error")


def _write_dist(site, name: str = "ggt_user_plugin") -> None:
    """A tiny installed distribution (what pip would leave): a module and a .dist-info with entry points."""
    (site / f"{name}.py").write_text(PLUGIN.replace("from ggt_ir.archs import ARCHS\n", "").replace(
        "@ARCHS.register()\n", "") + textwrap.dedent('''
        from dataclasses import dataclass

        class UserLoss(nn.Module):
            @dataclass
            class Options:
                type: str = "UserLoss"
                loss_weight: float = 1.0

            def __init__(self, loss_weight: float = 1.0):
                super().__init__()
                self.loss_weight = loss_weight

            def forward(self, pred, target):
                return self.loss_weight * (pred - target).abs().mean()
    '''))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[ggt_ir.archs]\nEpNet = {name}:UserResNet\n\n[ggt_ir.losses]\nEpLoss = {name}:UserLoss\n\n"
        f"[ggt_ir.datasets]\nEpData = {name}:UserData\n\n[ggt_ir.steps]\nep_step = {name}:UserStep\n")


def test_entry_points_of_an_installed_package_are_found_lazily(demo_root, tmp_path, monkeypatch):
    from ggt_ir.archs import ARCHS, build_network
    from ggt_ir.data import DATASETS
    from ggt_ir.losses import LOSSES
    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps import STEPS

    site = tmp_path / "site"
    site.mkdir()
    _write_dist(site)
    monkeypatch.syspath_prepend(str(site))
    for reg in (ARCHS, LOSSES, DATASETS, STEPS):  # forget this process's earlier look-ups; restored after the test
        monkeypatch.setattr(reg, "_paths", dict(reg._paths))
        monkeypatch.setattr(reg, "_objects", dict(reg._objects))
        reg.load_entry_points(force=True)
    assert "EpNet" in ARCHS and "EpLoss" in LOSSES and "EpData" in DATASETS and "ep_step" in STEPS
    assert "ggt_user_plugin" not in sys.modules  # lazy: nothing imported by listing names
    assert build_network({"type": "EpNet", "width": 4})(__import__("torch").zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    opt = tiny_options(demo_root, tmp_path, network_g={"type": "EpNet", "width": 4})
    opt["train"]["pixel_opt"] = {"type": "EpLoss", "loss_weight": 2.0}
    loaded = load_options(write_options(tmp_path / "ep.yml", opt))
    assert loaded.train.pixel_opt.loss_weight == 2.0


def test_entry_points_in_a_fresh_process(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _write_dist(site, "ggt_user_plugin2")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    code = "from ggt_ir.archs import ARCHS; from ggt_ir.losses import LOSSES; print('EpNet' in ARCHS, 'EpLoss' in LOSSES)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]
