"""Architectures through spandrel: RRDBNet, HAT, DAT, SCUNet and SPAN (tiny configs) build, train, save and reload
(also through load_weights and as a detected {type: Spandrel}) and run through `ggt-ir restore`; BasicSR's RRDBNet
releases load and give BasicSR's outputs; the trainer trains a spandrel network and finetunes from a detected
checkpoint."""
from __future__ import annotations

import pytest
import torch

from ggt_ir._compat import patch_basicsr_imports
from ggt_ir.archs import ARCHS, build_network
from ggt_ir.archs.weights import load_weights

patch_basicsr_imports()

TINY = {
    "RRDBNet": {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "scale": 1},
    "HAT": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4, "compress_ratio": 3,
            "squeeze_factor": 4, "upscale": 1, "img_size": 16, "mlp_ratio": 2, "num_feat": 8},
    "DAT": {"embed_dim": 16, "depth": [1], "num_heads": [2], "split_size": [2, 4], "upscale": 1, "img_size": 16,
            "expansion_factor": 2},
    "SCUNet": {"dim": 64, "config": [1, 1, 1, 1, 1, 1, 1]},  # SCUNet's attention heads are 32 wide: dim >= 64
    "SPAN": {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 8, "upscale": 2},
}
SCALES = {"RRDBNet": 1, "HAT": 1, "DAT": 1, "SCUNet": 1, "SPAN": 2}
SPANDREL_IDS = {"RRDBNet": "ESRGAN"}


def spec(arch):
    return {"type": "Spandrel", "arch": arch, **TINY[arch]}


@pytest.mark.parametrize("arch", list(TINY))
def test_spandrel_arch_trains_saves_and_reloads(arch, tmp_path):
    from spandrel import ModelLoader

    torch.manual_seed(0)
    net = build_network(spec(arch))
    assert net.scale == SCALES[arch] and net.arch == SPANDREL_IDS.get(arch, arch)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.rand(2, 3, 20, 24), torch.rand(2, 3, 20 * SCALES[arch], 24 * SCALES[arch])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    (net(x) - y).abs().mean().backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.eval()
    with torch.no_grad():
        ref = net(x)
    assert ref.shape == y.shape
    # saved keys are the architecture's own: spandrel itself detects and loads the file
    torch.save({"params": net.state_dict()}, tmp_path / "net.pth")
    desc = ModelLoader().load_from_file(tmp_path / "net.pth")
    assert desc.architecture.id == net.arch
    # spandrel's own call API (pads to the size requirements, clamps) gives our output
    assert torch.allclose(desc(x[:1]), ref[:1].clamp(0, 1), atol=1e-5)
    # reload: into the same architecture (strict), and as a detected {type: Spandrel}
    for target in (build_network(spec(arch)), build_network({"type": "Spandrel"})):
        report = load_weights(target, tmp_path / "net.pth", strict=True)
        assert report.param_key == "params" and not report.missing and not report.unexpected
        target.eval()
        with torch.no_grad():
            assert torch.allclose(target(x), ref, atol=1e-6)
        assert target.arch == net.arch and target.scale == net.scale and target.pad_multiple == net.pad_multiple


@pytest.mark.parametrize("arch", list(TINY))
def test_ggt_ir_restore_runs_each_spandrel_arch(arch, tmp_path):
    """`ggt-ir restore` on a folder, with the architecture named (--arch Spandrel --arch-kwargs) and detected from
    the checkpoint alone (--arch Spandrel): the PNGs it writes are the network's output, rounded to 8 bits."""
    import json

    from ggt_ir.cli import main
    from ggt_ir.utils.image_io import read_image, save_png, tensor_to_uint8, to_tensor

    torch.manual_seed(0)
    net = build_network(spec(arch)).eval()
    torch.save({"params": net.state_dict()}, tmp_path / "net.pth")
    save_png(torch.rand(3, 20, 24), tmp_path / "lq" / "a.png")
    with torch.no_grad():
        want = tensor_to_uint8(net(to_tensor(read_image(tmp_path / "lq" / "a.png"))[None]))
    for form, extra in (("named", ["--arch-kwargs", json.dumps({"arch": arch, **TINY[arch]})]), ("detected", [])):
        out = tmp_path / form
        assert main(["restore", str(tmp_path / "lq"), "-o", str(out), "--arch", "Spandrel", *extra,
                     "--weights", str(tmp_path / "net.pth")]) == 0
        got = (read_image(out / "a.png") * 255).round()
        assert got.shape == want.shape == (20 * SCALES[arch], 24 * SCALES[arch], 3), (form, got.shape)
        assert abs(got - want.astype(float)).max() <= 1, form


