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


def test_every_loss_builds():
    import torch

    from ggt_ir.losses import LOSSES

    x, y = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    for name in LOSSES.names():
        one, two = LOSSES.get(name)(loss_weight=1.0)(x, y), LOSSES.get(name)(loss_weight=2.0)(x, y)
        assert torch.isfinite(one) and one.item() != 0
        assert two.item() == pytest.approx(2 * one.item())  # the weight is applied


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
