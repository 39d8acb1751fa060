"""Option files: typed schema, helpful errors, includes, overrides, debug mode."""
import pytest
import yaml

from ggt_ir.config import OptionsError, options_to_yaml
from ggt_ir.train.options import load_options
from helpers import tiny_options, write_options


def _write(tmp_path, opt, name="opt.yml"):
    return write_options(tmp_path / name, opt)


def test_demo_option_file_loads(demo_root, tmp_path):
    opt = load_options("options/demo/nafnet_demo.yml", check_paths=False)
    assert opt.network_g["type"] == "NAFNet"
    assert opt.datasets["train"].gt_size == 64
    assert opt.train.optim_g.lr == pytest.approx(2e-3)
    assert list(opt.val_sets()) == ["val"]
    assert opt.datasets["val"].split == "val"  # validation (and "best") on the held-out val split, never test


def test_unknown_key_names_file_path_and_closest_key(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["train"]["optim_g"]["wieght_decay"] = 0.1
    path = _write(tmp_path, opt)
    with pytest.raises(OptionsError) as e:
        load_options(path)
    msg = str(e.value)
    assert str(path) in msg and "train.optim_g.wieght_decay" in msg and "weight_decay" in msg


def test_unknown_dataset_key_and_network_kwarg(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["datasets"]["train"]["gt_sise"] = 64
    with pytest.raises(OptionsError, match=r"datasets\.train\.gt_sise.*gt_size"):
        load_options(_write(tmp_path, opt))
    opt = tiny_options(demo_root, tmp_path)
    opt["network_g"]["embed_dims"] = 8
    with pytest.raises(OptionsError, match=r"network_g\.embed_dims.*embed_dim"):
        load_options(_write(tmp_path, opt))


def test_wrong_type_names_key_and_value(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["train"]["total_iter"] = "many"
    with pytest.raises(OptionsError) as e:
        load_options(_write(tmp_path, opt))
    assert "train.total_iter" in str(e.value) and "many" in str(e.value)


def test_bad_choice_is_reported(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["train"]["mixed_precision"] = "fp8"
    with pytest.raises(OptionsError, match="train.mixed_precision.*fp16"):
        load_options(_write(tmp_path, opt))
    opt = tiny_options(demo_root, tmp_path)
    opt["network_g"]["type"] = "SwinIr"
    with pytest.raises(OptionsError, match="SwinIR"):
        load_options(_write(tmp_path, opt))


def test_missing_dataset_folder_fails_before_model_build(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["datasets"]["val"]["dataroot"] = str(tmp_path / "nowhere")
    with pytest.raises(OptionsError, match=r"datasets\.val\.dataroot: folder not found"):
        load_options(_write(tmp_path, opt))


def test_include_and_overrides(demo_root, tmp_path):
    base = tiny_options(demo_root, tmp_path)
    _write(tmp_path, base, "base.yml")
    (tmp_path / "child.yml").write_text(yaml.safe_dump(
        {"include": "base.yml", "name": "child", "train": {"total_iter": 42}}))
    opt = load_options(tmp_path / "child.yml", ["train.optim_g.lr=5e-4", "datasets.train.batch_size_per_gpu=3"])
    assert opt.name == "child"
    assert opt.train.total_iter == 42  # from the child
    assert opt.train.warmup_iter == 2  # from the base
    assert opt.train.optim_g.lr == pytest.approx(5e-4)
    assert opt.datasets["train"].batch_size_per_gpu == 3
    with pytest.raises(OptionsError, match="train.totl_iter.*total_iter"):
        load_options(tmp_path / "child.yml", ["train.totl_iter=1"])


def test_include_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yml").write_text("include: b.yml\n")
    (tmp_path / "b.yml").write_text("include: a.yml\n")
    with pytest.raises(OptionsError, match="include cycle"):
        load_options(tmp_path / "a.yml")


def test_debug_mode_and_resolved_yaml_roundtrip(demo_root, tmp_path):
    opt = load_options(_write(tmp_path, tiny_options(demo_root, tmp_path)), debug=True)
    assert opt.name == "debug_tiny" and opt.logger.print_freq == 1 and opt.val.val_freq == 8
    resolved = yaml.safe_load(options_to_yaml(opt))
    assert resolved["train"]["optim_g"]["type"] == "AdamW"
    assert resolved["datasets"]["train"]["gt_size"] == 16


def test_model_type_and_network_must_agree_before_any_folder_is_touched(demo_root, tmp_path):
    exp = tmp_path / "exp"
    opt = tiny_options(demo_root, exp, name="mix")
    (exp / "mix").mkdir(parents=True)
    (exp / "mix" / "old_run_file.txt").write_text("an earlier run")  # would be archived by a starting run
    opt["model_type"] = "onestep_sd"  # a SwinIR network with the OneStepSD family
    with pytest.raises(OptionsError, match=r"model_type onestep_sd needs 'network_g.type: OneStepSD', got SwinIR"):
        load_options(_write(tmp_path, opt))
    opt = tiny_options(demo_root, exp, name="mix")
    opt["network_g"] = {"type": "OneStepSD", "pretrained": "stabilityai/stable-diffusion-2-1-base"}
    with pytest.raises(OptionsError, match=r"OneStepSD is trained with 'model_type: onestep_sd'.*regression"):
        load_options(_write(tmp_path, opt))
    assert sorted(p.name for p in exp.iterdir()) == ["mix"] and (exp / "mix" / "old_run_file.txt").is_file()


def test_a_key_of_another_family_names_that_family(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path / "exp")
    opt["train"]["vsd_opt"] = {"lora_rank": 2}
    with pytest.raises(OptionsError, match=r"'train.vsd_opt' is an option of model_type onestep_sd"):
        load_options(_write(tmp_path, opt))


def test_repeated_set_accumulates_on_the_command_line(demo_root, tmp_path, monkeypatch):
    """`train.py --set a=1 --set b=2` keeps both (it used to keep only the last), as does `--set a=1 b=2`."""
    from ggt_ir.train import cli

    path = _write(tmp_path, tiny_options(demo_root, tmp_path))
    seen = {}

    def fake_load(p, overrides, debug=False):
        seen["overrides"] = list(overrides)
        raise OptionsError("stop here")

    monkeypatch.setattr("ggt_ir.train.options.load_options", fake_load)
    cli.main(["-opt", str(path), "--set", "train.total_iter=3", "--set", "val.val_freq=1", "logger.print_freq=1"])
    assert seen["overrides"] == ["train.total_iter=3", "val.val_freq=1", "logger.print_freq=1"]
    opt = load_options(path, seen["overrides"])
    assert (opt.train.total_iter, opt.val.val_freq, opt.logger.print_freq) == (3, 1, 1)


def test_eval_set_accepts_both_forms_too():
    from ggt_ir.eval.cli import build_parser

    a = build_parser().parse_args(["-opt", "x.yml", "--set", "eval.batch_size=2", "--set", "a=1", "b=2"])
    assert a.overrides == ["eval.batch_size=2", "a=1", "b=2"]


def test_changing_a_type_replaces_the_block_instead_of_leaking_old_keys(demo_root, tmp_path, caplog):
    """Switching the demo's validation set to shards by --set or by an including file: the PairedFolder keys
    (dataroot, split) do not leak into the GGTShards block, and a note lists what was dropped."""
    import logging

    from ggt_ir.data.demo import build_demo_shards

    shards = build_demo_shards(demo_root, tmp_path / "shards", per_shard=4)
    val_urls = str(tmp_path / "shards" / shards["urls"]["val"])
    base = _write(tmp_path, tiny_options(demo_root, tmp_path), "base.yml")
    caplog.set_level(logging.WARNING, logger="ggt_ir.options")
    opt = load_options(base, [f"datasets.val.urls={val_urls}", "datasets.val.type=GGTShards"])  # any order
    assert opt.datasets["val"].type == "GGTShards" and opt.datasets["val"].urls == val_urls
    assert any("dataroot" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    (tmp_path / "child.yml").write_text(yaml.safe_dump(
        {"include": "base.yml", "datasets": {"val": {"type": "GGTShards", "urls": val_urls}}}))
    assert load_options(tmp_path / "child.yml").datasets["val"].type == "GGTShards"
    # the same type keeps merging as before
    (tmp_path / "same.yml").write_text(yaml.safe_dump(
        {"include": "base.yml", "datasets": {"val": {"type": "PairedFolder", "split": "val"}}}))
    same = load_options(tmp_path / "same.yml").datasets["val"]
    assert same.split == "val" and same.dataroot == str(demo_root)


def test_a_key_of_another_type_says_so(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["datasets"]["val"] = {"type": "GGTShards", "urls": "x-{000000..000001}.tar", "dataroot": "/data"}
    with pytest.raises(OptionsError) as e:
        load_options(_write(tmp_path, opt), check_paths=False)
    msg = str(e.value)
    assert "'datasets.val.dataroot' is not an option of dataset type GGTShards" in msg
    assert "PairedFolder" in msg and "prompt" not in msg.split("GGTShards takes")[0]


def test_missing_data_errors_point_to_the_right_place(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path)
    opt["datasets"]["train"]["dataroot"] = "/data/GGT-100K"
    with pytest.raises(OptionsError) as e:
        load_options(_write(tmp_path, opt))
    msg = str(e.value)
    assert "/data/GGT-100K" in msg and "make demo-data" not in msg
    assert "`ggt-ir data fetch ggt100k`" in msg and "docs/data.md#getting-ggt-100k" in msg
    opt["datasets"]["train"]["dataroot"] = "datasets/demo/GGT-demo-missing"
    with pytest.raises(OptionsError) as e:  # the demo's data: how to build it, and where the real data comes from
        load_options(_write(tmp_path, opt))
    assert "`make demo-data`" in str(e.value) and "`ggt-ir data fetch ggt100k`" in str(e.value)


@pytest.mark.parametrize("urls, says", [
    ("datasets/demo/shards/ggt-demo-train-{000000..000001}.tar", "`make demo-data`"),
    ("datasets/shards/ggt100k-train-{000000..000001}.tar", "`ggt-ir shards build datasets/GGT-100K"),
])
def test_missing_shards_say_how_to_make_them(demo_root, tmp_path, urls, says):
    opt = tiny_options(demo_root, tmp_path)
    opt["datasets"]["train"] = {"type": "GGTShards", "urls": str(tmp_path / urls), "gt_size": 16,
                                "batch_size_per_gpu": 2}
    with pytest.raises(OptionsError) as e:
        load_options(_write(tmp_path, opt))
    msg = str(e.value)
    assert "2 of 2 shard(s) not found" in msg and says in msg and "`ggt-ir data fetch ggt100k`" in msg
