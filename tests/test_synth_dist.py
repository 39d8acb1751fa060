"""`ggt-ir synth` under `accelerate launch` with two CPU processes (gloo): the images are split, nothing is done
twice, process 0 merges; a relaunch finds everything done."""
from __future__ import annotations

import json

import pytest
import yaml

from helpers import ROOT, launch_two_processes


@pytest.mark.slow
def test_two_processes_split_the_work_and_merge(tmp_path, demo_root):
    opt = {"include": str(ROOT / "options" / "synth" / "_base.yml"), "name": "two",
           "input": {"path": str(demo_root / "test")}, "output": {"root": str(tmp_path / "runs")},
           "prompting": {"mode": "adaptive", "vlm": {"type": "FakeVLM"}},
           "generators": [{"type": "FakeEdit", "name": "good", "ops": ["denoise"], "candidates": 2},
                          {"type": "OpenCVBaseline", "name": "opencv"}],
           "qc": {"vlm": {"enabled": True}}}
    p = tmp_path / "two.yml"
    p.write_text(yaml.safe_dump(opt))
    r = launch_two_processes(["-m", "ggt_ir", "synth", "-opt", str(p)], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rd = tmp_path / "runs" / "two"
    per_rank = {}
    for rank in (0, 1):
        lines = [json.loads(line) for line in (rd / "manifest" / f"rank-{rank}.jsonl").read_text().splitlines()]
        assert lines and all(rec["rank"] == rank for rec in lines)
        per_rank[rank] = {rec["key"] for rec in lines}
    assert not per_rank[0] & per_rank[1] and len(per_rank[0] | per_rank[1]) == 6
    merged = [json.loads(line) for line in (rd / "manifest.jsonl").read_text().splitlines()]
    assert [m["key"] for m in merged] == sorted(per_rank[0] | per_rank[1])
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["complete"] and summary["stages"]["accepted"] == 6
    assert len(list((rd / "dataset").rglob("GT/*.png"))) == 6
    assert "[synth r0]" in r.stdout + r.stderr and "[synth r1]" in r.stdout + r.stderr
    r2 = launch_two_processes(["-m", "ggt_ir", "synth", "-opt", str(p)], timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "6 already done" in r2.stdout + r2.stderr
    assert sum(len((rd / "manifest" / f"rank-{k}.jsonl").read_text().splitlines()) for k in (0, 1)) == 6
