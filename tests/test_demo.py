"""The demo teaches good habits: a held-out val split for validation, the test split only for eval, and the
LQ baseline row labelled as such."""
import json
from pathlib import Path

import yaml

from ggt_ir.data.demo import build_demo

ROOT = Path(__file__).resolve().parents[1]


def _overlap(a: dict, b: dict) -> bool:
    return (a["photo"] == b["photo"] and abs(a["x"] - b["x"]) < a["size"] and abs(a["y"] - b["y"]) < a["size"])


def test_demo_has_train_val_test_splits_sharing_no_pixels(tmp_path):
    root = build_demo(tmp_path, size=64, train_per_category=2, test_per_category=2, val_per_category=2)
    for split in ("train", "val", "test"):
        assert len(list((root / split).rglob("LQ/*.png"))) == 12, split
    crops = json.loads((root / "crops.json").read_text())
    by = {s: [c for c in crops if c["split"] == s] for s in ("train", "val", "test")}
    for a, b in (("val", "test"), ("train", "test"), ("train", "val")):
        assert not any(_overlap(x, y) for x in by[a] for y in by[b]), (a, b)


def test_demo_option_files_validate_on_val_and_say_what_the_demo_is():
    demo = yaml.safe_load((ROOT / "options/demo/nafnet_demo.yml").read_text())
    assert demo["datasets"]["val"]["split"] == "val"
    assert "smoke test" in demo["description"]
    assert yaml.safe_load((ROOT / "options/eval/demo.yml").read_text())["datasets"]["test"]["split"] == "test"


def test_eval_of_the_lq_input_does_not_take_the_model_label(demo_root, tmp_path):
    from ggt_ir.eval.cli import main

    opt = tmp_path / "eval.yml"
    opt.write_text(yaml.safe_dump({
        "name": "demo_model", "results_root": str(tmp_path / "results"), "label": {"model": "SwinIR", "data": "GGT"},
        "model": {"run": "experiments/none"},
        "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
        "metrics": ["psnr"]}))
    assert main(["-opt", str(opt), "--restored", "input"]) == 0
    assert not (tmp_path / "results" / "demo_model").exists()  # never over the model's results
    summary = json.loads((tmp_path / "results" / "demo_model_input" / "summary.json").read_text())
    assert summary["label"] == {"model": "LQ input"}
    assert main(["-opt", str(opt), "--restored", "input", "--name", "base", "--set", "label.model=LQ"]) == 0
    assert json.loads((tmp_path / "results" / "base" / "summary.json").read_text())["label"] == {"model": "LQ"}


def test_eval_help_names_only_files_that_exist():
    import re

    from ggt_ir.eval.cli import build_parser

    text = build_parser().format_help()
    named = set(re.findall(r"options/[\w/.-]+\.yml", text))
    assert named and all((ROOT / n).is_file() for n in named), named
