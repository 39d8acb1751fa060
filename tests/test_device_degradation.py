"""On-the-fly Real-ESRGAN degradation on the training device: kernels, filters, USM and JPEG against basicsr,
the pipeline order against a replay of Real-ESRGAN's ``feed_data`` with basicsr's functions, the counter-based
noise (statistics, exact Poisson law), determinism, shapes, the real/synthetic mix and the pair pool."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ggt_ir._compat import patch_basicsr_imports
from ggt_ir.data import device_degradation as dd
from ggt_ir.data.device_degradation import DeviceDegradation, DeviceDegradationOptions

patch_basicsr_imports()


def hq_batch(b=2, size=64, seed=0):
    """Smooth random images with edges (a degraded copy must be measurably blurrier)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(b, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic",
                      align_corners=False)
    x[..., size // 4 : size // 2, :] += 0.3
    return x.clamp(0, 1)


# ---------------------------------------------------------------------------------------------- parity pieces
def test_kernels_match_basicsr_formulas():
    from basicsr.data import degradations as ref

    rng = np.random.default_rng(0)
    for _ in range(5):
        k = int(rng.choice([7, 9, 13, 21]))
        sx, sy, th = rng.uniform(0.2, 3), rng.uniform(0.2, 3), rng.uniform(-math.pi, math.pi)
        beta = rng.uniform(0.5, 4)
        pairs = [
            (dd.bivariate_gaussian(k, sx, sy, th), ref.bivariate_Gaussian(k, sx, sy, th, isotropic=False)),
            (dd.bivariate_gaussian(k, sx, sy, th, isotropic=True), ref.bivariate_Gaussian(k, sx, sy, th)),
            (dd.bivariate_generalized_gaussian(k, sx, sy, th, beta),
             ref.bivariate_generalized_Gaussian(k, sx, sy, th, beta, isotropic=False)),
            (dd.bivariate_plateau(k, sx, sy, th, beta), ref.bivariate_plateau(k, sx, sy, th, beta, isotropic=False)),
            (dd.circular_lowpass_kernel(rng.uniform(math.pi / 5, math.pi), k, pad_to=21), None),
        ]
        omega = rng.uniform(math.pi / 5, math.pi)
        pairs[-1] = (dd.circular_lowpass_kernel(omega, k, pad_to=21), ref.circular_lowpass_kernel(omega, k, pad_to=21))
        for ours, theirs in pairs:
            assert ours.shape == theirs.shape
            assert np.allclose(ours.numpy(), theirs, atol=1e-12), (k, sx, sy, th, beta)


def test_sampled_kernels_are_normalised_and_centred():
    g = torch.Generator().manual_seed(0)
    d = DeviceDegradationOptions()
    for stage in (1, 2):
        for _ in range(20):
            k = dd.sample_kernel(g, d, stage)
            assert k.shape == (21, 21) and k.sum().item() == pytest.approx(1.0, abs=1e-9)
            assert torch.allclose(k, k.flip(0).flip(1), atol=1e-12)  # point-symmetric: correlation = convolution
    pulse_or_sinc = [dd.sample_final_sinc(g, d) for _ in range(50)]
    pulses = sum(int((k == 0).sum() == 21 * 21 - 1) for k in pulse_or_sinc)
    assert 0 < pulses < 50  # final_sinc_prob 0.8


def test_filter2d_matches_basicsr_and_handles_tiny_images():
    from basicsr.utils.img_process_util import filter2D

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 3, 30, 26, generator=g)
    kernels = torch.stack([dd.sample_kernel(g, DeviceDegradationOptions(), 1) for _ in range(3)]).float()
    assert torch.allclose(dd.filter2d(img, kernels), filter2D(img, kernels), atol=1e-6)
    assert torch.allclose(dd.filter2d(img, kernels[:1]), filter2D(img, kernels[:1]), atol=1e-6)
    tiny = torch.rand(3, 3, 6, 7, generator=g)  # smaller than half a 21x21 kernel: basicsr's reflect pad fails
    assert dd.filter2d(tiny, kernels).shape == tiny.shape


def test_usm_sharp_matches_basicsr():
    from basicsr.utils.img_process_util import USMSharp

    img = hq_batch(2, 64)
    assert torch.allclose(dd.usm_sharp(img), USMSharp()(img), atol=1e-5)


