"""The synthetic (Real-ESRGAN-style) arm and the LQ-only folder dataset."""
import numpy as np
import pytest
import torch

from ggt_ir.data.lq_folder import LQFolderDataset
from ggt_ir.data.synthetic import DegradationOptions, SyntheticDegradationDataset, degrade, random_kernel, seeded
from shard_fixtures import image, write

S = SyntheticDegradationDataset


@pytest.fixture(autouse=True)
def _one_thread():
    """Per-sample degradation runs in data workers with one torch thread; do the same here (small tensors, and a
    busy shared machine, make 2 OpenMP threads 10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hq_root(tmp_path_factory):
    """HQ photos (skimage) in two category folders."""
    import cv2
    import skimage.data

    root = tmp_path_factory.mktemp("hq")
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        img = getattr(skimage.data, name)()[:, :, :3]
        img = cv2.resize(img[:256, :256], (96, 96), interpolation=cv2.INTER_AREA)
        write(root / ("rain" if i % 2 else "snow") / f"{name}.png", img)
    return root


def _grad_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())


def test_sizes_range_quantization_and_categories(hq_root):
    for scale, gt_size in ((1, 64), (4, 64)):
        ds = S(S.Options(dataroot_gt=str(hq_root), gt_size=gt_size, scale=scale))
        assert len(ds) == 4 and {c for _, _, c in ds.items} == {"rain", "snow"}
        s = ds[(1, 123)]
        assert s["gt"].shape == (3, 64, 64) and s["lq"].shape == (3, 64 // scale, 64 // scale)
        assert s["lq"].dtype == torch.float32 and 0 <= s["lq"].min() and s["lq"].max() <= 1
        torch.testing.assert_close(s["lq"] * 255, (s["lq"] * 255).round())  # 8-bit values
    val = S(S.Options(dataroot_gt=str(hq_root), scale=2))[0]  # validation: whole image, fixed seed
    assert val["gt"].shape == (3, 96, 96) and val["lq"].shape == (3, 48, 48)


def test_deterministic_per_sample_and_exact_resume(hq_root):
    ds = S(S.Options(dataroot_gt=str(hq_root), gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0))
    a, b, c = ds[(2, 7)], ds[(2, 7)], ds[(2, 8)]
    assert torch.equal(a["lq"], b["lq"]) and not torch.equal(a["lq"], c["lq"])
    assert torch.equal(ds[3]["lq"], ds[3]["lq"])  # validation samples are fixed too
    # the global generators the basicsr functions draw from are left as they were
    torch.manual_seed(5)
    expect = torch.rand(3)
    torch.manual_seed(5)
    ds[(0, 1)]
    assert torch.equal(torch.rand(3), expect)
    straight = ds.train_loader(seed=3, rank=0, world_size=1, start_iter=0)
    seq = [next(straight) for _ in range(4)]
    resumed = ds.train_loader(seed=3, rank=0, world_size=1, start_iter=2)
    for want in seq[2:]:
        got = next(resumed)
        assert got["key"] == want["key"] and torch.equal(got["lq"], want["lq"])


def test_visible_degradation_statistics(hq_root):
    ds = S(S.Options(dataroot_gt=str(hq_root), gt_size=64))
    psnr, diff = [], []
    for i in range(24):
        s = ds[(i % 4, 1000 + i)]
        mse = (s["lq"] - s["gt"]).pow(2).mean().item()
        psnr.append(10 * np.log10(1 / max(mse, 1e-10)))
        diff.append((s["lq"] - s["gt"]).abs().mean().item())
    assert 14 < np.mean(psnr) < 32, np.mean(psnr)  # clearly degraded, still the same picture
    assert min(diff) > 0.005 and np.std(psnr) > 1.0  # every sample degraded, by varying amounts

    gt = torch.from_numpy(image(3, 64, 64)).permute(2, 0, 1)[None].float() / 255

    def one(**switches):
        d = DegradationOptions(**{"use_blur": False, "use_resize": False, "use_noise": False, "use_jpeg": False,
                                  **switches})
        outs = []
        for seed in range(8):
            with seeded(seed):
                outs.append(degrade(gt, d))
        return outs

    # blur only: less gradient energy on the whole (sinc kernels ring, and sigma can be as small as 0.2)
    ratios = [_grad_energy(o) / _grad_energy(gt) for o in one(use_blur=True)]
    assert np.median(ratios) < 0.8 and sum(r < 1 for r in ratios) >= 6, ratios
    # Gaussian noise only, fixed sigma 10, colour: residual std is 10/255 (two stages add up: sqrt(2) x)
    outs = one(use_noise=True, gaussian_noise_prob=1.0, gaussian_noise_prob2=1.0, noise_range=[10.0, 10.0 + 1e-6],
               noise_range2=[10.0, 10.0 + 1e-6], gray_noise_prob=0.0, gray_noise_prob2=0.0)
    std = np.mean([(o - gt).std().item() for o in outs])
    assert abs(std - np.sqrt(2) * 10 / 255) < 0.2 * np.sqrt(2) * 10 / 255, std * 255
    # JPEG only at low quality: 8x8 block edges stand out
    outs = one(use_jpeg=True, jpeg_range=[10.0, 12.0], jpeg_range2=[10.0, 12.0], second_order=False)
    for o in outs:
        d = (o[0, :, :, 1:] - o[0, :, :, :-1]).abs().mean((0, 1))  # mean jump between columns c and c+1
        at_edges = d[7::8].mean()
        inside = torch.cat([d[k::8] for k in range(7)]).mean()
        assert at_edges > 1.3 * inside
    # resize only: no blur kernel, yet detail lost after down-and-up sampling on average
    outs = one(use_resize=True, resize_prob=[0.0, 1.0, 0.0], resize_range=[0.3, 0.5], second_order=False)
    assert np.mean([_grad_energy(o) for o in outs]) < _grad_energy(gt)


def test_kernels():
    d = DegradationOptions()
    with seeded(0):
        ks = [random_kernel(d, 1 + i % 2) for i in range(50)]
    assert all(k.shape == (21, 21) and abs(k.sum() - 1) < 1e-5 for k in ks)
    assert len({float(k.max()) for k in ks}) > 40  # varied


def test_options_via_config(hq_root, tmp_path, demo_root):
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options
    from helpers import tiny_options, write_options

    opt = tiny_options(demo_root, tmp_path / "exp")
    opt["datasets"]["train"] = {"type": "SyntheticDegradation", "dataroot_gt": str(hq_root), "gt_size": 32,
                                "degradation": {"noise_range": [1, 5], "second_order": False}}
    opt["datasets"]["val_real"] = {"type": "LQFolder", "dataroot": str(hq_root)}
    o = load_options(write_options(tmp_path / "o.yml", opt))
    assert o.datasets["train"].degradation.noise_range == [1.0, 5.0]
    assert o.datasets["train"].degradation.jpeg_range == [30.0, 95.0]
    opt["datasets"]["train"]["degradation"]["kernel_prob"] = [1.0]
    with pytest.raises(OptionsError, match="kernel_prob needs one probability per kernel_list entry"):
        load_options(write_options(tmp_path / "o2.yml", opt))
    opt["datasets"]["train"]["degradation"] = {"blur_kernel_size": 20}  # the check the device degradation shares
    with pytest.raises(OptionsError, match=r"o2b.yml: datasets.train.degradation.blur_kernel_size must be odd"):
        load_options(write_options(tmp_path / "o2b.yml", opt))
    opt["datasets"]["train"]["degradation"] = {"jpeg_rnge": [1, 2]}
    with pytest.raises(OptionsError, match="jpeg_range"):
        load_options(write_options(tmp_path / "o3.yml", opt))


def test_lq_folder(tmp_path):
    write(tmp_path / "RealLQ/social_media/a.jpg", image(1, 24, 40))
    write(tmp_path / "RealLQ/old_photos/b.png", image(2))
    (tmp_path / "RealLQ/old_photos/b.txt").write_text("an old family photo\n")
    write(tmp_path / "RealLQ/c.png", image(3))
    ds = LQFolderDataset(LQFolderDataset.Options(dataroot=str(tmp_path / "RealLQ"), prompt="restore"))
    assert ds.categories == ["RealLQ", "old_photos", "social_media"]
    by_key = {ds[i]["key"]: ds[i] for i in range(len(ds))}
    assert set(by_key) == {"social_media/a", "old_photos/b", "c"}
    s = by_key["social_media/a"]
    assert "gt" not in s and s["lq"].shape == (3, 24, 40) and s["category"] == "social_media" and s["prompt"] == "restore"
    assert by_key["old_photos/b"]["prompt"] == "an old family photo"
    only = LQFolderDataset(LQFolderDataset.Options(dataroot=str(tmp_path / "RealLQ"), categories=["old_photos"]))
    assert len(only) == 1
    with pytest.raises(TypeError, match="no ground truth"):
        ds.train_loader(0, 0, 1, 0)
