"""Metric parity on real photographs, NIQE offline, per-image seeding."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ggt_ir.eval.metrics import MetricSuite, get_spec, image_seed

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _degrade(img: np.ndarray, kind: str, rng) -> np.ndarray:
    from PIL import Image, ImageFilter

    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=30)
        return np.array(Image.open(buf).convert("RGB"))
    if kind == "blur":
        return np.array(Image.fromarray(img).filter(ImageFilter.GaussianBlur(2)))
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photo_pairs():
    """(name, degraded, clean) uint8 RGB crops of scikit-image's bundled photographs."""
    import skimage.data

    rng = np.random.default_rng(0)
    out = []
    for name in PHOTOS:
        gt = np.ascontiguousarray(getattr(skimage.data, name)()[:160, :192, :3])
        for kind in ("jpeg", "blur", "noise"):
            out.append((f"{name}-{kind}", _degrade(gt, kind, rng), gt))
    return out


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0


def test_psnr_ssim_y_match_pyiqa_and_basicsr(photo_pairs):
    import pyiqa

    from ggt_ir._compat import patch_basicsr_imports

    patch_basicsr_imports()
    from basicsr.metrics import calculate_psnr, calculate_ssim

    ps = pyiqa.create_metric("psnr", test_y_channel=True, color_space="ycbcr", device="cpu")
    ss = pyiqa.create_metric("ssim", test_y_channel=True, color_space="ycbcr", device="cpu")
    suite = MetricSuite({"psnr": {}, "ssim": {},
                         "psnr_b": {"type": "psnr", "convention": "basicsr"},
                         "ssim_b": {"type": "ssim", "convention": "basicsr"}})
    # one batch of all pairs: batching must not change per-image scores
    pred = torch.cat([_t(lq) for _, lq, _ in photo_pairs])
    ref = torch.cat([_t(gt) for _, _, gt in photo_pairs])
    ours = suite.score(pred, ref, [n for n, _, _ in photo_pairs])
    gap = 0.0
    for i, (name, lq, gt) in enumerate(photo_pairs):
        assert ours["psnr"][i] == pytest.approx(ps(_t(lq), _t(gt)).item(), abs=1e-4), name
        assert ours["ssim"][i] == pytest.approx(ss(_t(lq), _t(gt)).item(), abs=1e-5), name
        bgr_lq, bgr_gt = lq[..., ::-1], gt[..., ::-1]
        b_ssim = calculate_ssim(bgr_lq, bgr_gt, 0, test_y_channel=True)
        assert ours["psnr_b"][i] == pytest.approx(calculate_psnr(bgr_lq, bgr_gt, 0, test_y_channel=True), abs=1e-4), name
        assert ours["ssim_b"][i] == pytest.approx(b_ssim, abs=1e-5), name
        gap = max(gap, abs(ours["ssim"][i] - b_ssim))
    # why two conventions exist: pyiqa rounds Y to integers before SSIM, basicsr does not
    assert gap > 1e-4


def test_niqe_offline_from_basicsr_parameters(tmp_path):
    """NIQE needs no download: basicsr's bundled pristine parameters feed pyiqa's NIQE."""
    import skimage.data

    from ggt_ir._compat import patch_basicsr_imports

    img = skimage.data.astronaut()[:192, :192]
    suite = MetricSuite(["niqe"], weights_dir=tmp_path, strict=True)  # empty weights folder
    score = suite.score(_t(img), None, ["astronaut"])["niqe"][0]
    variant = suite.variants()["niqe"]
    assert "basicsr" in variant["params"] and variant["lower_better"] is True

    import pyiqa

    from ggt_ir.eval.metrics import _niqe_params_from_basicsr

    direct = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=_niqe_params_from_basicsr())
    assert score == pytest.approx(direct(_t(img)).item(), abs=1e-6)
    patch_basicsr_imports()
    from basicsr.metrics import calculate_niqe

    assert score == pytest.approx(calculate_niqe(img[..., ::-1], 0, input_order="HWC", convert_to="y"), abs=0.05)