def test_jpeg_is_basicsrs_diffjpeg_per_sample():
    from basicsr.utils.diffjpeg import DiffJPEG

    img = hq_batch(2, 48)
    q = torch.tensor([30.0, 90.0])
    ours = DeviceDegradation().jpeg(img, q)
    assert torch.equal(ours, DiffJPEG(differentiable=False)(img, quality=q.clone()))
    assert (ours[0] - img[0]).abs().mean() > (ours[1] - img[1]).abs().mean()  # lower quality, larger error


def test_pipeline_order_replays_realesrgan_feed_data(monkeypatch):
    """Record every operation the pipeline applies (with noise off, the parts basicsr can replay without its
    own randomness), then rebuild the LQ the way RealESRGANModel.feed_data does, with basicsr's filter2D,
    F.interpolate and DiffJPEG, from the recorded kernels, factors, modes and qualities."""
    from basicsr.utils.diffjpeg import DiffJPEG
    from basicsr.utils.img_process_util import USMSharp, filter2D

    calls = []
    real_filter, real_resize = dd.filter2d, dd._resize
    monkeypatch.setattr(dd, "filter2d", lambda img, k: calls.append(("blur", k.clone())) or real_filter(img, k))
    monkeypatch.setattr(dd, "_resize", lambda x, mode, size=None, scale_factor=None: calls.append(
        ("resize", mode, size, scale_factor)) or real_resize(x, mode, size, scale_factor))
    opts = DeviceDegradationOptions(scale=4, use_noise=False, second_blur_prob=0.5)
    deg = DeviceDegradation(opts)
    real_jpeg = deg.jpeg
    deg.jpeg = lambda x, q: calls.append(("jpeg", q.clone())) or real_jpeg(x, q)
    gt = hq_batch(3, 64, seed=1)
    for seed in range(4):
        calls.clear()
        lq = deg({"gt": gt}, seed=seed)["lq"]
        jpeger, ops = DiffJPEG(differentiable=False), iter(calls)
        out = USMSharp()(gt)  # feed_data degrades gt_usm
        op = next(ops)
        assert op[0] == "blur"
        out = filter2D(out, op[1].float())
        op = next(ops)
        assert op[0] == "resize" and op[2] is None  # first stage: a scale factor
        out = F.interpolate(out, scale_factor=op[3], mode=op[1])
        op = next(ops)
        out = jpeger(torch.clamp(out, 0, 1), quality=op[1].float().clone())
        op = next(ops)
        if op[0] == "blur":  # second blur, with probability second_blur_prob
            out = filter2D(out.contiguous(), op[1].float())  # (basicsr's view() needs a contiguous tensor)
            op = next(ops)
        assert op[0] == "resize" and op[3] is None  # second stage: relative to the final size
        lo, hi = opts.resize_range2
        assert op[2][0] == op[2][1] and int(16 * lo) <= op[2][0] <= int(16 * hi)  # int(64 / 4 * s2), s2 in range
        out = F.interpolate(out, size=op[2], mode=op[1])
        op = next(ops)
        out = jpeger(torch.clamp(out, 0, 1), quality=op[1].float().clone())
        op = next(ops)
        if op[0] == "resize":  # resize + sinc, then JPEG
            out = filter2D(F.interpolate(out, size=op[2], mode=op[1]).contiguous(), next(ops)[1].float())
            out = jpeger(torch.clamp(out, 0, 1), quality=next(ops)[1].float().clone())
        else:  # JPEG, then resize + sinc
            out = jpeger(torch.clamp(out, 0, 1), quality=op[1].float().clone())
            op = next(ops)
            out = filter2D(F.interpolate(out, size=op[2], mode=op[1]).contiguous(), next(ops)[1].float())
        assert next(ops, None) is None
        expect = torch.clamp((out * 255.0).round(), 0, 255) / 255.0
        assert expect.shape == lq.shape == (3, 3, 16, 16)
        # identical ops; only float rounding of ours (separable USM) can flip an 8-bit level
        assert (lq - expect).abs().max() <= 1 / 255 + 1e-6 and (lq != expect).float().mean() < 0.01


