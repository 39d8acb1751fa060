"""No code from data or weights: crafted manifests and weight files that would write a file if anything in them
were executed; the file must never appear. ``pipe:`` stays available where the user writes it."""
import json
import os

import pytest
import torch

from ggt_ir.config import OptionsError
from ggt_ir.train.options import load_options
from ggt_ir.data.shard_io import PipeRefused, open_url
from ggt_ir.data.shards import main as shards_main
from ggt_ir.data.stream import GGTShardsDataset
from helpers import TINY_SWINIR, tiny_options, write_options
from shard_fixtures import good_sample, tar_shard


def _crafted_manifest(folder, marker, name="evil"):
    """A manifest whose shard 'names' are shell commands and paths elsewhere."""
    tar_shard(folder / f"{name}-train-000000.tar", [good_sample("ok", 1)])
    shards = [{"name": f"pipe:touch {marker}", "samples": 1, "split": "train"},
              {"name": f"{name}-train-000000.tar; touch {marker}", "samples": 1, "split": "train"},
              {"name": "../../etc/passwd", "samples": 1, "split": "train"}]
    path = folder / f"{name}-manifest.json"
    for one in shards:
        path.write_text(json.dumps({"format": "ggt-ir-shards", "name": name, "complete": True, "shards": [one]}))
        yield path, one["name"]


def test_a_manifest_cannot_run_commands_in_the_loader(tmp_path):
    marker = tmp_path / "PWNED"
    for manifest, name in _crafted_manifest(tmp_path, marker):
        with pytest.raises(OptionsError, match="is not a plain file name"):
            GGTShardsDataset(GGTShardsDataset.Options(manifest=str(manifest), split="train"))
        assert not marker.exists(), name


def test_a_manifest_cannot_run_commands_in_verify(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "PWNED"
    monkeypatch.chdir(tmp_path)  # `ggt-ir shards verify .` / `verify evil-manifest.json` from the data folder
    for manifest, name in _crafted_manifest(tmp_path, marker):
        for target in (".", manifest.name, str(tmp_path)):
            assert shards_main(["verify", target, "--jobs", "1"]) == 1
            assert "is not a plain file name" in capsys.readouterr().out
            assert not marker.exists(), (name, target)


def test_pipe_is_honoured_only_where_the_user_wrote_it(tmp_path, demo_root):
    marker = tmp_path / "RAN"
    with pytest.raises(PipeRefused, match="honoured only where you wrote it"):
        open_url(f"pipe:touch {marker}")  # the default: refused
    assert not marker.exists()
    shard = tar_shard(tmp_path / "p-train-000000.tar", [good_sample("k0", 3), good_sample("k1", 4)])
    # urls: in an option file (and --set) are the user's own: pipe: works there
    opt = tiny_options(demo_root, tmp_path / "exp")
    opt["datasets"]["train"] = {"type": "GGTShards", "urls": f"pipe:cat {shard}", "gt_size": 16,
                                "num_worker_per_gpu": 0, "batch_size_per_gpu": 1}
    o = load_options(write_options(tmp_path / "o.yml", opt))
    ds = GGTShardsDataset(o.datasets["train"])
    assert [k for b in ds.eval_loader(num_workers=0) for k in b["key"]] == ["k0", "k1"]
    o2 = load_options(write_options(tmp_path / "o2.yml", opt), [f"datasets.train.urls=pipe:cat {shard}"])
    assert GGTShardsDataset(o2.datasets["train"]).sources[0].allow_pipe
    # a manifest read through pipe: (written by the user) is read, but cannot say where its shards are
    m = tmp_path / "p-manifest.json"
    m.write_text(json.dumps({"shards": [{"name": "p-train-000000.tar", "samples": 2, "split": "train"}]}))
    with pytest.raises(OptionsError, match="cannot say where its shards are"):
        GGTShardsDataset(GGTShardsDataset.Options(manifest=f"pipe:cat {m}"))


class _WritesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_pth_that_would_run_code_is_refused(tmp_path, capsys):
    from ggt_ir.archs import build_network
    from ggt_ir.archs.weights import load_weights, read_state_file
    from ggt_ir.inference.restore import main as restore_main

    marker = tmp_path / "PWNED"
    net = build_network(dict(TINY_SWINIR))
    evil = tmp_path / "evil.pth"
    torch.save({"params": net.state_dict(), "payload": _WritesAFile(marker)}, evil)
    with pytest.raises(ValueError, match="safetensors") as e:
        read_state_file(evil)
    assert "\n" not in str(e.value) and str(evil) in str(e.value)
    assert not marker.exists()
    # through the CLI: one line, exit 2, nothing written
    from shard_fixtures import image, write

    write(tmp_path / "in" / "a.png", image(1))
    spec = json.dumps({k: v for k, v in TINY_SWINIR.items() if k != "type"})
    assert restore_main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--arch", "SwinIR", "--arch-kwargs", spec,
                         "--weights", str(evil), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "safetensors" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    # an official-style checkpoint (a plain dict of tensors) loads the safe way
    plain = tmp_path / "official.pth"
    torch.save({"params": net.state_dict(), "params_ema": net.state_dict()}, plain)
    report = load_weights(build_network(dict(TINY_SWINIR)), plain)
    assert report.param_key == "params_ema" and not report.missing
