"""`import ggt_ir` stays cheap, and every registered name imports and builds."""
import subprocess
import sys

import pytest


def test_import_does_not_pull_heavy_optional_packages():
    code = ("import sys, ggt_ir, ggt_ir.config, ggt_ir.archs, ggt_ir.data, ggt_ir.losses, ggt_ir.cli; "
            "heavy = [m for m in ('diffusers', 'pyiqa', 'wandb', 'webdataset', 'basicsr') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_loss_builds(tmp_path):
    import dataclasses

    import torch

    from ggt_ir.losses import LOSSES

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, 176, 176, generator=g), torch.rand(1, 3, 176, 176, generator=g)
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        if getattr(cls, "adversarial", False):  # compares discriminator outputs: tests/test_gan_parts.py
            continue
        if "weights_dir" in fields:  # frozen pretrained networks: tests/test_perceptual_losses.py
            with pytest.raises(FileNotFoundError, match=str(tmp_path)):
                cls(weights_dir=str(tmp_path))
            continue
        one, two = cls(loss_weight=1.0)(x, y), cls(loss_weight=2.0)(x, y)
        assert torch.isfinite(one) and one.item() != 0, name
        assert two.item() == pytest.approx(2 * one.item()), name  # the weight is applied


def test_every_dataset_type_imports():
    from ggt_ir.data import DATASETS

    for name in DATASETS.names():
        cls = DATASETS.get(name)
        assert hasattr(cls, "Options") and hasattr(cls.Options, "check"), name


def test_unknown_registry_name_suggests():
    from ggt_ir.archs import ARCHS

    with pytest.raises(KeyError, match="SwinIR"):
        ARCHS.get("swinir")


def test_cli_lists_commands():
    from ggt_ir.cli import main

    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2