# ---------------------------------------------------------------------------------------------- counter noise
def test_counter_uniforms_and_normals():
    u = dd.counter_uniform(200_000, (1, 2), "cpu")
    assert 0 < u.min() and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=0.005) and u.var().item() == pytest.approx(1 / 12, abs=0.002)
    assert torch.equal(u, dd.counter_uniform(200_000, (1, 2), "cpu"))  # a pure function of key and index
    assert not torch.equal(u[:1000], dd.counter_uniform(1000, (1, 3), "cpu"))
    assert abs(np.corrcoef(u[:-1].numpy(), u[1:].numpy())[0, 1]) < 0.01  # neighbours are independent
    z = dd.counter_normal((400, 500), (7, 8), "cpu")
    assert z.mean().item() == pytest.approx(0.0, abs=0.01) and z.std().item() == pytest.approx(1.0, abs=0.01)
    assert (z.abs() > 3).float().mean().item() == pytest.approx(0.0027, abs=0.001)


def test_poisson_sampler_follows_the_exact_law():
    from scipy.stats import poisson

    for lam_level, vals in ((3, 256.0), (100, 256.0), (255, 64.0), (0, 256.0)):
        lam = lam_level / 255 * vals
        levels = torch.full((1, 100_000), lam_level)
        counts = dd.poisson_levels(levels, torch.tensor([vals]), (11, 12)).flatten().numpy()
        if lam == 0:
            assert (counts == 0).all()
            continue
        ks = np.arange(int(lam + 10 * math.sqrt(lam) + 10))
        empirical = np.bincount(counts.astype(int), minlength=len(ks))[: len(ks)] / counts.size
        tv = 0.5 * np.abs(empirical - poisson.pmf(ks, lam)).sum()
        assert tv < 0.02, (lam, tv)  # total variation to the exact pmf (sampling error only)


def test_gaussian_and_poisson_noise_strengths():
    img = torch.full((2, 3, 64, 64), 0.5)
    n = dd.gaussian_noise(img, torch.tensor([5.0, 20.0]), torch.tensor([False, True]), (1, 2))
    assert n[0].std().item() == pytest.approx(5 / 255, rel=0.05)
    assert n[1].std().item() == pytest.approx(20 / 255, rel=0.05)
    assert torch.equal(n[1, 0], n[1, 1])  # gray noise: the same in every channel
    p = dd.poisson_noise(img, torch.tensor([1.0, 2.0]), torch.tensor([False, False]), (3, 4))
    # a flat image has one level -> vals 1: Poisson(0.5) - 0.5, times the scale
    assert p[0].mean().item() == pytest.approx(0.0, abs=0.02) and p[0].var().item() == pytest.approx(0.5, rel=0.05)
    assert p[1].std().item() == pytest.approx(2 * p[0].std().item(), rel=0.05)


