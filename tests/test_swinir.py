"""SwinIR: identical to an independent implementation (basicsr's) and loads official-layout weights."""
import pytest
import torch
import torch.nn.functional as F

from ggt_ir.archs.swinir_arch import SwinIR
from ggt_ir.archs.weights import load_weights

CONFIGS = [
    dict(upscale=1, upsampler="", resi_connection="1conv"),
    dict(upscale=2, upsampler="pixelshuffle", resi_connection="3conv"),
    dict(upscale=4, upsampler="nearest+conv", resi_connection="1conv"),
    dict(upscale=3, upsampler="pixelshuffledirect", resi_connection="1conv", patch_norm=False),
]


def _reference():
    from ggt_ir._compat import patch_basicsr_imports

    patch_basicsr_imports()
    from basicsr.archs.swinir_arch import SwinIR as Ref

    return Ref


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda k: k["upsampler"] or "restoration")
def test_matches_basicsr_swinir_on_odd_sizes(kw):
    Ref = _reference()
    cfg = dict(img_size=16, window_size=8, embed_dim=16, depths=[2, 2], num_heads=[2, 2], mlp_ratio=2, **kw)
    torch.manual_seed(0)
    ref, ours = Ref(**cfg).eval(), SwinIR(**cfg).eval()
    sd = {k: (v + 0.02 * torch.randn_like(v)) if v.is_floating_point() and "attn_mask" not in k else v
          for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    ours.load_state_dict(sd, strict=True)  # same keys and shapes as the official layout
    x = torch.rand(1, 3, 19, 27)
    # the official model needs window-multiple inputs: pad the same way ours does internally
    xp = F.pad(x, (0, (-27) % 8, 0, (-19) % 8), mode="reflect")
    s = kw["upscale"] if kw["upsampler"] else 1
    with torch.no_grad():
        expected = ref(xp)[..., : 19 * s, : 27 * s]
        got = ours(x)
    assert got.shape == (1, 3, 19 * s, 27 * s)
    assert (got - expected).abs().max().item() <= 1e-5


def test_forward_backward_any_size_and_checkpointing():
    net = SwinIR(img_size=16, window_size=4, embed_dim=8, depths=[2], num_heads=[2], mlp_ratio=2, upscale=1,
                 use_checkpoint=True)
    x = torch.rand(2, 3, 13, 10, requires_grad=True)
    y = net(x)
    assert y.shape == x.shape
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("layout", ["params", "params_ema", "state_dict_lightning", "bare_module", "safetensors"])
def test_loads_official_and_other_checkpoint_layouts(tmp_path, layout):
    cfg = dict(img_size=16, window_size=4, embed_dim=8, depths=[2], num_heads=[2], mlp_ratio=2, upscale=1)
    src, dst = SwinIR(**cfg), SwinIR(**cfg)
    sd = src.state_dict()
    if layout == "safetensors":
        from ggt_ir.train.checkpoint import export_generator

        path = export_generator(tmp_path / "net", sd, sd, 1, {"type": "SwinIR"})[0]
    else:
        obj = {"params": {"params": sd}, "params_ema": {"params_ema": sd, "params": {}},
               "state_dict_lightning": {"state_dict": {f"net.{k}": v for k, v in sd.items()}},
               "bare_module": {f"module.{k}": v for k, v in sd.items()}}[layout]
        path = tmp_path / "w.pth"
        torch.save(obj, path)
    report = load_weights(dst, path, "auto", strict=True)
    assert not report.missing and not report.unexpected
    for k, v in dst.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_load_reports_missing_and_unexpected_keys(tmp_path):
    cfg = dict(img_size=16, window_size=4, embed_dim=8, depths=[2], num_heads=[2], mlp_ratio=2, upscale=1)
    sd = SwinIR(**cfg).state_dict()
    sd.pop("conv_last.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"params": sd}, tmp_path / "w.pth")
    with pytest.raises(KeyError, match="missing 1 keys: conv_last.weight.*unexpected 1 keys: extra.weight"):
        load_weights(SwinIR(**cfg), tmp_path / "w.pth", "params", strict=True)
    report = load_weights(SwinIR(**cfg), tmp_path / "w.pth", "params", strict=False)
    assert report.missing == ["conv_last.weight"] and report.unexpected == ["extra.weight"]
    with pytest.raises(KeyError, match="no 'params_ema'"):
        load_weights(SwinIR(**cfg), tmp_path / "w.pth", "params_ema")
