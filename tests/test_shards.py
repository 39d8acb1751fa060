"""`ggt-ir shards build/verify`: layouts, manifest, problems report, metadata, resumable reruns."""
import json
import tarfile

import numpy as np
import pytest

from ggt_ir.data.pairing import find_pairs, pairs_from_globs, pairs_from_list
from ggt_ir.data.shard_io import decode_image, expand_urls, iter_tar_samples, open_shard
from ggt_ir.data.shards import brace_pattern, main as shards_main, parse_size, tar_key
from shard_fixtures import image, layout_a, layout_b, write


def _members(tar_path):
    return dict(iter_tar_samples(open_shard(str(tar_path), retries=0)))


def _all_samples(out, name, split=None):
    m = json.loads((out / f"{name}-manifest.json").read_text())
    samples = {}
    for e in m["shards"]:
        if split is None or e["split"] == split:
            for k, mem in _members(out / e["name"]).items():
                samples[json.loads(mem["json"])["key"]] = mem
    return m, samples


def test_build_manifest_counts_problems_and_original_bytes(tmp_path, capsys):
    root = tmp_path / "GGT"
    keys = layout_a(root)
    write(root / "train/Rain/LQ/orphan.png", image(1))  # no HQ partner
    (root / "train/snow/LQ/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable
    write(root / "train/snow/GT/broken.png", image(2))
    write(root / "train/haze/LQ/odd.png", image(3, 32, 32))  # size mismatch
    write(root / "train/haze/GT/odd.png", image(4, 32, 40))
    out = tmp_path / "shards"
    rc = shards_main(["build", str(root), "--out", str(out), "--name", "t", "--max-samples-per-shard", "4",
                      "--jobs", "2", "--no-progress"])
    assert rc == 0
    screen = capsys.readouterr().out
    assert "1 unpaired file(s), 2 pair(s) dropped" in screen and "t-problems.tsv" in screen

    m, samples = _all_samples(out, "t")
    assert m["complete"] and m["tool_version"] and m["format"] == "ggt-ir-shards"
    assert set(samples) == keys  # the unreadable and mismatched pairs are not in the shards...
    assert m["counts"]["split"] == {"test": 3, "train": 9}
    assert m["counts"]["category"] == {"haze": 3, "low-light": 3, "rain": 3, "snow": 3}
    assert m["counts"]["split_category"]["train"] == {"low-light": 3, "rain": 3, "snow": 3}
    assert m["urls"] == {"test": "t-test-000000.tar", "train": "t-train-{000000..000002}.tar"}
    assert len(m["shards"]) == 4 and sum(e["samples"] for e in m["shards"]) == 12
    assert sum(len(e["dropped"]) for e in m["shards"]) == 2
    assert all(len(e["sha256"]) == 64 and e["bytes"] == (out / e["name"]).stat().st_size for e in m["shards"])
    assert len(expand_urls(str(out / m["urls"]["train"]))) == 3
    # ...but reported, with the reason, in the problems file
    problems = (out / "t-problems.tsv").read_text()
    assert "orphan.png\tno HQ partner" in problems
    assert "broken.png\tunreadable" in problems and "odd.png\tsize mismatch: LQ 32x32, HQ 32x40" in problems
    assert m["problems"] == {"unpaired_files": 1, "dropped_pairs": 2, "file": "t-problems.tsv"}

    # the original bytes, no re-encoding; json has key, category, split, source paths, sizes
    mem = samples["train/Rain/img1"]
    assert mem["lq.png"] == (root / "train/Rain/LQ/img1.png").read_bytes()
    assert mem["hq.png"] == (root / "train/Rain/GT/img1.png").read_bytes()
    meta = json.loads(mem["json"])
    assert meta["category"] == "rain" and meta["split"] == "train" and meta["lq_path"] == "train/Rain/LQ/img1.png"
    assert meta["lq_size"] == meta["hq_size"] == [32, 32] and meta["encoding"] == "copy"  # (was "original")
    assert m["encoding"] == "copy" and meta["lq_pixels"].startswith("sha256:")

    # verify: all good; then damage one shard
    assert shards_main(["verify", str(out), "--jobs", "1"]) == 0
    victim = out / m["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert shards_main(["verify", str(out / "t-manifest.json"), "--jobs", "1"]) == 1
    assert "sha256" in capsys.readouterr().out

    # a rerun rebuilds only the damaged shard and checks the others against the manifest
    rc = shards_main(["build", str(root), "--out", str(out), "--name", "t", "--max-samples-per-shard", "4",
                      "--jobs", "1", "--no-progress"])
    assert rc == 0 and "(3 already finished, checked)" in capsys.readouterr().out
    m2 = json.loads((out / "t-manifest.json").read_text())
    assert [e["sha256"] for e in m2["shards"]] == [e["sha256"] for e in m["shards"]]  # deterministic bytes
    assert shards_main(["verify", str(out), "--jobs", "1"]) == 0


def test_second_layout_suffix_names_and_extension_variants(tmp_path):
    root = tmp_path / "B"
    keys = layout_b(root)
    write(root / "train/snow/flake_lq.png", image(9))  # a role in the file name, not the folder
    write(root / "train/snow/flake_gt.png", image(10))
    r = find_pairs(root)
    assert {p.key for p in r.pairs} == keys | {"train/snow/flake"}
    cats = {p.key: p.category for p in r.pairs}
    assert cats["train/old_photo/p0"] == "old-photo" and cats["train/mixed/p1"] == "general"
    out = tmp_path / "s"
    assert shards_main(["build", str(root), "--out", str(out), "--name", "b", "--no-progress", "--jobs", "1"]) == 0
    m, samples = _all_samples(out, "b")
    assert set(samples) == keys | {"train/snow/flake"}
    assert {s for mem in samples.values() for s in mem} == {"lq.png", "hq.jpg", "hq.png", "json"}


def test_two_folders_globs_and_pairs_file(tmp_path):
    for i in range(3):
        write(tmp_path / f"data/rain/input/x{i}.png", image(i))
        write(tmp_path / f"data/rain/target/x{i}.jpg", image(i + 10))
    write(tmp_path / "data/rain/input/lonely.png", image(99))
    r = pairs_from_globs("data/**/input/*.png", "data/**/target/*", root=tmp_path)
    assert sorted(p.key for p in r.pairs) == ["rain/x0", "rain/x1", "rain/x2"]
    assert {p.category for p in r.pairs} == {"rain"} and len(r.unpaired) == 1

    lst = tmp_path / "pairs.txt"
    lst.write_text("# lq hq category\ndata/rain/input/x0.png data/rain/target/x0.jpg snow\n"
                   "data/rain/input/x1.png data/rain/target/missing.jpg\n")
    r = pairs_from_list(lst)
    assert [(p.key, p.category) for p in r.pairs] == [("data/rain/x0", "snow")]
    assert any("missing.jpg" in str(f) and "does not exist" in why for f, why in r.unpaired)
    csv = tmp_path / "pairs.csv"
    csv.write_text("input,target,prompt,split,source\ndata/rain/input/x2.png,data/rain/target/x2.jpg,"
                   "remove the rain,test,phone\n")
    r = pairs_from_list(csv)
    p = r.pairs[0]
    assert (p.split, p.prompt, p.meta) == ("test", "remove the rain", {"source": "phone"})

    out = tmp_path / "s"
    assert shards_main(["build", "--lq-dir", str(tmp_path / "data/rain/input"), "--hq-dir",
                        str(tmp_path / "data/rain/target"), "--out", str(out), "--name", "ex",
                        "--default-category", "rain", "--no-progress", "--jobs", "1"]) == 0
    m = json.loads((out / "ex-manifest.json").read_text())
    assert m["counts"]["category"] == {"rain": 3} and m["counts"]["split"] == {"train": 3}
    assert m["problems"]["unpaired_files"] == 1 and m["source"]["mode"] == "two-folders"
    assert shards_main(["build", str(tmp_path), "--lq-glob", "data/**/input/*.png", "--hq-glob",
                        "data/**/target/*", "--out", str(tmp_path / "g"), "--name", "g", "--no-progress"]) == 0
    assert shards_main(["build", "--pairs-file", str(csv), "--out", str(tmp_path / "c"), "--name", "c",
                        "--no-progress"]) == 0
    _, samples = _all_samples(tmp_path / "c", "c")
    assert json.loads(samples["data/rain/x2"]["json"])["prompt"] == "remove the rain"


def test_sidecar_prompts_and_metadata_tables(tmp_path):
    root = tmp_path / "GGT"
    layout_a(root, n_per=2)
    (root / "train/Rain/LQ/img0.txt").write_text("a rainy street, restore it\n")  # sidecar next to the LQ
    (root / "train/snow/prompt").mkdir()
    (root / "train/snow/prompt/img1.json").write_text(json.dumps({"caption": "snowy hills", "score": 0.9}))
    (root / "train/metadata.jsonl").write_text(  # Hugging Face imagefolder style
        json.dumps({"file_name": "Low-Light/GT/img0.png", "prompt": "brighten the night scene", "vlm": "gemini"})
        + "\n" + json.dumps({"file_name": "does/not/exist.png", "prompt": "x"}) + "\n")
    (root / "test/meta.csv").write_text("name,caption\nimg1,hazy tower\n")
    r = find_pairs(root)
    prompts = {p.key: p.prompt for p in r.pairs if p.prompt}
    assert prompts == {"train/Rain/img0": "a rainy street, restore it", "train/snow/img1": "snowy hills",
                       "train/Low-Light/img0": "brighten the night scene", "test/haze/img1": "hazy tower"}
    meta = {p.key: p.meta for p in r.pairs}
    assert meta["train/snow/img1"] == {"score": 0.9} and meta["train/Low-Light/img0"] == {"vlm": "gemini"}
    out = tmp_path / "s"
    assert shards_main(["build", str(root), "--out", str(out), "--name", "p", "--no-progress", "--jobs", "1"]) == 0
    m, samples = _all_samples(out, "p")
    assert m["prompts"] == 4
    assert json.loads(samples["train/snow/img1"]["json"])["prompt"] == "snowy hills"
    assert "prompt" not in json.loads(samples["train/snow/img0"]["json"])


@pytest.mark.parametrize("encode", ["copy", "png", "png-fast", "qoi", "raw", "webp"])
def test_lossless_reencoding_keeps_pixels(tmp_path, encode):
    import cv2

    from ggt_ir.data.shard_format import pixel_digest

    write(tmp_path / "d/LQ/a.jpg", image(1))
    write(tmp_path / "d/GT/a.png", image(2))
    deep = (image(3).astype(np.uint16) * 257 + 7)  # a 16-bit pair (QOI and WebP are 8-bit: it stays PNG)
    (tmp_path / "d/LQ").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "d/LQ/b.png"), deep[..., ::-1].copy())
    cv2.imwrite(str(tmp_path / "d/GT/b.png"), deep[..., ::-1].copy())
    out = tmp_path / "s"
    assert shards_main(["build", str(tmp_path / "d"), "--out", str(out), "--name", "e", "--encode", encode,
                        "--no-progress"]) == 0
    m, samples = _all_samples(out, "e")
    assert m["encoding"] == encode and m["format_version"] == 2
    ext = {"copy": None, "png": "png", "png-fast": "png", "qoi": "qoi", "raw": "ppm", "webp": "webp"}[encode]
    for key, src_lq, src_hq in (("a", "d/LQ/a.jpg", "d/GT/a.png"), ("b", "d/LQ/b.png", "d/GT/b.png")):
        mem, meta = samples[key], json.loads(samples[key]["json"])
        assert meta["encoding"] == encode
        for role, src in (("lq", src_lq), ("hq", src_hq)):
            suffix = next(x for x in mem if x.startswith(role + "."))
            if ext and not (key == "b" and encode in ("qoi", "webp")):
                assert suffix == f"{role}.{ext}"
            stored = decode_image(mem[suffix], suffix.rpartition(".")[2])
            source = decode_image((tmp_path / src).read_bytes(), src.rpartition(".")[2])
            assert stored.dtype == source.dtype and pixel_digest(stored) == pixel_digest(source) == meta[f"{role}_pixels"]
    assert shards_main(["verify", str(out), "--jobs", "1"]) == 0  # it checks the pixel hashes too


