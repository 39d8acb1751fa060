"""Tiled inference (no seams, exact for a limited receptive field), x8 self-ensemble, `ggt-ir restore`."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from ggt_ir.archs import build_network
from ggt_ir.cli import main as cli_main
from ggt_ir.utils.tiling import model_pad_multiple, model_scale, restore, self_ensemble, tiled_forward

NAF = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add synchronisation (badly so on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class LocalNet(nn.Module):
    """Two 3x3 convolutions: receptive-field radius 2; optional x2 pixel-shuffle upscaling."""

    def __init__(self, scale: int = 1, pad_multiple: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, 1, 1), nn.GELU(), nn.Conv2d(12, 3 * scale**2, 3, 1, 1),
                                  nn.PixelShuffle(scale))
        self.scale, self.pad_multiple = scale, pad_multiple

    def forward(self, x):
        return self.body(x)


class Identity(nn.Module):
    pad_multiple = 8

    def forward(self, x):
        h, w = x.shape[-2:]  # a tile is a multiple of 8, or the whole side of a smaller image
        assert (h % 8 == 0 or h in SIDES) and (w % 8 == 0 or w in SIDES)
        return x


SIDES = {37, 53, 100, 9, 33, 70, 8}


@pytest.mark.parametrize("scale,pad_multiple", [(1, 1), (1, 4), (2, 1)])
def test_tiled_equals_untiled_for_limited_receptive_field(scale, pad_multiple):
    torch.manual_seed(0)
    net = LocalNet(scale, pad_multiple).eval()
    x = torch.rand(2, 3, 75, 61)
    with torch.no_grad():
        full = tiled_forward(net, x, tile=0)
        tiled = tiled_forward(net, x, tile=24, overlap=8)  # weight 0 within overlap // 4 = 2 of a cut
    assert tiled.shape == full.shape == (2, 3, 75 * scale, 61 * scale)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw,tile,overlap", [((37, 53), 16, 8), ((64, 64), 32, 0), ((100, 9), 24, 12),
                                             ((33, 70), 24, 20), ((8, 8), 16, 4)])
def test_blend_weights_cover_every_pixel(hw, tile, overlap):
    """An identity network comes back exactly whatever the tiling: every pixel has positive total
    weight and the weights are normalised."""
    x = torch.rand(1, 3, *hw)
    torch.testing.assert_close(tiled_forward(Identity(), x, tile, overlap), x)


def test_constant_image_stays_constant_with_a_zoo_model():
    torch.manual_seed(0)
    # a per-pixel network (1x1 convolutions only) maps a constant to a constant, tile by tile
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GELU(), nn.Conv2d(8, 3, 1))
    x = torch.full((1, 3, 90, 70), 0.3)
    y = tiled_forward(net, x, tile=32, overlap=16)
    assert (y - y[..., :1, :1]).abs().max() < 1e-6
    # and a zoo model runs tiled at its pad multiple, any size, with a finite, seam-free result
    naf = build_network(NAF).eval()
    assert model_pad_multiple(naf) == 4 and model_scale(naf) == 1
    z = tiled_forward(naf, torch.rand(1, 3, 45, 51), tile=22, overlap=8)
    assert z.shape == (1, 3, 45, 51) and torch.isfinite(z).all()


def test_zoo_models_expose_pad_multiple_and_scale():
    assert model_pad_multiple(build_network({"type": "Restormer", "dim": 8, "num_blocks": [1, 1, 1, 1],
                                             "num_refinement_blocks": 1, "heads": [1, 1, 1, 1]})) == 8
    assert model_pad_multiple(build_network({**NAF, "enc_blk_nums": [1, 1, 1], "dec_blk_nums": [1, 1, 1]})) == 8
    sw = build_network({"type": "SwinIR", "img_size": 16, "window_size": 4, "embed_dim": 8, "depths": [1],
                        "num_heads": [2], "upscale": 2, "upsampler": "pixelshuffledirect"})
    assert model_pad_multiple(sw) == 4 and model_scale(sw) == 2


def test_self_ensemble():
    torch.manual_seed(0)
    net = LocalNet().eval()
    x = torch.rand(1, 3, 13, 22)  # not square: rotations swap H and W
    with torch.no_grad():
        # an equivariant function is unchanged
        torch.testing.assert_close(self_ensemble(lambda t: t * 2, x), x * 2)
        # otherwise: the mean of the 8 transformed-and-undone outputs
        expected = sum(torch.rot90(net(torch.rot90(x, k, (2, 3))), -k, (2, 3)) +
                       torch.rot90(net(torch.rot90(x, k, (2, 3)).flip(-1)).flip(-1), -k, (2, 3))
                       for k in range(4)) / 8
        torch.testing.assert_close(self_ensemble(net, x), expected)
        torch.testing.assert_close(restore(net, x, tile=12, overlap=8, ensemble=True), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- ggt-ir restore
def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return folder


@pytest.fixture
def naf_weights(tmp_path):
    torch.manual_seed(0)
    net = build_network(NAF)
    sd = {k: v + 0.05 * torch.randn_like(v) for k, v in net.state_dict().items()}
    torch.save({"params": sd}, tmp_path / "naf.pth")
    net.load_state_dict(sd)
    return tmp_path / "naf.pth", net.eval()


def _read(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_restore_folder_with_arch(tmp_path, naf_weights):
    weights, net = naf_weights
    src = _images(tmp_path / "in", [(21, 30), (16, 17)])
    rc = cli_main(["restore", str(src), "-o", str(tmp_path / "out"), "--arch", "NAFNet", "--arch-kwargs",
                   json.dumps({k: v for k, v in NAF.items() if k != "type"}), "--weights", str(weights)])
    assert rc == 0
    for name in ("img0.png", "img1.png"):
        x = torch.from_numpy(_read(src / name)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            expected = (net(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
        got = _read(tmp_path / "out" / name)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1


def test_restore_single_image_with_opt_tiles_and_ensemble(tmp_path, naf_weights):
    weights, net = naf_weights
    _images(tmp_path / "in", [(40, 33)])
    opt = tmp_path / "net.yml"
    opt.write_text(yaml.safe_dump({"network_g": NAF, "path": {"pretrain_network_g": str(weights)}}))
    rc = cli_main(["restore", str(tmp_path / "in" / "img0.png"), "-o", str(tmp_path / "out"), "--opt", str(opt),
                   "--tile", "16", "--tile-overlap", "8", "--self-ensemble", "--suffix", "_x"])
    assert rc == 0
    x = torch.from_numpy(_read(tmp_path / "in" / "img0.png")).permute(2, 0, 1)[None].float() / 255
    expected = (restore(net, x, 16, 8, True)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(_read(tmp_path / "out" / "img0_x.png") - expected).max() <= 1


@pytest.mark.parametrize("case,message", [
    ("no_input", "input not found"),
    ("no_weights_file", "weights file not found"),
    ("no_weights", "no weights"),
    ("unknown_arch", "unknown architecture type 'NAFNett'. Did you mean 'NAFNet'"),
    ("half_on_cpu", "--half needs a CUDA device"),
    ("bad_json", "--arch-kwargs is not valid JSON"),
    ("no_opt", "option file not found"),
])
def test_restore_errors_are_clear(tmp_path, capsys, naf_weights, case, message):
    weights, _ = naf_weights
    src = _images(tmp_path / "in", [(8, 8)])
    args = {"no_input": [str(tmp_path / "missing"), "--arch", "NAFNet", "--weights", str(weights)],
            "no_weights_file": [str(src), "--arch", "NAFNet", "--weights", str(tmp_path / "nope.pth")],
            "no_weights": [str(src), "--arch", "NAFNet"],
            "unknown_arch": [str(src), "--arch", "NAFNett", "--weights", str(weights)],
            "half_on_cpu": [str(src), "--arch", "NAFNet", "--weights", str(weights), "--half", "--device", "cpu"],
            "bad_json": [str(src), "--arch", "NAFNet", "--arch-kwargs", "{width: 8", "--weights", str(weights)],
            "no_opt": [str(src), "--opt", str(tmp_path / "none.yml")]}[case]
    assert cli_main(["restore", *args, "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_restore_folder_survives_bad_files_and_keeps_depth_alpha_gray(tmp_path, capsys, naf_weights):
    """One bad file is reported by name and skipped; 16-bit, RGBA and gray inputs keep their form; inputs with
    the same stem never overwrite each other."""
    weights, net = naf_weights
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "ok.png"), rgb)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then garbage
    good = (src / "ok.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    cv2.imwrite(str(src / "tiny.png"), rng.integers(0, 256, (1, 1, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "wide.png"), rng.integers(0, 256, (2, 300, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "deep.png"), rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16))
    rgba = np.dstack([rgb, rng.integers(0, 256, (20, 24), dtype=np.uint8)])
    cv2.imwrite(str(src / "alpha.png"), rgba)
    cv2.imwrite(str(src / "gray.png"), rgb[..., 0])
    cv2.imwrite(str(src / "same.png"), rgb)
    cv2.imwrite(str(src / "same.jpg"), rgb)
    rc = cli_main(["restore", str(src), "-o", str(tmp_path / "out"), "--arch", "NAFNet", "--arch-kwargs",
                   json.dumps({k: v for k, v in NAF.items() if k != "type"}), "--weights", str(weights)])
    err = capsys.readouterr().err
    assert rc == 1  # some were skipped
    assert "corrupt.png" in err and "truncated.png" in err and "restored 8 of 10" in err, err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ok.png", "tiny.png", "wide.png", "deep.png", "alpha.png", "gray.png", "same_png.png", "same_jpg.png"])
    deep = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (16, 16, 3)
    alpha = cv2.imread(str(out / "alpha.png"), cv2.IMREAD_UNCHANGED)
    assert alpha.shape == (20, 24, 4) and np.array_equal(alpha[..., 3], rgba[..., 3])
    assert cv2.imread(str(out / "gray.png"), cv2.IMREAD_UNCHANGED).shape == (20, 24)
    assert cv2.imread(str(out / "wide.png")).shape == (2, 300, 3)
    # the alpha image's colour is what the network gives for its RGB
    x = torch.from_numpy(cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        want = (net(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(cv2.cvtColor(alpha[..., :3], cv2.COLOR_BGR2RGB) - want).max() <= 1
