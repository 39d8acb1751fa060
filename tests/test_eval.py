"""`ggt-ir eval` end to end: external folders, a trained run, LQ-only sets, errors, 2 processes."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import TINY_SWINIR, launch_two_processes

from ggt_ir.eval.cli import main as eval_main
from ggt_ir.eval.loop import run_evaluation
from ggt_ir.eval.options import load_eval_options
from ggt_ir.eval.sources import EvalError

FAST = {"psnr": {}, "ssim": {}, "entropy": {}}  # weight-free; entropy: a pyiqa NR metric through the registry


def _options(tmp: Path, demo_root: Path, **extra) -> Path:
    opt = {"name": "run", "results_root": str(tmp / "results"),
           "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
           "metrics": FAST, "eval": {"batch_size": 4, "num_grid": 2, "grid_size": 32, "pbar": False}}
    opt.update(extra)
    p = tmp / "eval.yml"
    p.write_text(yaml.safe_dump(opt))
    return p


def _restored_from_gt(demo_root: Path, dst: Path, flat: bool = True) -> list[Path]:
    """A stand-in external method: the GT images, written as a flat folder of <stem>.png."""
    gts = sorted(demo_root.glob("test/*/GT/*.png"))
    for g in gts:
        target = dst / g.name if flat else dst / g.parent.parent.name / g.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(g, target)
    return gts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A trained-run folder as the trainer writes it: options.yml + models/net_g_<iter>.safetensors."""
    import torch

    from ggt_ir.archs import build_network
    from ggt_ir.train.checkpoint import export_generator

    run = tmp_path_factory.mktemp("exp") / "tiny"
    (run / "models").mkdir(parents=True)
    (run / "options.yml").write_text("# command: test\n" + yaml.safe_dump({"name": "tiny", "network_g": TINY_SWINIR}))
    torch.manual_seed(0)
    net = build_network(TINY_SWINIR)
    for it in (2, 4):
        export_generator(run / "models" / f"net_g_{it}", net.state_dict(), net.state_dict(), it, TINY_SWINIR)
    return run


def test_external_folder_mode(tmp_path, demo_root):
    gts = _restored_from_gt(demo_root, tmp_path / "ext")
    p = _options(tmp_path, demo_root, restored=str(tmp_path / "ext"), label={"model": "GT", "data": "none"})
    assert eval_main(["-opt", str(p)]) == 0
    out = tmp_path / "results" / "run"
    s = json.loads((out / "summary.json").read_text())
    test = s["sets"]["test"]
    assert test["num_images"] == len(gts) == 6 and test["paired"] is True
    assert test["means"]["psnr"] == pytest.approx(80.0)  # identical images: 10 log10(1 / 1e-8), pyiqa's eps
    assert test["means"]["ssim"] == pytest.approx(1.0)
    assert set(test["per_category"]) == {"general", "rain", "haze", "snow", "low-light", "old-photo"}
    assert s["metrics"]["psnr"]["options"] == {"test_y_channel": True, "color_space": "ycbcr", "crop_border": 0,
                                                "convention": "pyiqa"}
    assert s["metrics"]["entropy"]["mode"] == "NR" and s["source"]["kind"] == "folder"
    assert len(s["options_sha256"]) == 64 and s["versions"]["torch"] and s["date"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["set"] for r in rows] == ["test"] * 6 and {"image", "category", "psnr", "ssim", "entropy"} <= set(rows[0])
    assert (out / "grids" / "test.png").is_file() and "grids/test.png" in (out / "index.html").read_text()


def test_resolved_options_are_typed_once_and_load_back(tmp_path, demo_root):
    """Eval sets and metrics are typed when the file loads; eval_options.yml loads back to the same."""
    from ggt_ir.data.paired_folder import PairedFolderDataset
    from ggt_ir.eval.metrics import MetricChoice

    p = _options(tmp_path, demo_root, restored="input", metrics={"psnr": {}, "ssim_b": {"type": "ssim", "convention": "basicsr"}})
    opt = load_eval_options(p)
    assert isinstance(opt.datasets["test"], PairedFolderDataset.Options) and opt.datasets["test"].name == "test"
    assert opt.metrics["ssim_b"] == MetricChoice("ssim_b", "ssim", {"convention": "basicsr"})
    run_evaluation(opt)
    again = load_eval_options(opt.out_dir / "eval_options.yml")
    assert again.datasets == opt.datasets and again.metrics == opt.metrics and again.eval == opt.eval


def test_missing_pair_and_size_mismatch_are_clear(tmp_path, demo_root):
    gts = _restored_from_gt(demo_root, tmp_path / "ext", flat=False)  # mirrored tree works too
    (tmp_path / "ext" / gts[0].parent.parent.name / gts[0].name).unlink()
    opt = load_eval_options(_options(tmp_path, demo_root, restored=str(tmp_path / "ext")))
    with pytest.raises(EvalError, match=rf"1 of 6 images have no restored file in .*ext.*{gts[0].stem}"):
        run_evaluation(opt)

    import cv2

    shutil.copy(gts[0], tmp_path / "ext" / gts[0].parent.parent.name / gts[0].name)
    victim = tmp_path / "ext" / gts[1].parent.parent.name / gts[1].name
    img = cv2.imread(str(victim))
    cv2.imwrite(str(victim), np.pad(img, ((0, 2), (0, 3), (0, 0))))  # a few pixels: cropped top-left
    s = run_evaluation(opt)
    assert s["sets"]["test"]["num_images"] == 6
    assert "cropped" in (opt.out_dir / "per_image.csv").read_text()
    cv2.imwrite(str(victim), cv2.resize(img, None, fx=2, fy=2))  # a wrong scale: an error, never a resize
    with pytest.raises(EvalError, match=r"output is 64x64 but the GT is 32x32.*never resized"):
        run_evaluation(opt)


