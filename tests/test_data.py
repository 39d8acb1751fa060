"""Pairing in several layouts, paired augmentation, the resumable sampler, the demo set."""
import numpy as np
import pytest
import torch

from ggt_ir.data.pairing import find_pairs, pairs_from_two_folders
from ggt_ir.data.paired_folder import PairedFolderDataset
from ggt_ir.utils.image_io import read_image
from ggt_ir.data.sampler import ResumableBatchSampler
from ggt_ir.data.transforms import paired_flip_rot, paired_random_crop


def _png(path, h=8, w=8, value=0):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def test_find_pairs_in_ggt_layout_variants(tmp_path):
    # variant 1: split/category/{LQ,GT}; variant 2: {input,target}/category with a different extension
    _png(tmp_path / "a/train/Rain/LQ/x1.png")
    _png(tmp_path / "a/train/Rain/GT/x1.png")
    _png(tmp_path / "a/test/low_light/lq/x2.png")
    _png(tmp_path / "a/test/low_light/gt/x2.jpg")
    _png(tmp_path / "a/train/Rain/LQ/orphan.png")
    r = find_pairs(tmp_path / "a")
    got = {(p.key, p.category, p.split) for p in r.pairs}
    assert got == {("train/Rain/x1", "rain", "train"), ("test/low_light/x2", "low-light", "test")}
    assert [f.name for f, _ in r.unpaired] == ["orphan.png"]
    assert "no HQ partner" in r.unpaired[0][1]

    _png(tmp_path / "b/input/OldPhoto/y.png")
    _png(tmp_path / "b/target/OldPhoto/y.webp")
    r = find_pairs(tmp_path / "b")
    assert [(p.key, p.category) for p in r.pairs] == [("OldPhoto/y", "old-photo")]


def test_two_folder_pairing_reports_unpaired(tmp_path):
    _png(tmp_path / "lq/a.png"), _png(tmp_path / "gt/a.png"), _png(tmp_path / "gt/b.png")
    r = pairs_from_two_folders(tmp_path / "lq", tmp_path / "gt")
    assert [p.key for p in r.pairs] == ["a"]
    assert r.unpaired[0][0].name == "b.png" and "no LQ partner" in r.unpaired[0][1]


def test_paired_crop_is_the_same_window_at_any_scale():
    rng = np.random.default_rng(0)
    gt = rng.random((40, 48, 3)).astype(np.float32)

    def down(x):  # scale 2: an LQ pixel is the mean of its 2x2 GT block (commutes with flips/rotations)
        return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, 3).mean((1, 3))

    lq = down(gt)
    for seed in range(5):
        lq_c, gt_c = paired_random_crop(lq, gt, 16, 2, np.random.default_rng(seed))
        assert lq_c.shape == (8, 8, 3) and gt_c.shape == (16, 16, 3)
        np.testing.assert_allclose(lq_c, down(gt_c), atol=1e-6)
        lq_f, gt_f = paired_flip_rot(lq_c, gt_c, True, True, np.random.default_rng(seed))
        np.testing.assert_allclose(lq_f, down(np.ascontiguousarray(gt_f)), atol=1e-6)


def test_size_mismatch_names_both_files(tmp_path):
    _png(tmp_path / "lq/a.png", 8, 8), _png(tmp_path / "gt/a.png", 8, 10)
    ds = PairedFolderDataset(PairedFolderDataset.Options(dataroot_lq=str(tmp_path / "lq"),
                                                         dataroot_gt=str(tmp_path / "gt")))
    with pytest.raises(ValueError) as e:
        ds[0]
    assert "lq/a.png" in str(e.value) and "gt/a.png" in str(e.value)


def test_corrupt_image_error_names_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(OSError, match="bad.png"):
        read_image(bad)


def test_sampler_ranks_are_disjoint_and_resume_continues_exactly():
    full = [ResumableBatchSampler(22, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    it0, it1 = iter(full[0]), iter(full[1])
    epoch0 = [next(it0) for _ in range(full[0].batches_per_epoch)]
    epoch0_r1 = [next(it1) for _ in range(full[1].batches_per_epoch)]
    idx0 = {i for b in epoch0 for i, _ in b}
    idx1 = {i for b in epoch0_r1 for i, _ in b}
    assert not idx0 & idx1 and len(idx0) == len(idx1) == 10  # 22 // 2 ranks // batch 2 * 2
    # a sampler started at position 7 yields exactly what the uninterrupted one yields from 7 on
    straight = iter(ResumableBatchSampler(22, 2, seed=1, rank=0, world_size=2))
    seq = [next(straight) for _ in range(12)]
    resumed = iter(ResumableBatchSampler(22, 2, seed=1, rank=0, world_size=2, start=7))
    assert [next(resumed) for _ in range(5)] == seq[7:]


def test_sampler_refuses_too_little_data():
    with pytest.raises(ValueError, match="batch_size_per_gpu"):
        ResumableBatchSampler(3, 2, seed=0, world_size=2)


def test_demo_dataset_layout_and_loader(demo_root):
    ds = PairedFolderDataset(PairedFolderDataset.Options(dataroot=str(demo_root), split="train", gt_size=16,
                                                         batch_size_per_gpu=3, num_worker_per_gpu=0))
    assert len(ds) == 12 and {p.category for p in ds.pairs} == {
        "general", "rain", "haze", "snow", "low-light", "old-photo"}
    batch = next(ds.train_loader(seed=0, rank=0, world_size=1, start_iter=0))
    assert batch["lq"].shape == (3, 3, 16, 16) and batch["gt"].dtype == torch.float32
    assert 0 <= batch["lq"].min() and batch["lq"].max() <= 1 and len(batch["key"]) == 3
    test = PairedFolderDataset(PairedFolderDataset.Options(dataroot=str(demo_root), split="test"))
    assert len(test) == 6
    # the degradation is real: LQ differs from GT
    s = test[0]
    assert (s["lq"] - s["gt"]).abs().mean() > 0.01