# ---------------------------------------------------------------------------------------------- the pipeline
@pytest.mark.parametrize("scale", [1, 4])
def test_degradation_is_deterministic_and_shaped(scale):
    gt = hq_batch(3, 64)
    deg = DeviceDegradation(DeviceDegradationOptions(scale=scale))
    a, b = deg({"gt": gt, "key": ["x", "y", "z"]}, seed=5), deg({"gt": gt}, seed=5)
    assert torch.equal(a["lq"], b["lq"]) and a["lq"].shape == (3, 3, 64 // scale, 64 // scale)
    assert a["key"] == ["x", "y", "z"] and torch.equal(a["gt"], gt) and a["synthetic"].all()
    assert torch.equal(a["lq"], (a["lq"] * 255).round() / 255)  # 8-bit levels
    other = deg({"gt": gt}, seed=6)["lq"]
    assert (other - a["lq"]).abs().mean() > 1e-3
    # the internal generator continues its stream; its state round-trips
    state = deg.state_dict()
    c = deg({"gt": gt})["lq"]
    deg.load_state_dict(state)
    assert torch.equal(deg({"gt": gt})["lq"], c)


def test_degradation_statistics():
    """Over many seeds: the LQ keeps the mean brightness and loses high-frequency energy."""
    gt = hq_batch(4, 64, seed=2)
    deg = DeviceDegradation(DeviceDegradationOptions(scale=1, use_noise=False))

    def hf(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()

    means, sharp = [], []
    for seed in range(5):
        lq = deg({"gt": gt}, seed=seed)["lq"]
        means.append(lq.mean().item())
        sharp.append(hf(lq))
    assert np.mean(means) == pytest.approx(gt.mean().item(), abs=0.03)
    assert np.mean(sharp) < hf(gt)
    noisy = DeviceDegradation(DeviceDegradationOptions(scale=1, use_blur=False, use_resize=False, use_jpeg=False,
                                                       usm_sharp_gt=False))
    assert np.mean([hf(noisy({"gt": gt}, seed=s)["lq"]) for s in range(4)]) > hf(gt)  # noise adds energy


def test_everything_off_is_a_plain_resize():
    gt = hq_batch(2, 32)
    opts = DeviceDegradationOptions(scale=2, use_blur=False, use_noise=False, use_jpeg=False, use_resize=False,
                                    usm_sharp_gt=False, second_order=False)
    lq = DeviceDegradation(opts)({"gt": gt}, seed=0)["lq"]
    candidates = [torch.clamp((dd._resize(gt, m, size=(16, 16)) * 255).round(), 0, 255) / 255 for m in dd.RESIZE_MODES]
    assert any(torch.equal(lq, c) for c in candidates)


def test_real_and_synthetic_pairs_mix_by_probability():
    gt = hq_batch(8, 32, seed=3)
    real_lq = torch.rand(8, 3, 32, 32)
    deg = DeviceDegradation(DeviceDegradationOptions(synthetic_prob=0.5))
    out = deg({"gt": gt, "lq": real_lq}, seed=1)
    syn = out["synthetic"]
    assert 0 < syn.sum() < 8
    assert torch.equal(out["lq"][~syn], real_lq[~syn])  # real pairs untouched
    assert all(not torch.equal(out["lq"][i], real_lq[i]) for i in torch.nonzero(syn).flatten())
    none = DeviceDegradation(DeviceDegradationOptions(synthetic_prob=0.0))({"gt": gt, "lq": real_lq}, seed=1)
    assert torch.equal(none["lq"], real_lq) and not none["synthetic"].any()
    with pytest.raises(ValueError, match="synthetic_prob: 1"):
        deg({"gt": gt}, seed=0)
    with pytest.raises(ValueError, match="does not match"):
        deg({"gt": gt, "lq": real_lq[..., :16, :16]}, seed=0)


def test_crop_and_training_pair_pool():
    opts = DeviceDegradationOptions(scale=2, gt_size=32, queue_size=4, use_noise=False)
    deg = DeviceDegradation(opts)
    batches = [hq_batch(2, 48, seed=s) for s in range(3)]
    first = deg({"gt": batches[0], "key": ["a", "b"]}, seed=0)
    assert first["gt"].shape == (2, 3, 32, 32) and first["lq"].shape == (2, 3, 16, 16) and "key" not in first
    # the crop is a window of the input, aligned to the scale
    found = [(t, l) for t in range(0, 17, 2) for l in range(0, 17, 2)
             if torch.equal(batches[0][..., t:t + 32, l:l + 32], first["gt"])]
    assert len(found) == 1
    assert torch.allclose(first["gt_usm"], dd.usm_sharp(first["gt"]))
    deg({"gt": batches[1]}, seed=1)  # the pool (4) is full after two batches of 2
    state = deg.state_dict()
    third = deg({"gt": batches[2]}, seed=2)
    pooled = state["queue_gt"]
    assert all(any(torch.equal(x, p) for p in pooled) for x in third["gt"])  # came out of the pool
    deg.load_state_dict(state)
    assert torch.equal(deg({"gt": batches[2]}, seed=2)["gt"], third["gt"])  # exact resume with the pool
    with pytest.raises(ValueError, match="multiple of the batch size"):
        DeviceDegradation(DeviceDegradationOptions(queue_size=3))({"gt": hq_batch(2, 32)}, seed=0)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="kernel_prob"):
        DeviceDegradation(DeviceDegradationOptions(kernel_prob=[1.0]))
    with pytest.raises(ValueError, match="synthetic_prob"):
        DeviceDegradation(DeviceDegradationOptions(synthetic_prob=1.5))
    with pytest.raises(ValueError, match="multiple of scale"):
        DeviceDegradation(DeviceDegradationOptions(scale=4, gt_size=30))