def test_trained_run_and_lq_only_set(tmp_path, demo_root, tiny_run):
    lq_root = tmp_path / "RealLQ"
    for sub, lq in zip(("social", "social", "old"), sorted(demo_root.glob("test/*/LQ/*.png"))[:3]):
        (lq_root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(lq, lq_root / sub / lq.name)
    p = _options(tmp_path, demo_root, model={"run": str(tiny_run), "tile": 24, "tile_overlap": 8})
    cfg = yaml.safe_load(p.read_text())
    cfg["datasets"]["real"] = {"type": "LQFolder", "dataroot": str(lq_root)}
    p.write_text(yaml.safe_dump(cfg))
    assert eval_main(["-opt", str(p), "--name", "tiny"]) == 0
    out = tmp_path / "results" / "tiny"
    s = json.loads((out / "summary.json").read_text())
    src = s["source"]
    assert src["checkpoint"].endswith("net_g_4.safetensors") and src["param_key"] == "params_ema"
    assert len(src["checkpoint_sha256"]) == 64 and len(src["run_options_sha256"]) == 64
    assert src["tile"] == 24 and s["label"]["model"] == "SwinIR"
    real = s["sets"]["real"]
    assert real["paired"] is False and set(real["means"]) == {"entropy"}  # FR metrics need GT
    assert set(real["per_category"]) == {"social", "old"}
    # the outputs were saved as PNG, and the scores are those of the saved files
    saved = sorted((out / "images" / "test").rglob("*.png"))
    assert len(saved) == 6
    from ggt_ir.utils.image_io import read_image, to_tensor
    from ggt_ir.eval.metrics import MetricSuite

    row = next(r for r in csv.DictReader((out / "per_image.csv").open()) if r["set"] == "test")
    split, category, stem = row["image"].split("/")
    pair = demo_root / split / category / "GT" / f"{stem}.png"
    png = out / "images" / "test" / f"{row['image']}.png"
    ref = MetricSuite(["psnr"]).score(to_tensor(read_image(png))[None], to_tensor(read_image(pair))[None], ["x"])
    assert float(row["psnr"]) == pytest.approx(ref["psnr"][0], abs=1e-5)


def test_cli_check_weights_and_list(tmp_path, demo_root, capsys):
    p = _options(tmp_path, demo_root, restored="input", metrics=["psnr", "lpips", "niqe"])
    assert eval_main(["-opt", str(p), "--check-weights", "--weights-dir", str(tmp_path / "w")]) == 1
    out = capsys.readouterr().out
    assert "MISSING  checkpoints/alexnet-owt-7be5be79.pth" in out and "basicsr" in out
    assert eval_main(["--list-metrics"]) == 0 and "maniqa-pipal" in capsys.readouterr().out
    bad = _options(tmp_path, demo_root)  # neither model nor restored
    assert eval_main(["-opt", str(bad)]) == 2


@pytest.mark.slow
def test_two_processes_give_the_same_summary(tmp_path, demo_root, tiny_run):
    p = _options(tmp_path, demo_root, model={"run": str(tiny_run)})
    assert eval_main(["-opt", str(p), "--name", "one"]) == 0
    r = launch_two_processes(["-m", "ggt_ir", "eval", "-opt", str(p), "--name", "two"], timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    one = json.loads((tmp_path / "results" / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "results" / "two" / "summary.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    for name, info in one["sets"].items():
        assert info["num_images"] == two["sets"][name]["num_images"]
        for k, v in info["means"].items():
            assert two["sets"][name]["means"][k] == pytest.approx(v, rel=1e-9, abs=1e-9)
        for c, vals in info["per_category"].items():
            assert two["sets"][name]["per_category"][c] == pytest.approx(vals, rel=1e-9, abs=1e-9)
    csv1 = (tmp_path / "results" / "one" / "per_image.csv").read_text()
    assert csv1 == (tmp_path / "results" / "two" / "per_image.csv").read_text()


def test_shipped_option_files_are_valid(demo_root):
    from helpers import ROOT

    from ggt_ir.config import read_yaml_with_includes, to_typed
    from ggt_ir.eval.options import EvalOptions
    from ggt_ir.eval.metrics import get_spec, parse_metric_options
    from ggt_ir.eval.table import load_table_options

    demo = load_eval_options(ROOT / "options/eval/demo.yml",
                             [f"datasets.test.dataroot={demo_root}", "model=null", "restored=input"])
    assert list(parse_metric_options(demo.metrics)) == ["psnr", "ssim", "niqe"]  # weight-free
    paper = to_typed(EvalOptions, read_yaml_with_includes(ROOT / "options/eval/ggt100k.yml"), "ggt100k.yml")
    assert [get_spec(m).name for m in parse_metric_options(paper.metrics)] == [
        "psnr", "ssim", "lpips", "dists", "musiq", "maniqa-pipal", "clipiqa", "topiq_nr", "niqe"]
    assert len(load_table_options(ROOT / "options/tables/generalization.yml").columns) == 8


def test_tiled_restoration_matches_whole_image_for_a_pointwise_network():
    import torch

    from ggt_ir.utils.tiling import restore

    net = torch.nn.Conv2d(3, 3, 1)
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.allclose(restore(net, x, tile=16, overlap=8), net(x), atol=1e-6)
