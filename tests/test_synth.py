"""ggt-ir synth: options, inputs, QC 1 and 2, the run (GGT layout read by shards build and PairedFolder, manifest),
resume after a real SIGKILL, review page + write-back server, finalize, compare."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from helpers import ROOT

BASE = ROOT / "options" / "synth" / "_base.yml"


def write_opts(path: Path, **over) -> Path:
    opt = {"include": str(BASE), "name": "t", "output": {"root": str(path.parent / "runs")},
           "generators": [{"type": "FakeEdit", "name": "good", "ops": ["denoise"]}]}
    opt.update(over)
    path.write_text(yaml.safe_dump(opt))
    return path


def load(path: Path, *over):
    from ggt_ir.synth.options import load_synth_options

    return load_synth_options(str(path), list(over) or None)


def run(opt, **kw):
    from accelerate import PartialState

    from ggt_ir.synth.pipeline import run_synth

    logs = []
    summary = run_synth(opt, PartialState(), log=logs.append, **kw)
    return summary, logs


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def photo():
    """A real 96x128 photo crop (textured: alignment needs features)."""
    import skimage.data

    img = skimage.data.astronaut()[60:252, 120:376].astype(np.float32) / 255
    return cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)


@pytest.fixture
def lq_dir(demo_root):
    return demo_root / "test"


# --------------------------------------------------------------------------- options
def test_option_errors_are_one_line_and_name_the_key(tmp_path, lq_dir):
    from ggt_ir.config import OptionsError

    p = write_opts(tmp_path / "a.yml", input={"path": str(lq_dir)})
    cases = [
        (["qc.metrics.tresholds={}"], "unknown option 'qc.metrics.tresholds'. Did you mean 'thresholds'?"),
        (["generators=[{type: FakeEdti}]"], "generators[0].type: unknown synth generator type 'FakeEdti'. Did you mean 'FakeEdit'"),
        (["generators=[{type: FakeEdit, opz: [x]}]"], "'generators[0].opz' is not an option of synth generator type FakeEdit. Did you mean 'ops'?"),
        (["generators=[]"], "'generators' is empty"),
        (["generators=[{type: FakeEdit}, {type: FakeEdit}]"], "generators[1].name 'FakeEdit' is used twice"),
        (["prompting.mode=adaptive"], "prompting.mode is adaptive but 'prompting.vlm' is not set"),
        (["prompting.mode=clever"], "'prompting.mode' is 'clever'; expected one of fixed, adaptive, input"),
        (["qc.metrics.thresholds={fidelty.ssim: '>= 1'}"], "unknown score key 'fidelty.ssim'"),
        (["qc.metrics.thresholds={fidelity.ssim: 'at least 0.5'}"], "is not a bound; write e.g. '>= 0.5'"),
        (["qc.vlm.enabled=true"], "qc.vlm.enabled but neither 'qc.vlm.vlm' nor 'prompting.vlm' names a VLM"),
        (["input.path=/no/such/folder"], "input.path: folder not found: /no/such/folder"),
        (["prompting.vlm={type: QwenVL, pretrained: x, max_tokens: 3}"], "'prompting.vlm.max_tokens' is not an option of synth VLM type QwenVL"),
    ]
    for over, expected in cases:
        with pytest.raises(OptionsError) as e:
            load(p, *over)
        msg = str(e.value)
        assert expected in msg and "\n" not in msg, (over, msg)
        assert str(p) in msg


def test_shipped_option_files_load(tmp_path):
    for name in ("demo.yml", "demo_compare.yml", "gemini_nano_banana2.yml", "qwen_image_edit.yml",
                 "openai_gpt_image.yml", "finetuned_adapter.yml", "compare_mfms.yml"):
        from ggt_ir.synth.options import load_synth_options

        opt = load_synth_options(str(ROOT / "options" / "synth" / name), check_input=False)
        assert opt.generators and opt.prompting.fixed["rain"]


# --------------------------------------------------------------------------- inputs
def test_inputs_folder_list_and_shards(tmp_path, demo_root):
    from ggt_ir.data.demo import build_demo_shards
    from ggt_ir.synth.inputs import InputError, read_inputs

    items, notes = read_inputs("folder", str(demo_root / "test"))
    assert len(items) == 6 and {i.category for i in items} == {"general", "rain", "haze", "snow", "low-light",
                                                              "old-photo"}
    assert all("/GT/" not in i.source for i in items) and "skipped" in notes[0]  # the HQ side is not input
    assert items[0].key == "general/general_000_astronaut" and items[0].flat == "general__general_000_astronaut"
    # list files: txt, csv (with prompt), jsonl; relative to the list file
    lq = sorted((demo_root / "test").rglob("LQ/*.png"))
    (tmp_path / "l.txt").write_text("# a comment\n" + "\n".join(f"{p} rain" for p in lq[:2]) + "\n")
    got, _ = read_inputs("list", str(tmp_path / "l.txt"))
    assert [i.category for i in got] == ["rain", "rain"]
    (tmp_path / "l.csv").write_text("path,category,prompt\n" + f"{lq[0]},Hazy,remove the haze\n")
    got, _ = read_inputs("list", str(tmp_path / "l.csv"))
    assert got[0].category == "haze" and got[0].prompt == "remove the haze"
    (tmp_path / "l.jsonl").write_text(json.dumps({"image": str(lq[1]), "key": "k1"}) + "\n")
    got, _ = read_inputs("list", str(tmp_path / "l.jsonl"), default_category="snow")
    assert got[0].key == "k1" and got[0].category == "haze"  # from the path (.../haze/LQ/...)
    plain = tmp_path / "x" / "img.png"
    plain.parent.mkdir()
    plain.write_bytes(lq[0].read_bytes())
    (tmp_path / "x" / "l.jsonl").write_text(json.dumps({"file_name": "img.png"}) + "\n")
    got, _ = read_inputs("list", str(tmp_path / "x" / "l.jsonl"), default_category="snow")
    assert got[0].key == "img" and got[0].category == "snow"  # no category in the row or the path
    (tmp_path / "bad.txt").write_text(f"{lq[0]}\n/no/such.png\n")
    with pytest.raises(InputError, match=r"bad.txt:2: image not found: /no/such.png"):
        read_inputs("list", str(tmp_path / "bad.txt"))
    # shards written by `ggt-ir shards build`: the lq member, key, category and prompt of the json
    m = build_demo_shards(demo_root, tmp_path / "shards", per_shard=4)
    got, _ = read_inputs("shards", str(tmp_path / "shards" / "ggt-demo-test-{000000..000001}.tar"))
    assert len(got) == 6 and {i.category for i in got} == {i.category for i in items}
    one = next(i for i in got if i.key.endswith("rain_000_chelsea") or i.category == "rain")
    ref = cv2.cvtColor(cv2.imread(str(next(p for p in lq if p.stem in one.key))), cv2.COLOR_BGR2RGB) / 255.0
    assert np.abs(one.load() - ref).max() < 1e-6 and m["counts"]["samples"] >= 6
    # per-category and global limits
    got, _ = read_inputs("folder", str(demo_root / "train"), per_category=1)
    assert len(got) == 6 and len({i.category for i in got}) == 6
    with pytest.raises(InputError, match="no LQ images"):
        read_inputs("folder", str(demo_root / "test"), categories=["fog-of-war"])


# --------------------------------------------------------------------------- QC 1
def qc(**over):
    from ggt_ir.synth.options import MetricQCOptions
    from ggt_ir.synth.qc_metrics import MetricQC

    base = yaml.safe_load(BASE.read_text())["qc"]["metrics"]
    base.update(over)
    return MetricQC(MetricQCOptions(**{k: v for k, v in base.items()}))


def test_qc1_alignment_detects_and_realigns_a_shift(photo):
    from ggt_ir.synth.qc_metrics import estimate_similarity
    from ggt_ir.testing.synth import apply_op

    rng = np.random.default_rng(0)
    shifted = apply_op(photo, "shift:2,-1", rng)
    a = estimate_similarity(photo, shifted)
    assert a["reliable"] and a["M"][0, 2] == pytest.approx(2, abs=0.3) and a["M"][1, 2] == pytest.approx(-1, abs=0.3)
    q = qc()
    r = q.evaluate(photo, shifted, key="k", category="general", lq_nr={})
    assert r.passed, r.reasons
    assert r.scores["align.shift"] > 0.01 and r.processed and r.processed[0].startswith("realigned")
    assert r.checks["align.shift"]["pass"] is None and r.checks["align.border"]["pass"] is True
    assert np.abs(r.image - photo)[4:-4, 4:-4].mean() < np.abs(shifted - photo)[4:-4, 4:-4].mean() / 3
    # without re-alignment the same candidate is rejected for the shift
    r2 = qc(realign=False).evaluate(photo, shifted, key="k", category="general", lq_nr={})
    assert not r2.passed and any(x.startswith("align.shift") for x in r2.reasons)


def test_qc1_rejects_a_cropped_output_and_colour_shift_with_category_overrides(photo):
    from ggt_ir.testing.synth import apply_op

    rng = np.random.default_rng(0)
    q = qc()
    zoom = q.evaluate(photo, apply_op(photo, "zoom:1.25", rng), key="z", category="general", lq_nr={})
    assert not zoom.passed and abs(zoom.scores["align.scale_dev"] - 0.25) < 0.03
    assert any(x.startswith("align.border") for x in zoom.reasons)  # re-aligning would invent 36 % of the image
    dark = apply_op(photo, "color:-30", rng)
    r = q.evaluate(photo, dark, key="c", category="general", lq_nr={})
    assert -31 < r.scores["color.l_shift"] < -20 and any("color.delta_e" in x for x in r.reasons)
    r_ll = q.evaluate(photo, dark, key="c", category="low-light", lq_nr={})  # expected to change brightness
    assert "color.delta_e" not in r_ll.checks and r_ll.passed, r_ll.reasons


def test_qc1_size_noise_and_identity(photo):
    from ggt_ir.testing.synth import apply_op

    rng = np.random.default_rng(0)
    q = qc()
    ok = q.evaluate(photo, photo, key="i", category="rain", lq_nr={})
    assert ok.passed and ok.scores["fidelity.ssim"] > 0.99 and ok.scores["color.delta_e"] < 1e-3
    bigger = cv2.resize(photo, (256, 192), interpolation=cv2.INTER_CUBIC)  # same aspect, other size: resized back
    r = q.evaluate(photo, bigger, key="b", category="rain", lq_nr={})
    assert r.passed and r.processed == ["resized 256x192 -> 128x96"] and r.image.shape == photo.shape
    squashed = cv2.resize(photo, (128, 128))
    r = q.evaluate(photo, squashed, key="s", category="rain", lq_nr={})
    assert not r.passed and r.scores["size.aspect_diff"] == pytest.approx(np.log(4 / 3), abs=1e-6)
    r = q.evaluate(photo, squashed, key="s", category="rain", lq_nr={}, expected_aspect=1.0)  # what was asked for
    assert "size.aspect_diff" not in " ".join(r.reasons)
    noise = q.evaluate(photo, apply_op(photo, "noise", rng), key="n", category="rain", lq_nr={})
    assert not noise.passed and noise.scores["fidelity.ssim"] < 0.2
    assert noise.scores["align.shift"] is None and "could not be estimated" in noise.checks["align.shift"]["note"]


def test_qc1_pyiqa_metrics_with_random_weights_gain_and_early_exit(photo, tmp_path):
    """NR (MUSIQ) and FR (LPIPS at low resolution) through MetricSuite, with random weights written where pyiqa
    expects them (scores are meaningless; the plumbing is what is tested)."""
    from ggt_ir.testing.weights import write_random_weights
    from ggt_ir.testing.synth import apply_op

    write_random_weights("musiq", tmp_path)
    write_random_weights("lpips", tmp_path)
    q = qc(nr_metrics=["musiq", "niqe"], fidelity_metrics=["ssim", "lpips"], weights_dir=str(tmp_path),
           strict_weights=True, thresholds={"fidelity.ssim": ">= 0.5", "gain.niqe": ">= -1000"},
           select={"gain.musiq": 1.0})
    lq_nr = q.score_lq(photo, "k")
    assert set(lq_nr) == {"musiq", "niqe"}
    cand = apply_op(photo, "denoise", np.random.default_rng(0))
    r = q.evaluate(photo, cand, key="k/c", category="rain", lq_nr=lq_nr)
    s = r.scores
    assert {"nr.musiq", "nr_lq.musiq", "gain.musiq", "nr.niqe", "gain.niqe", "fidelity.lpips"} <= set(s)
    assert s["gain.musiq"] == pytest.approx(s["nr.musiq"] - s["nr_lq.musiq"])
    assert s["gain.niqe"] == pytest.approx(s["nr_lq.niqe"] - s["nr.niqe"])  # lower is better: sign flipped
    assert r.select_score == pytest.approx(s["gain.musiq"])
    assert q.variants()["lpips"]["options"]["net"] == "alex" and q.variants()["niqe"]["lower_better"]
    # early exit: a candidate failing a cheap check is not scored by the NR metrics
    bad = q.evaluate(photo, apply_op(photo, "noise", np.random.default_rng(1)), key="k/n", category="rain",
                     lq_nr=lq_nr)
    assert "nr.musiq" not in bad.scores and "early_exit" in bad.checks["gain.niqe"]["note"]


# --------------------------------------------------------------------------- QC 2 parsing
def test_parse_verdict_variants():
    from ggt_ir.synth.qc_vlm import parse_verdict

    v = parse_verdict('Sure!\n```json\n{"verdict": "Regenerate", "reasons": "rain left", '
                      '"corrected_prompt": "remove {all} rain", "remaining_degradation": true}\n```')
    assert v["verdict"] == "regenerate" and v["reasons"] == ["rain left"] and v["corrected_prompt"] == "remove {all} rain"
    assert v["flags"] == {"remaining_degradation": True} and v["parsed"] is True
    assert parse_verdict("I would reject this one.")["verdict"] == "reject"
    assert parse_verdict("accept or reject? hard to say")["verdict"] == "unparsable"
    assert parse_verdict('{"verdict": "maybe"}')["verdict"] == "unparsable"
    assert parse_verdict("")["verdict"] == "unparsable"


# --------------------------------------------------------------------------- the run
def test_run_writes_ggt_layout_that_shards_and_pairedfolder_read(tmp_path, lq_dir):
    """Candidates from three generators (one good, one shifted, one noise), QC 1 chooses; the dataset is read by
    `ggt-ir shards build` + GGTShards and by PairedFolder; the manifest records everything."""
    from ggt_ir.data import DATASETS
    from ggt_ir.data.paired_folder import PairedFolderDataset
    from ggt_ir.data.shards import main as shards_main

    p = write_opts(tmp_path / "o.yml", name="run1", input={"path": str(lq_dir)},
                   generators=[{"type": "FakeEdit", "name": "good", "ops": ["denoise"], "cost_per_image": 0.01},
                               {"type": "FakeEdit", "name": "shifted", "ops": ["shift:5,0"]},
                               {"type": "FakeEdit", "name": "noise", "ops": ["noise"], "candidates": 2}])
    opt = load(p)
    summary, logs = run(opt)
    rd = tmp_path / "runs" / "run1"
    recs = records(rd)
    assert len(recs) == 6 and summary["stages"]["accepted"] == 6 and summary["complete"]
    for r in recs:
        assert r["status"] == "accepted" and r["generator"] == "good" and r["seed"] == 0
        assert {"lq", "hq", "category", "prompt", "generator", "seed", "candidates", "timings", "cost_usd"} <= set(r)
        assert r["prompt"] == opt.prompting.fixed[r["category"]] and r["prompt_info"] == {"source": "fixed"}
        ids = [c["id"] for c in r["candidates"]]
        assert ids == ["good-s0", "shifted-s0", "noise-s0", "noise-s1"]
        noise = r["candidates"][2]
        assert noise["qc1"]["passed"] is False and "fidelity.ssim" in noise["qc1"]["checks"]
        assert r["cost_usd"]["generate"] == pytest.approx(0.01) and r["timings"]["total"] > 0
        assert (rd / r["hq"]).is_file() and (rd / r["lq"]).read_bytes() == Path(r["lq_source"]).read_bytes()
    assert summary["generators"]["noise"]["candidates"] == 12 and summary["generators"]["good"]["chosen"] == 6
    # PairedFolder reads the dataset as it is
    ds = PairedFolderDataset(DATASETS.get("PairedFolder").Options(dataroot=str(rd / "dataset"), split="train"))
    assert len(ds) == 6 and not ds.unpaired
    assert {p.category for p in ds.pairs} == {r["category"] for r in recs}
    assert all(p.prompt for p in ds.pairs)  # prompt sidecars under <category>/prompt/
    sample = ds[0]
    assert sample["lq"].shape == sample["gt"].shape
    # ... and so does `ggt-ir shards build`
    assert shards_main(["build", str(rd / "dataset"), "--out", str(tmp_path / "sh"), "--name", "syn",
                        "--max-samples-per-shard", "4", "--jobs", "1", "--no-progress"]) == 0
    man = json.loads((tmp_path / "sh" / "syn-manifest.json").read_text())
    assert man["counts"]["samples"] == 6 and man["problems"]["unpaired_files"] == 0
    assert man["problems"]["dropped_pairs"] == 0 and set(man["counts"]["category"]) == {r["category"] for r in recs}
    gg = DATASETS.get("GGTShards")
    shards = gg(gg.Options(manifest=str(tmp_path / "sh" / "syn-manifest.json"), split="train", gt_size=0,
                           batch_size_per_gpu=1))
    batches = list(shards.eval_loader(0, 1, num_workers=0))
    assert len(batches) == 6 and all(b["prompt"][0] for b in batches)
    assert any("6/6 (100%)" in line and "ETA" in line for line in logs)


def test_qc2_regenerate_reject_and_unparsable(tmp_path, lq_dir):
    """Scripted verdicts: regenerate (with a corrected prompt) -> the new candidate is generated with a new seed
    and judged; then reject, then an unparsable reply. K bounds the regenerations."""
    judge = ['{"verdict": "regenerate", "reasons": ["rain left"], "corrected_prompt": "remove ALL the rain"}',
             '{"verdict": "accept", "reasons": ["good"]}',
             '{"verdict": "reject", "reasons": ["face changed"]}',
             "no idea"]
    p = write_opts(tmp_path / "o.yml", name="qc2", input={"path": str(lq_dir), "categories": ["rain", "snow"]},
                   qc={"vlm": {"enabled": True, "max_regenerations": 1,
                               "vlm": {"type": "FakeVLM", "judge_replies": judge}}})
    run(load(p))
    recs = {r["key"]: r for r in records(tmp_path / "runs" / "qc2")}
    rain, snow = recs["rain/rain_000_chelsea"] if "rain/rain_000_chelsea" in recs else None, None
    rain = next(r for r in recs.values() if r["category"] == "rain")
    snow = next(r for r in recs.values() if r["category"] == "snow")
    # rain: regenerate -> good-s1-r1 (new seed, corrected prompt) -> accept
    assert rain["status"] == "accepted" and rain["candidate"] == "good-s1-r1" and rain["qc2"]["regenerations"] == 1
    regen = rain["candidates"][-1]
    assert regen["prompt"] == "remove ALL the rain" and regen["seed"] == 1 and regen["regenerated_from"] == "good-s0"
    assert rain["candidates"][0]["vlm"][0]["verdict"] == "regenerate" and regen["vlm"][0]["verdict"] == "accept"
    assert rain["prompt"] == "remove ALL the rain"
    # snow: reject -> no other survivor -> rejected at qc2; its files are not in the dataset
    assert snow["status"] == "rejected" and snow["stage"] == "qc2" and snow["hq"] is None
    assert snow["candidates"][0]["vlm"][0]["reasons"] == ["face changed"]
    assert not list((tmp_path / "runs" / "qc2" / "dataset").rglob("snow*"))
    # unparsable replies count as on_unparsable; the regeneration limit turns a third 'regenerate' into a reject
    p2 = write_opts(tmp_path / "o2.yml", name="qc2b", input={"path": str(lq_dir), "categories": ["rain"]},
                    qc={"vlm": {"enabled": True, "max_regenerations": 1, "on_unparsable": "accept",
                                "vlm": {"type": "FakeVLM", "judge_replies": ["hmm"]}}})
    run(load(p2))
    r = records(tmp_path / "runs" / "qc2b")[0]
    v = r["candidates"][0]["vlm"][0]
    assert r["status"] == "accepted" and v["verdict"] == "unparsable" and v["counted_as"] == "accept"
    p3 = write_opts(tmp_path / "o3.yml", name="qc2c", input={"path": str(lq_dir), "categories": ["rain"]},
                    qc={"vlm": {"enabled": True, "max_regenerations": 2,
                                "vlm": {"type": "FakeVLM", "judge_replies": [judge[0]]}}})
    run(load(p3))
    r = records(tmp_path / "runs" / "qc2c")[0]
    assert r["status"] == "rejected" and r["qc2"]["regenerations"] == 2 and len(r["candidates"]) == 3
    assert "regeneration limit 2 reached" in r["candidates"][-1]["vlm"][0]["note"]


def test_threads_keep_the_manifest_whole(tmp_path, lq_dir):
    """runtime.workers > 1 (API-style concurrency): every image once, complete lines, the same decisions."""
    p = write_opts(tmp_path / "o.yml", name="thr", input={"path": str(lq_dir)}, runtime={"workers": 3},
                   generators=[{"type": "FakeEdit", "name": "good", "ops": ["sleep:0.05", "denoise"]},
                               {"type": "FakeEdit", "name": "bad", "ops": ["noise"]}])
    summary, _ = run(load(p))
    lines = (tmp_path / "runs" / "thr" / "manifest" / "rank-0.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(x)["key"] for x in lines}) == 6
    assert summary["stages"]["accepted"] == 6 and summary["generators"]["good"]["chosen"] == 6


def test_generator_errors_and_refusals_are_recorded_not_fatal(tmp_path, lq_dir):
    p = write_opts(tmp_path / "o.yml", name="err", input={"path": str(lq_dir), "categories": ["haze"]},
                   generators=[{"type": "FakeEdit", "name": "down", "ops": ["fail"]},
                               {"type": "FakeEdit", "name": "prude", "ops": ["refuse"], "cost_per_image": 0.02}])
    summary, _ = run(load(p))
    r = records(tmp_path / "runs" / "err")[0]
    assert r["status"] == "rejected" and r["stage"] == "generate"
    assert r["candidates"][0]["status"] == "error" and "told to fail" in r["candidates"][0]["error"]
    assert r["candidates"][1]["status"] == "refused" and r["cost_usd"]["generate"] == pytest.approx(0.02)
    assert summary["generators"]["down"]["error"] == 1 and summary["generators"]["prude"]["refused"] == 1
    from ggt_ir.synth.pipeline import SynthError

    with pytest.raises(SynthError, match="told to fail"):
        run(load(p, "runtime.fail_fast=true", "name=err2"))


def test_adaptive_prompts_are_cached_and_changed_settings_redo_only_qc(tmp_path, lq_dir):
    from ggt_ir.testing.synth import FakeVLM

    vlm = {"type": "FakeVLM", "prompt_replies": ["Instruction: remove it all (level {mean:.3f})."]}
    p = write_opts(tmp_path / "o.yml", name="ad", input={"path": str(lq_dir)},
                   prompting={"mode": "adaptive", "vlm": vlm, "cache_dir": str(tmp_path / "pc")})
    run(load(p))
    recs = records(tmp_path / "runs" / "ad")
    assert all(r["prompt_info"]["source"] == "adaptive" and not r["prompt_info"]["cache_hit"] for r in recs)
    assert all(r["prompt"].startswith("remove it all (level ") for r in recs)  # cleaned: label removed
    assert len({r["prompt"] for r in recs}) == 6 and len(list((tmp_path / "pc").glob("*.json"))) == 6
    # another run sharing the cache asks the VLM nothing
    calls = []
    orig = FakeVLM.chat

    def counting(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    FakeVLM.chat = counting
    try:
        run(load(p, "name=ad2"))
    finally:
        FakeVLM.chat = orig
    assert not calls and all(r["prompt_info"]["cache_hit"] for r in records(tmp_path / "runs" / "ad2"))
    # a changed QC threshold redoes the images (new config) but reuses every candidate from the cache
    before = {r["key"]: r["candidates"][0] for r in recs}
    run(load(p, "qc.metrics.thresholds={fidelity.ssim: '>= 0.99'}", "qc.metrics.category_thresholds={}"))
    after = records(tmp_path / "runs" / "ad")
    assert all(r["candidates"][0].get("cached") for r in after)
    assert all(r["status"] == "rejected" for r in after if r["candidates"][0]["qc1"]["scores"]["fidelity.ssim"] < 0.99)
    assert {r["key"] for r in after} == set(before)


def test_resume_after_sigkill_does_not_redo_finished_images(tmp_path, lq_dir):
    """A real SIGKILL of `ggt-ir synth` mid-run, then a rerun: finished images are not processed again (their
    manifest lines and candidate files are untouched), the rest is done, nothing is duplicated."""
    p = write_opts(tmp_path / "o.yml", name="kill", input={"path": str(lq_dir)},
                   generators=[{"type": "FakeEdit", "name": "slow", "ops": ["sleep:0.6", "denoise"]}])
    rd = tmp_path / "runs" / "kill"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "ggt_ir", "synth", "-opt", str(p)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part = rd / "manifest" / "rank-0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.is_file() or len(part.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = [json.loads(line) for line in part.read_text().splitlines()]
    assert 2 <= len(done_before) < 6 and not (rd / "manifest.jsonl").exists()
    mtimes = {r["key"]: (rd / "work" / r["key"].replace("/", "__") / "slow-s0.png").stat().st_mtime_ns
              for r in done_before}
    with open(part, "ab") as f:  # a half-written line, as a kill during the append would leave
        f.write(b'{"key": "half')
    summary, logs = run(load(p))
    assert summary["complete"] and summary["stages"]["input"] == 6
    assert any(f"{len(done_before)} already done" in line for line in logs)
    lines = [json.loads(line) for line in part.read_text().splitlines()]
    assert len(lines) == 6 and len({r["key"] for r in lines}) == 6  # no duplicate, the partial line is gone
    assert lines[:len(done_before)] == done_before
    for k, t in mtimes.items():
        assert (rd / "work" / k.replace("/", "__") / "slow-s0.png").stat().st_mtime_ns == t
    assert len(records(rd)) == 6


# --------------------------------------------------------------------------- review, finalize, compare
@pytest.fixture
def finished_run(tmp_path, lq_dir):
    p = write_opts(tmp_path / "o.yml", name="rev", input={"path": str(lq_dir)},
                   generators=[{"type": "FakeEdit", "name": "good", "ops": ["denoise"]},
                               {"type": "FakeEdit", "name": "bad", "ops": ["noise"]}],
                   qc={"vlm": {"enabled": True, "vlm": {"type": "FakeVLM", "judge_replies": [
                       '{"verdict": "accept"}', '{"verdict": "reject", "reasons": ["scripted"]}']}}})
    run(load(p))
    return tmp_path / "runs" / "rev"


def test_review_page_and_write_back_server(finished_run):
    import requests

    from ggt_ir.synth.review import page_data, serve_in_thread, write_review

    from ggt_ir.synth.review import ReviewError

    assert [i["category"] for i in page_data(finished_run, records(finished_run), category="rain")["items"]] == ["rain"]
    assert len(page_data(finished_run, records(finished_run), limit=2)["items"]) == 2

    with pytest.raises(ReviewError, match="no images to review in category 'fog'"):
        write_review(finished_run, category="fog")
    page = write_review(finished_run)
    text = page.read_text()
    assert page == finished_run / "review" / "index.html" and 'id="data"' in text and "keydown" in text
    data = page_data(finished_run, records(finished_run))
    assert len(data["items"]) == 6 and data["items"][0]["status"] == "accepted"  # accepted first
    it = data["items"][0]
    assert it["lq"].startswith("../work/") and (finished_run / "review" / it["lq"]).resolve().is_file()
    assert all((finished_run / "review" / c["image"]).resolve().is_file() for c in it["candidates"])
    srv, _ = serve_in_thread(finished_run)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert requests.get(f"{url}/review/index.html", timeout=10).status_code == 200
        assert requests.get(f"{url}/{it['lq'][3:]}", timeout=10).content[:4] == b"\x89PNG"
        assert requests.get(f"{url}/api/decisions", timeout=10).json() == {"decisions": {}}
        body = {"format": "ggt-ir-synth-decisions", "version": 1, "run": "rev",
                "decisions": {it["key"]: {"decision": "reject", "candidate": "good-s0"}}}
        assert requests.post(f"{url}/api/decisions", json=body, timeout=10).json() == {"saved": 1}
        assert json.loads((finished_run / "review" / "decisions.json").read_text()) == body
        assert requests.get(f"{url}/api/decisions", timeout=10).json() == body
        assert requests.post(f"{url}/api/decisions", data=b"[1, 2]", timeout=10).status_code == 400
    finally:
        srv.shutdown()
        srv.server_close()
    assert srv.server_address[0] == "127.0.0.1"


def test_finalize_applies_manual_decisions_and_counts_every_stage(finished_run, tmp_path):
    from ggt_ir.synth.finalize import FinalizeError, finalize

    recs = records(finished_run)
    acc = [r for r in recs if r["status"] == "accepted"]
    rej = [r for r in recs if r["status"] == "rejected"]
    assert len(acc) == 3 and len(rej) == 3
    d = {"format": "ggt-ir-synth-decisions", "version": 1, "decisions": {
        acc[0]["key"]: {"decision": "reject"},
        rej[0]["key"]: {"decision": "accept", "candidate": "good-s0"},  # a human rescues a VLM-rejected image
    }}
    (tmp_path / "d.json").write_text(json.dumps(d))
    stats = finalize(finished_run, tmp_path / "d.json", log=lambda *a: None)
    final = finished_run / "final"
    assert stats["all"] == {"input": 6, "generated": 6, "passed_qc1": 6, "passed_qc2": 3, "reviewed": 2,
                            "manual_accept": 1, "manual_reject": 1, "final": 3}
    kept = [json.loads(line) for line in (final / "manifest.jsonl").read_text().splitlines()]
    assert {k["key"] for k in kept} == {acc[1]["key"], acc[2]["key"], rej[0]["key"]}
    rescued = next(k for k in kept if k["key"] == rej[0]["key"])
    assert rescued["decision"] == "manual" and rescued["candidate"] == "good-s0"
    assert (final / rescued["hq"]).read_bytes() == (finished_run / "work" / rej[0]["key"].replace("/", "__")
                                                    / "good-s0.png").read_bytes()
    assert json.loads((final / "stats.json").read_text())["per_category"][rej[0]["category"]]["final"] == 1
    from ggt_ir.data.pairing import find_pairs

    assert len(find_pairs(final).pairs) == 3
    assert finalize(finished_run, tmp_path / "d.json", undecided="drop", log=lambda *a: None)["all"]["final"] == 1
    (tmp_path / "bad.json").write_text(json.dumps({"decisions": {"nope": {"decision": "accept"}}}))
    with pytest.raises(FinalizeError, match="decision for 'nope', which is not an image of"):
        finalize(finished_run, tmp_path / "bad.json", log=lambda *a: None)
    (tmp_path / "bad2.json").write_text(json.dumps({"decisions": {rej[0]["key"]: {"decision": "accept",
                                                                                 "candidate": "zzz"}}}))
    with pytest.raises(FinalizeError, match="candidate 'zzz', which is not an image candidate"):
        finalize(finished_run, tmp_path / "bad2.json", log=lambda *a: None)
    (tmp_path / "bad3.json").write_text("{not json")
    with pytest.raises(FinalizeError, match="not valid JSON"):
        finalize(finished_run, tmp_path / "bad3.json", log=lambda *a: None)


def test_cli_review_and_finalize(finished_run, capsys):
    from ggt_ir.cli import main

    assert main(["synth", "review", str(finished_run)]) == 0
    assert "review page:" in capsys.readouterr().out
    assert main(["synth", "finalize", str(finished_run)]) == 0  # no decisions file: automatic decisions
    assert (finished_run / "final" / "stats.json").is_file()
    assert main(["synth", "finalize", str(finished_run / "nope")]) == 2
    assert "no manifest.jsonl" in capsys.readouterr().err


def test_compare_generators_by_prompting_mode(tmp_path, lq_dir):
    from accelerate import PartialState

    from ggt_ir.synth.compare import run_compare

    vlm = {"type": "FakeVLM", "prompt_replies": ["level {mean:.2f}: remove the degradation"]}
    p = write_opts(tmp_path / "o.yml", name="cmp", input={"path": str(lq_dir)},
                   prompting={"vlm": vlm},
                   generators=[{"type": "FakeEdit", "name": "good", "ops": ["denoise"], "cost_per_image": 0.04},
                               {"type": "FakeEdit", "name": "bad", "ops": ["noise"]}],
                   compare={"modes": ["fixed", "adaptive"]})
    res = run_compare(load(p), PartialState(), log=lambda *a: None)
    out = tmp_path / "runs" / "cmp"
    assert [a["arm"] for a in res["arms"]] == ["good-fixed", "good-adaptive", "bad-fixed", "bad-adaptive"]
    rows = {(r["arm"], r["category"]): r for r in res["rows"]}
    assert rows[("good-fixed", "all")]["qc1_pass_candidates"] == 1.0 and rows[("bad-fixed", "all")]["accepted"] == 0
    assert rows[("good-adaptive", "all")]["cost_per_image"] == pytest.approx(0.04)
    assert rows[("good-fixed", "rain")]["images"] == 1 and rows[("good-fixed", "all")]["fidelity.ssim"] > 0.7
    table = (out / "table.md").read_text()
    assert "| good | adaptive | all | 6 | 100% |" in table and "per category" in table
    html_text = (out / "index.html").read_text()
    assert html_text.count("<tr>") >= 7 and "arms/good-adaptive/work/" in html_text
    adaptive = records(out / "arms" / "good-adaptive")
    assert all(r["prompt"].startswith("level ") for r in adaptive)
    assert all(r["prompt_info"]["cache_hit"] for r in records(out / "arms" / "bad-adaptive"))  # shared prompts