def test_random_metrics_are_seeded_per_image_not_per_batch():
    """A random-crop metric gives an image the same score whatever the batch or rank it is in."""
    from ggt_ir.eval.metrics import Metric, MetricSpec

    spec = MetricSpec("fake_random", "NR", False, random=True)
    m = Metric.__new__(Metric)
    m.key, m.spec, m.device, m.seed, m.options, m.extra = "fake", spec, torch.device("cpu"), 7, {}, {}
    m._net = lambda x: torch.rand(x.shape[0]) + torch.from_numpy(np.random.rand(x.shape[0]))
    x = torch.zeros(3, 3, 8, 8)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    together = m(x, None, ["a", "b", "c"])
    assert torch.rand(1) == before  # the caller's random state is left alone
    alone = m(x[1:2], None, ["b"])
    assert together[1].item() == alone[0].item()
    assert len(set(together.tolist())) == 3
    assert image_seed(7, "b", "fake") == image_seed(7, "b", "fake") != image_seed(8, "b", "fake")


def test_metric_names_are_pyiqa_variants_with_directions():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    from ggt_ir.eval.metrics import SPECS

    for name, spec in SPECS.items():  # our table agrees with pyiqa's on mode and direction
        cfg = DEFAULT_CONFIGS[name]
        assert (spec.mode, spec.lower_better) == (cfg["metric_mode"], cfg.get("lower_better", False)), name
    assert get_spec("lpips").lower_better and get_spec("niqe").lower_better
    assert not get_spec("musiq").lower_better and get_spec("maniqa-pipal").name == "maniqa-pipal"
    assert get_spec("maniqa").note and get_spec("maniqa-pipal").random
    assert get_spec("piqe").mode == "NR"  # any pyiqa name works through the same registry
    with pytest.raises(KeyError, match="maniqa"):
        get_spec("maniqa_pipal")
    with pytest.raises(KeyError, match="unknown option"):
        MetricSuite({"psnr": {"test_y": True}})


def test_metric_modules_do_not_import_pyiqa():
    import pkgutil
    import subprocess
    import sys

    import ggt_ir.eval

    modules = [f"ggt_ir.eval.{m.name}" for m in pkgutil.iter_modules(ggt_ir.eval.__path__)]  # every eval module
    assert {"ggt_ir.eval.metrics", "ggt_ir.eval.loop", "ggt_ir.eval.cli", "ggt_ir.eval.table"} <= set(modules)
    code = f"import sys, {', '.join(modules)}; print([m for m in ('pyiqa', 'basicsr') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trainer_validation_and_eval_use_one_psnr_ssim(photo_pairs):
    """The trainer's call (positional crop_border, test_y_channel; BasicSR convention) and the eval suite's
    `convention: basicsr` are the same code, so a run's val/psnr and `ggt-ir eval` agree."""
    from ggt_ir.eval.psnr_ssim import METRIC_FUNCTIONS

    pred = torch.cat([_t(lq) for _, lq, _ in photo_pairs[:4]])
    ref = torch.cat([_t(gt) for _, _, gt in photo_pairs[:4]])
    suite = MetricSuite({"psnr": {"convention": "basicsr", "crop_border": 4},
                         "ssim": {"convention": "basicsr", "test_y_channel": False}})
    ours = suite.score(pred, ref, ["a", "b", "c", "d"])
    assert ours["psnr"] == METRIC_FUNCTIONS["psnr"](pred, ref, 4, True).tolist()
    assert ours["ssim"] == METRIC_FUNCTIONS["ssim"](pred, ref, 0, False).tolist()
    with pytest.raises(ValueError, match="shapes differ"):
        METRIC_FUNCTIONS["psnr"](pred, ref[..., :-1], 0, True)
