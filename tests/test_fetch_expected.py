"""`expected_images` on eval sets: checked when an eval option file loads; a missing or unpaired file is an error
that names it; `null` switches the check off; counts per category."""
from __future__ import annotations

import shutil

import pytest
import yaml

from ggt_ir.config import OptionsError
from ggt_ir.eval.options import load_eval_options


def write(tmp_path, demo_root, **set_keys):
    opt = {"name": "x", "restored": "input", "metrics": ["psnr"],
           "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test", **set_keys}}}
    p = tmp_path / "e.yml"
    p.write_text(yaml.safe_dump(opt))
    return p


def test_the_right_count_loads_and_a_wrong_one_names_the_set(tmp_path, demo_root):
    opt = load_eval_options(write(tmp_path, demo_root, expected_images=6))  # 6 categories x 1 test pair
    assert opt.expected_images == {"test": 6}
    with pytest.raises(OptionsError) as e:
        load_eval_options(write(tmp_path, demo_root, expected_images=500))
    msg = str(e.value)
    assert "datasets.test" in msg and "6 images, expected 500" in msg and str(demo_root) in msg
    assert "expected_images: null" in msg
    p = write(tmp_path, demo_root, expected_images=500)
    assert load_eval_options(p, ["datasets.test.expected_images=null"]).expected_images == {"test": None}
    assert load_eval_options(p, check_paths=False).expected_images == {"test": 500}  # counted only with paths


def test_unpaired_files_are_listed_and_categories_counted(tmp_path, demo_root):
    root = tmp_path / "ggt"
    shutil.copytree(demo_root, root)
    (root / "test/rain/GT").iterdir().__next__().unlink()  # a test LQ without its GT
    spec = {c: 1 for c in ("general", "rain", "haze", "snow", "low-light", "old-photo")}
    with pytest.raises(OptionsError) as e:
        load_eval_options(write(tmp_path, root, expected_images=spec))
    msg = str(e.value)
    assert "rain: 0 (expected 1)" in msg and "found 5, expected 6" in msg
    assert "1 file(s) could not be paired" in msg and "/test/rain/LQ/" in msg and "no HQ partner" in msg
    ok = load_eval_options(write(tmp_path, root, expected_images=spec, categories=["haze", "snow"]))
    assert ok.expected_images["test"] == spec  # only the selected categories are compared
    with pytest.raises(OptionsError, match="must be a count"):
        load_eval_options(write(tmp_path, root, expected_images="many"), check_paths=False)