@pytest.mark.parametrize("scale", [4, 1])
def test_basicsr_rrdbnet_release_layout_loads_and_matches_basicsr(scale, tmp_path):
    """BasicSR's RRDBNet (Real-ESRGAN's generator, new-arch keys): detected, or converted into arch: RRDBNet with
    BasicSR's arguments; both give BasicSR's output."""
    from basicsr.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(0)
    ref = RRDBNet(3, 3, scale=scale, num_feat=8, num_block=2, num_grow_ch=32).eval()
    torch.save({"params_ema": ref.state_dict()}, tmp_path / "RealESRGAN_like.pth")
    x = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        expect = ref(x)
    kwargs = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 2, "num_grow_ch": 32, "scale": scale}
    for target in (build_network({"type": "Spandrel"}), build_network({"type": "Spandrel", "arch": "RRDBNet", **kwargs})):
        assert load_weights(target, tmp_path / "RealESRGAN_like.pth", strict=True).param_key == "params_ema"
        assert target.scale == scale
        with torch.no_grad():
            assert torch.allclose(target.eval()(x), expect, atol=1e-5)


def test_tiler_and_loader_see_pad_multiple_and_scale():
    from ggt_ir.utils.tiling import model_pad_multiple, model_scale, tiled_forward

    net = build_network(spec("SPAN")).eval()
    assert model_scale(net) == 2 and model_pad_multiple(net) == 1
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        assert tiled_forward(net, x, tile=16, overlap=8).shape == (1, 3, 80, 72)
    rrdb = build_network(spec("RRDBNet"))
    assert model_pad_multiple(rrdb) == 4 and model_scale(rrdb) == 1  # pixel-unshuffle by 4 inside
    assert rrdb(torch.rand(1, 3, 13, 18)).shape == (1, 3, 13, 18)  # padded to the multiple, cropped back


def test_spandrel_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Did you mean HAT"):
        build_network({"type": "Spandrel", "arch": "HATT"})
    with pytest.raises(ValueError, match="network_g.embed_dimm.*did you mean 'embed_dim'"):
        build_network({"type": "Spandrel", "arch": "HAT", "embed_dimm": 8})
    with pytest.raises(ValueError, match="without 'arch' takes no constructor arguments"):
        build_network({"type": "Spandrel", "upscale": 2})
    pending = build_network({"type": "Spandrel"})
    with pytest.raises(RuntimeError, match="has no architecture yet"):
        pending(torch.rand(1, 3, 8, 8))
    torch.save({"params": {"foo.weight": torch.zeros(3)}}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="does not recognise"):
        load_weights(build_network({"type": "Spandrel"}), tmp_path / "odd.pth")
    assert "Spandrel" in ARCHS


def test_span_inference_only_weights_are_frozen():
    net = build_network(spec("SPAN"))
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(".eval_conv." in f"." + n for n in frozen)


def test_trainer_trains_a_spandrel_network_and_finetunes_a_detected_checkpoint(demo_root, tmp_path):
    from safetensors.torch import load_file

    from ggt_ir.train.options import load_options
    from ggt_ir.train.trainer import Trainer
    from helpers import tiny_options, write_options

    net_g = spec("SPAN") | {"upscale": 1}
    opt = load_options(write_options(tmp_path / "span.yml", tiny_options(demo_root, tmp_path / "exp", name="span",
                                                                       network_g=net_g)))
    assert Trainer(opt, command="pytest").fit()["iter"] == 6
    export = tmp_path / "exp" / "span" / "models" / "net_g_latest.safetensors"
    keys = load_file(str(export))
    assert any(k.startswith("params.conv_1.") for k in keys)  # the architecture's own keys
    # finetune: {type: Spandrel} + path.pretrain_network_g (the architecture is detected from the export)
    over = tiny_options(demo_root, tmp_path / "exp", name="finetune", network_g={"type": "Spandrel"})
    over["path"]["pretrain_network_g"] = str(export)
    summary = Trainer(load_options(write_options(tmp_path / "ft.yml", over)), command="pytest").fit()
    assert summary["iter"] == 6
    again = build_network({"type": "Spandrel"})
    load_weights(again, tmp_path / "exp" / "finetune" / "models" / "net_g_latest.safetensors")
    assert again.arch == "SPAN"