def test_shards_are_plain_webdataset(tmp_path):
    root = tmp_path / "GGT"
    keys = layout_a(root, n_per=1)
    out = tmp_path / "s"
    assert shards_main(["build", str(root), "--out", str(out), "--name", "w", "--no-progress", "--jobs", "1"]) == 0
    import webdataset as wds

    m = json.loads((out / "w-manifest.json").read_text())
    urls = [str(out / u) for u in m["urls"].values()]
    got = set()
    for url in urls:
        for s in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            assert {"lq.png", "hq.png", "json"} <= set(s)
            got.add(json.loads(s["json"])["key"])
    assert got == keys


def test_small_helpers():
    assert parse_size("1GB") == 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("500MB") == 5 * 10**8
    assert tar_key("train/rain/a.b c") == "train__rain__a_b_c"
    assert brace_pattern(["x-train-000000.tar", "x-train-000001.tar", "x-train-000002.tar"]) == \
        "x-train-{000000..000002}.tar"
    with pytest.raises(ValueError):
        parse_size("big")


def test_deterministic_shard_bytes(tmp_path):
    root = tmp_path / "GGT"
    layout_a(root, n_per=1)
    shas = []
    for i in range(2):
        out = tmp_path / f"s{i}"
        assert shards_main(["build", str(root), "--out", str(out), "--name", "d", "--no-progress", "--jobs", "1"]) == 0
        shas.append([e["sha256"] for e in json.loads((out / "d-manifest.json").read_text())["shards"]])
        with tarfile.open(out / "d-train-000000.tar") as tf:
            assert all(ti.mtime == 0 and ti.uname == "" for ti in tf)
    assert shas[0] == shas[1]
