"""The metric protocol recorded in every summary, the GT-side cache (same numbers, cold or warm, as without
it), fid as a set-level metric, and fair evaluation of stochastic restorers (per-image seeds, N samples)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ggt_ir.eval.metrics import MetricSuite, protocol_is_current
from ggt_ir.eval.reference_cache import ReferenceCache
from ggt_ir.testing.weights import write_random_weights
from ggt_ir.utils.fs import sha256_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random lpips / dists / fid (Inception) weights in the offline layout."""
    import pyiqa.archs.inception as inc

    wd = tmp_path_factory.mktemp("weights")
    for m in ("lpips", "dists"):
        write_random_weights(m, wd)
    saved = inc.load_pretrained_network
    inc.load_pretrained_network = lambda *a, **k: None  # build the FID Inception without its weights
    try:
        torch.manual_seed(0)
        net = inc.fid_inception_v3()
    finally:
        inc.load_pretrained_network = saved
    (wd / "pyiqa").mkdir(exist_ok=True)
    torch.save(net.state_dict(), wd / "pyiqa" / "pt_inception-2015-12-05-6726825d.pth")
    return wd


def _images(n: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, ref) 8-bit-valued images: smooth random GTs and noisy outputs."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=size,
                                          mode="bicubic").clamp(0, 1)
    pred = (ref + 0.08 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    q = lambda t: (t * 255).round() / 255  # noqa: E731
    return q(pred), q(ref)


def test_cached_reference_features_give_the_same_scores(weights, tmp_path):
    """lpips and dists through the cache (cold: computed and stored; warm: read back) equal pyiqa's own call."""
    pred, ref = _images(3)
    ids = [f"gt{i}" for i in range(3)]
    plain = MetricSuite(["lpips", "dists"], weights_dir=weights, strict=True).score(pred, ref, ids)
    cache = ReferenceCache(tmp_path / "cache")
    suite = MetricSuite(["lpips", "dists"], weights_dir=weights, strict=True, cache=cache)
    cold = suite.score(pred, ref, ids, ref_ids=ids)
    assert cache.stats["feature_misses"] == 6 and cache.stats["feature_hits"] == 0
    warm = suite.score(pred, ref, ids, ref_ids=ids)
    assert cache.stats["feature_hits"] == 6
    for k in ("lpips", "dists"):
        np.testing.assert_allclose(cold[k], plain[k], rtol=1e-6, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(warm[k], plain[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # another method on the same GT: the GT side is read, not recomputed
    other = _images(3, seed=1)[0]
    before = cache.stats["feature_hits"]
    np.testing.assert_allclose(suite.score(other, ref, ids, ref_ids=ids)["dists"],
                               MetricSuite(["dists"], weights_dir=weights).score(other, ref, ids)["dists"], rtol=1e-6)
    assert cache.stats["feature_hits"] == before + 6
    # a different weight file is a different variant: nothing stale is read
    lin = weights / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    backup = lin.read_bytes()
    try:
        sd = torch.load(lin)
        torch.save({k: v * 2 for k, v in sd.items()}, lin)
        changed = MetricSuite(["lpips"], weights_dir=weights, cache=cache)
        assert changed.metrics["lpips"].features_variant() != suite.metrics["lpips"].features_variant()
    finally:
        lin.write_bytes(backup)


def test_fid_is_a_set_metric_equal_to_pyiqa(weights, tmp_path):
    """Per-image features equal pyiqa's folder features ('clean' mode); the distance equals pyiqa's
    frechet_distance (scipy sqrtm), singular covariances included."""
    import contextlib
    import io

    from pyiqa.archs.fid_arch import frechet_distance, get_folder_features

    from ggt_ir.eval.metrics import FolderMetric
    from ggt_ir.utils.image_io import save_png, tensor_to_uint8

    pred, ref = _images(6, size=40)
    for i, img in enumerate(ref):
        save_png(tensor_to_uint8(img), tmp_path / "gt" / f"{i}.png")
    cache = ReferenceCache(tmp_path / "cache")
    suite = MetricSuite(["psnr", "fid"], weights_dir=weights, strict=True, cache=cache)
    assert suite.folder() == ["fid"] and "fid" not in suite.score(pred, ref, list("abcdef"))
    model = suite.metrics["fid"]._net.net.model
    theirs = get_folder_features(str(tmp_path / "gt"), model, num_workers=0, batch_size=8, device=torch.device("cpu"),
                                 mode="clean", verbose=False)
    ids = [f"g{i}" for i in range(6)]
    for _ in range(2):  # cold, then warm cache
        _, gt_feats = suite.folder_features(pred, ref, ids)["fid"]
        np.testing.assert_allclose(np.stack(gt_feats), theirs, rtol=1e-5, atol=1e-6)
    assert cache.stats["feature_hits"] == 6
    rng = np.random.default_rng(0)
    for n1, n2, d in ((6, 6, 256), (5, 9, 64), (300, 300, 64)):  # singular (n < d) and not
        a, b = rng.random((n1, d)).astype(np.float32), (rng.random((n2, d)) * 0.8 + 0.1).astype(np.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            want = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert FolderMetric.distance(list(a), list(b)) == pytest.approx(float(want), rel=1e-6)
    assert FolderMetric.distance([a[0]], list(b)) is None
    v = suite.variants()["fid"]
    assert v["scope"] == "set" and v["lower_better"] and v["options"]["mode"] == "clean"
    with pytest.raises(KeyError, match="folder"):
        MetricSuite(["sfid"])


def test_protocol_block_names_arguments_weights_and_versions(weights, tmp_path):
    suite = MetricSuite({"psnr": {}, "ssim": {}, "psnr_rgb": {"type": "psnr", "test_y_channel": False},
                         "ssim_b": {"type": "ssim", "convention": "basicsr"}, "lpips": {}},
                        weights_dir=weights, strict=True)
    p = suite.protocol()
    m = p["metrics"]
    assert m["psnr"]["equals"] == "pyiqa.create_metric('psnr', test_y_channel=True, color_space='ycbcr')"
    assert m["ssim"]["equals"] == ("pyiqa.create_metric('ssim', test_y_channel=True, color_space='ycbcr', "
                                   "downsample=False)")
    assert m["psnr_rgb"]["equals"] == "pyiqa.create_metric('psnr', test_y_channel=False)"  # pyiqa's default psnr
    assert m["ssim_b"]["equals"] == "basicsr.metrics.calculate_ssim(crop_border=0, test_y_channel=True)"
    assert m["lpips"]["equals"] == "pyiqa.create_metric('lpips', net='alex', version='0.1')"
    files = {w["file"]: w for w in m["lpips"]["weights"]}
    assert set(files) == {"alexnet-owt-7be5be79.pth", "LPIPS_v0.1_alex-df73285e.pth"}
    for w in files.values():
        assert w["sha256"] == sha256_file(w["path"])
    assert m["psnr"]["weights"] == [] and p["versions"]["pyiqa"] and "torch" in p["environment"]
    assert len({v["sha256"] for v in m.values()}) == 5 and len(p["sha256"]) == 64
    # the same definitions hash the same; a changed argument changes the metric's hash
    again = MetricSuite({"psnr": {}, "lpips": {}}, weights_dir=weights).protocol()["metrics"]
    assert again["psnr"]["sha256"] == m["psnr"]["sha256"] and again["lpips"]["sha256"] == m["lpips"]["sha256"]
    assert MetricSuite({"psnr": {"crop_border": 4}}).protocol()["metrics"]["psnr"]["sha256"] != m["psnr"]["sha256"]
    # still current until a weight file changes
    assert protocol_is_current(p) == (True, "")
    copy = tmp_path / "w"
    shutil.copytree(weights, copy)
    p2 = MetricSuite(["lpips"], weights_dir=copy).protocol()
    (copy / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth").write_bytes(b"changed")
    ok, why = protocol_is_current(p2)
    assert not ok and "LPIPS_v0.1_alex-df73285e.pth" in why


def _eval_options(tmp: Path, demo_root: Path, weights: Path, name: str, restored, **eval_extra) -> Path:
    opt = {"name": name, "results_root": str(tmp / "results"), "restored": str(restored),
           "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
           "metrics": ["psnr", "ssim", "lpips", "dists", "fid"],
           "eval": {"batch_size": 4, "num_grid": 2, "grid_size": 32, "pbar": False, "weights_dir": str(weights),
                    "strict": True, **eval_extra}}
    p = tmp / f"{name}.yml"
    p.write_text(yaml.safe_dump(opt))
    return p


def test_n_methods_on_one_set_share_the_gt_work_and_match_uncached(weights, demo_root, tmp_path):
    """Two restored folders scored one after the other: the second reads the decoded GT and the reference
    features back; every number equals an evaluation without the cache; the summary carries the protocol."""
    from ggt_ir.eval.loop import run_evaluation
    from ggt_ir.eval.options import load_eval_options
    from ggt_ir.utils.image_io import read_image, save_png, tensor_to_uint8, to_tensor

    methods = {}
    for m, fn in (("blurry", lambda x: torch.nn.functional.avg_pool2d(x, 3, 1, 1)), ("dark", lambda x: x * 0.8)):
        for gt in sorted(demo_root.glob("test/*/GT/*.png")):
            out = fn(to_tensor(read_image(gt))[None])[0]
            save_png(tensor_to_uint8(out), tmp_path / m / gt.name)
        methods[m] = tmp_path / m
    summaries = {}
    for m, folder in methods.items():
        summaries[m] = run_evaluation(load_eval_options(_eval_options(tmp_path, demo_root, weights, m, folder)))
    first, second = summaries["blurry"]["cache"], summaries["dark"]["cache"]
    assert first["gt_misses"] == 6 and first["feature_misses"] == 18  # 6 GTs x (lpips, dists, fid)
    assert second["gt_hits"] == 6 and second["feature_hits"] == 18 and second["feature_misses"] == 0
    for m, folder in methods.items():
        plain = run_evaluation(load_eval_options(_eval_options(tmp_path, demo_root, weights, f"{m}_plain", folder,
                                                               cache=False)))
        for k in ("psnr", "ssim", "lpips", "dists", "fid"):
            assert summaries[m]["sets"]["test"]["means"][k] == pytest.approx(plain["sets"]["test"]["means"][k],
                                                                           rel=1e-6), (m, k)
    s = summaries["dark"]
    assert s["metrics"]["fid"]["scope"] == "set" and s["sets"]["test"]["per_category"]["rain"]["fid"] is None
    written = json.loads((tmp_path / "results" / "dark" / "summary.json").read_text())
    assert written["protocol"]["sha256"] == s["cell"]["protocol_sha256"]
    assert set(written["protocol"]["metrics"]) == {"psnr", "ssim", "lpips", "dists", "fid"}
    assert written["cell"]["weights_sha256"] and written["cell"]["data_sha256"]["test"]
    assert "_folder_features" not in (tmp_path / "results" / "dark" / "per_image.csv").read_text()


class _NoisyRestorer:
    """A stochastic restorer stand-in: the output depends on the seed the loader derives per image."""

    def __init__(self):
        from ggt_ir.inference.loader import SEED_RULE

        self.info = {"kind": "model", "network_g": {"type": "Noisy"}, "stochastic": True,
                     "seeding": {"base_seed": 3, "per_image": SEED_RULE}}

    def restore(self, lq, sample):
        from ggt_ir.inference.loader import sample_seeds

        seeds = sample_seeds(sample, 3)
        noise = torch.stack([torch.rand(lq.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
        return (lq + 0.1 * noise).clamp(0, 1)


def test_stochastic_restorers_get_per_image_seeds_and_n_samples(demo_root, tmp_path, monkeypatch):
    from ggt_ir.eval import loop
    from ggt_ir.eval.options import load_eval_options
    from ggt_ir.eval.sources import RestorerSource
    from ggt_ir.inference.loader import sample_seeds

    a = sample_seeds([{"key": "test/rain/x"}, {"key": "test/haze/y"}], 3)
    assert a == sample_seeds([{"key": "test/rain/x"}], 3) + sample_seeds([{"key": "test/haze/y"}], 3)  # not the batch
    assert a[0] != sample_seeds([{"key": "test/rain/x", "sample_index": 1}], 3)[0] != sample_seeds(
        [{"key": "test/rain/x"}], 4)[0]
    monkeypatch.setattr(loop, "open_source", lambda opt, ds, dev: RestorerSource(_NoisyRestorer(), opt.out_dir / "images"))
    opt = {"name": "noisy", "results_root": str(tmp_path / "results"), "model": {"network_g": {"type": "SwinIR"}},
           "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
           "metrics": ["psnr", "ssim"], "eval": {"num_samples": 3, "pbar": False, "num_grid": 0}}
    p = tmp_path / "noisy.yml"
    p.write_text(yaml.safe_dump(opt))
    s = loop.run_evaluation(load_eval_options(p))
    stats = s["sets"]["test"]["samples"]
    assert stats["num_samples"] == 3 and len(stats["per_sample"]) == 3
    per = [x["psnr"] for x in stats["per_sample"]]
    assert len(set(per)) == 3 and stats["std"]["psnr"] == pytest.approx(np.std(per, ddof=1))
    assert s["sets"]["test"]["means"]["psnr"] == pytest.approx(np.mean(per))
    assert s["source"]["seeding"]["base_seed"] == 3 and s["num_samples"] == 3
    assert (tmp_path / "results" / "noisy" / "images" / "sample2" / "test").is_dir()
    # the same seeds give the same numbers again
    assert loop.run_evaluation(load_eval_options(p))["sets"]["test"]["samples"]["per_sample"] == stats["per_sample"]
    # a deterministic source cannot be sampled several times
    opt.update(model=None, restored="input")
    p.write_text(yaml.safe_dump(opt))
    monkeypatch.undo()
    with pytest.raises(loop.EvalError, match="num_samples"):
        loop.run_evaluation(load_eval_options(p))


def test_sampler_networks_are_seeded_per_image_and_record_tiling():
    from ggt_ir.inference.loader import PixelRestorer

    class Sampler(torch.nn.Module):
        def forward(self, x):
            return x

        def restore(self, x):
            return x * 0 + torch.rand(x.shape[0], 1, 1, 1)

    r = PixelRestorer(Sampler(), torch.device("cpu"), {"kind": "model"}, tile=0, seed=5)
    lq = torch.rand(2, 3, 8, 8)
    both = r.restore(lq, [{"key": "a"}, {"key": "b"}])
    assert torch.equal(both[1], r.restore(lq[1:], [{"key": "b"}])[0])
    assert not torch.equal(both[0], both[1])
    assert r.info["stochastic"] and r.info["seeding"]["base_seed"] == 5
    assert {"tile", "tile_overlap", "self_ensemble"} <= set(r.info)


def test_reference_cache_follows_the_gt_files_not_their_names(weights, demo_root, tmp_path):
    """The cache is keyed by each GT file's sha256: rewriting one GT image (same name, new pixels) recomputes
    exactly that image's GT side, and a truncated cache entry is decoded again; the scores always equal an
    evaluation without the cache."""
    from ggt_ir.eval.loop import run_evaluation
    from ggt_ir.eval.options import load_eval_options
    from ggt_ir.utils.image_io import read_image, save_png, tensor_to_uint8, to_tensor

    data, restored = tmp_path / "data", tmp_path / "dark"
    shutil.copytree(demo_root, data)
    for gt in sorted(data.glob("test/*/GT/*.png")):  # a restored folder (GT images are decoded from the cache)
        save_png(tensor_to_uint8(to_tensor(read_image(gt)) * 0.8), restored / gt.name)

    def evaluate(name: str, **extra) -> dict:
        opt = {"name": name, "results_root": str(tmp_path / "results"), "restored": str(restored),
               "datasets": {"test": {"type": "PairedFolder", "dataroot": str(data), "split": "test"}},
               "metrics": ["psnr", "lpips"],
               "eval": {"batch_size": 4, "num_grid": 0, "pbar": False, "weights_dir": str(weights), "strict": True,
                        "cache_dir": str(tmp_path / "cache"), **extra}}
        p = tmp_path / f"{name}.yml"
        p.write_text(yaml.safe_dump(opt))
        return run_evaluation(load_eval_options(p))

    first = evaluate("a")
    assert first["cache"]["gt_misses"] == 6 and first["cache"]["feature_misses"] == 6
    gt = sorted(data.glob("test/*/GT/*.png"))[0]
    save_png(tensor_to_uint8(to_tensor(read_image(gt)) * 0.5), gt)  # same path, other content
    second = evaluate("b")
    assert (second["cache"]["gt_misses"], second["cache"]["gt_hits"]) == (1, 5)
    assert (second["cache"]["feature_misses"], second["cache"]["feature_hits"]) == (1, 5)
    plain = evaluate("b_plain", cache=False)
    assert plain["cache"] is None
    for k in ("psnr", "lpips"):
        assert second["sets"]["test"]["means"][k] == pytest.approx(plain["sets"]["test"]["means"][k], rel=1e-6)
        assert second["sets"]["test"]["means"][k] != pytest.approx(first["sets"]["test"]["means"][k], rel=1e-6)
    entry = tmp_path / "cache" / "gt" / f"{sha256_file(gt)}.npy"
    entry.write_bytes(entry.read_bytes()[:40])  # a truncated entry, as a killed writer without atomic_write leaves
    third = evaluate("c")
    assert third["cache"]["gt_misses"] == 1 and third["cache"]["gt_hits"] == 5
    assert third["sets"]["test"]["means"]["psnr"] == pytest.approx(plain["sets"]["test"]["means"]["psnr"], rel=1e-6)
