"""`ggt-ir reproduce`: cells identified by option and weight hashes, launch commands, cost estimates, scripts,
and (slow) the demo table end to end with a real SIGKILL in the middle."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from reproduce_fixtures import write_demo_table

from ggt_ir.config import OptionsError, options_to_yaml
from ggt_ir.reproduce.cli import main as reproduce_main
from ggt_ir.reproduce.options import AccelerateOptions, launch_command, parse_accelerate
from ggt_ir.reproduce.plan import build_plan, train_hash

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def weights(tmp_path_factory) -> Path:
    from ggt_ir.testing.weights import write_random_weights

    wd = tmp_path_factory.getbasetemp() / "reproduce_weights"
    if not (wd / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth").is_file():
        write_random_weights("lpips", wd)
    return wd


def _fake_finished_run(cell) -> Path:
    """A run folder as the trainer leaves a finished run: options.yml, results.json, the last export."""
    d = cell.run_dir
    (d / "models").mkdir(parents=True)
    (d / "options.yml").write_text("# command: test\n" + options_to_yaml(cell.opt))
    (d / "results.json").write_text(json.dumps({"iter": cell.total_iter}))
    (d / "models" / f"net_g_{cell.total_iter}.safetensors").write_bytes(b"weights")
    return d


def test_runs_are_found_by_options_hash_not_by_name(tmp_path, demo_root, weights):
    table = write_demo_table(tmp_path, demo_root, weights)
    plan = build_plan(table)
    assert [c.id for c in plan.train] == ["train:swinir_existing", "train:swinir_ggt100k", "train:nafnet_existing",
                                          "train:nafnet_ggt100k"]
    assert {c.status for c in plan.train} == {"todo"} and len({c.train_sha256 for c in plan.train}) == 4
    assert [c.status for c in plan.evals] == ["waiting"] * 4 + ["todo"]
    first = plan.train[0]
    run = _fake_finished_run(first)
    again = build_plan(table)
    assert again.train[0].status == "done" and again.train[0].run_dir == run
    assert again.evals[0].status == "todo" and again.evals[0].reason == "no summary yet"
    # renamed by hand: still the same training
    moved = run.with_name("my_swinir_run")
    run.rename(moved)
    again = build_plan(table)
    assert again.train[0].run_dir == moved and again.train[0].status == "done"
    assert again.evals[0].name == "my_swinir_run"
    # a folder with the recipe's name but other options is never reused
    other = tmp_path / "exp" / "swinir_ggt100k"
    other.mkdir(parents=True)
    (other / "options.yml").write_text(options_to_yaml(first.opt))
    ggt = build_plan(table).train[1]
    assert ggt.renamed and ggt.run_dir.name == f"swinir_ggt100k-{ggt.train_sha256[:8]}"
    assert f"name={ggt.run_dir.name}" in ggt.train_overrides()
    # what changes the weights changes the hash; names, paths and logging do not
    t = yaml.safe_load(table.read_text())
    t["rows"][0]["set"] = ["train.optim_g.lr=0.001"]
    t["train_set"] = ["logger.print_freq=5"]
    table.write_text(yaml.safe_dump(t))
    changed = build_plan(table)
    assert changed.train[0].status == "todo" and changed.train[0].train_sha256 != first.train_sha256
    assert changed.train[1].train_sha256 == ggt.train_sha256  # logger.* is not part of the identity
    assert train_hash(first.opt) == first.train_sha256


def test_bad_rows_and_launch_settings_are_one_line_errors(tmp_path, demo_root, weights):
    table = write_demo_table(tmp_path, demo_root, weights)
    t = yaml.safe_load(table.read_text())
    t["rows"][0]["restored"] = "input"
    table.write_text(yaml.safe_dump(t))
    with pytest.raises(OptionsError, match=r"rows\[0\]: give one of recipe, pretrained, restored"):
        build_plan(table)
    with pytest.raises(OptionsError, match="num_process"):
        parse_accelerate({"num_proceses": 8}, src="t.yml")
    t["rows"][0].pop("restored")
    t["rows"][1]["recipe"] = str(tmp_path / "missing.yml")
    table.write_text(yaml.safe_dump(t))
    assert reproduce_main(["-opt", str(table), "--dry-run"]) == 2


def test_launch_commands_for_one_gpu_to_n_nodes(monkeypatch):
    argv, env = launch_command(AccelerateOptions(num_processes=8), ["train.py", "-opt", "x.yml"])
    # no --mixed_precision unless the table gives one: a launch flag would override the recipe's own
    assert argv[1:] == ["launch", "--num_processes", "8", "--num_machines", "1",
                        "--dynamo_backend", "no", "--multi_gpu", "train.py", "-opt", "x.yml"]
    argv, _ = launch_command(AccelerateOptions(num_processes=8, mixed_precision="bf16"), ["train.py"])
    assert argv[argv.index("--mixed_precision") + 1] == "bf16"
    argv, env = launch_command(AccelerateOptions(num_processes=2, cpu=True), ["t.py"])
    assert "--multi_gpu" in argv and "--cpu" not in argv and env["ACCELERATE_USE_CPU"] == "true"
    argv, _ = launch_command(AccelerateOptions(config_file="fsdp.yaml"), ["t.py"])
    assert argv[1:] == ["launch", "--config_file", "fsdp.yaml", "t.py"]  # the config file decides the rest
    with pytest.raises(ValueError, match="machine_rank"):
        launch_command(AccelerateOptions(num_processes=16, num_machines=2), ["t.py"])
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("MASTER_ADDR", "node07")
    argv, _ = launch_command(AccelerateOptions(num_processes=16, num_machines=2), ["t.py"])
    i = argv.index("--machine_rank")
    assert argv[i:i + 6] == ["--machine_rank", "1", "--main_process_ip", "node07", "--main_process_port", "29500"]
    assert launch_command(AccelerateOptions(launcher="python"), ["ggt_ir", "eval"], module=True)[0][1:] == [
        "-m", "ggt_ir", "eval"]


def test_dry_run_cost_sources_and_emitted_scripts(tmp_path, demo_root, weights, capsys):
    table = write_demo_table(tmp_path, demo_root, weights)
    t = yaml.safe_load(table.read_text())
    t["cost"] = {"SwinIR": {"sec_per_iter": 0.5, "source": "bench note X"}}
    t["accelerate"] = {"num_processes": 16, "num_machines": 2}
    t["slurm"] = {"partition": "gpu", "setup": ["source .venv/bin/activate"]}
    table.write_text(yaml.safe_dump(t))
    plan = build_plan(table, check_paths=False)
    # a partly trained run: its own log gives the measured seconds per iteration
    nafnet = plan.train[2]
    nafnet.run_dir.mkdir(parents=True)
    (nafnet.run_dir / "options.yml").write_text(options_to_yaml(nafnet.opt))
    (nafnet.run_dir / "train_nafnet_existing_1.log").write_text(
        "[nafnet_exist..][epoch:  0, iter:       1, lr:(2.000e-03)] [eta: 0:00:01, time (data): 0.200 (0.010)] l_pix: 1\n"
        "[nafnet_exist..][epoch:  0, iter:       2, lr:(2.000e-03)] [eta: 0:00:01, time (data): 0.400 (0.010)] l_pix: 1\n"
        "[nafnet_exist..][epoch:  0, iter:       3, lr:(2.000e-03)] [eta: 0:00:01, time (data): 0.300 (0.010)] l_pix: 1\n")
    assert reproduce_main(["-opt", str(table), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 iterations x 0.5 s/it x 16 process(es) = 0.01 device-hours (bench note X)" in out
    assert "6 iterations x 0.3 s/it x 16 process(es)" in out and "measured: median of 3 log lines" in out
    assert "unknown for train:nafnet_ggt100k" in out
    assert reproduce_main(["-opt", str(table), "--emit", "shell"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/usr/bin/env bash") and script.count("--only train:") == 4
    assert "--only eval:lq_input_zero-shot" in script and script.rstrip().endswith("--only table")
    out_dir = tmp_path / "jobs"
    assert reproduce_main(["-opt", str(table), "--emit", "slurm", "--emit-dir", str(out_dir)]) == 0
    array = (out_dir / "train_array.sbatch").read_text()
    assert "#SBATCH --array=0-3" in array and "#SBATCH --nodes=2" in array and "#SBATCH --gpus-per-node=8" in array
    assert "#SBATCH --partition=gpu" in array and "source .venv/bin/activate" in array
    assert "MASTER_ADDR" in array and "srun --ntasks-per-node=1" in array
    assert "--dependency=afterok" in (out_dir / "submit.sh").read_text()
    assert "--only table" in (out_dir / "eval.sbatch").read_text()
    capsys.readouterr()


def test_a_busy_run_is_locked(tmp_path):
    from ggt_ir.reproduce.run import ReproduceError, locked

    with locked(tmp_path / "run", "train:x"):
        with pytest.raises(ReproduceError, match="in use by pid"):
            with locked(tmp_path / "run", "train:x"):
                pass
    with locked(tmp_path / "run", "train:x"):  # released
        pass


def test_eval_cells_are_redone_when_options_data_or_protocol_change(tmp_path, demo_root, weights):
    """The zero-shot row, scored in this process: done; then each kind of change makes it todo again."""
    from ggt_ir.eval.loop import run_evaluation
    from ggt_ir.eval.options import load_eval_options
    from ggt_ir.reproduce.run import write_eval_file

    table = write_demo_table(tmp_path, demo_root, weights)
    plan = build_plan(table)
    cell = plan.evals[-1]
    run_evaluation(load_eval_options(write_eval_file(plan, cell)))
    assert build_plan(table).evals[-1].status == "done"
    summary_file = tmp_path / "results" / cell.name / "summary.json"
    s = json.loads(summary_file.read_text())
    s["protocol"]["versions"]["pyiqa"] = "0.0.1"
    summary_file.write_text(json.dumps(s))
    c = build_plan(table).evals[-1]
    assert c.status == "todo" and "pyiqa is" in c.reason
    run_evaluation(load_eval_options(write_eval_file(plan, cell)))
    lq = sorted(demo_root.glob("test/rain/LQ/*.png"))[0]
    st = lq.stat()
    os.utime(lq, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an eval-set file rewritten
    try:
        c = build_plan(table).evals[-1]
        assert c.status == "todo" and "eval-set files changed" in c.reason
    finally:
        os.utime(lq, ns=(st.st_atime_ns, st.st_mtime_ns))
    t = yaml.safe_load(table.read_text())
    t["eval_set"] = ["eval.max_size_diff=4"]
    table.write_text(yaml.safe_dump(t))
    c = build_plan(table).evals[-1]
    assert c.status == "todo" and "eval options changed" in c.reason



def test_shipped_tables_plan(monkeypatch, capsys):
    """The table files of docs/reproduce.md load and plan from the repository root (their paths are relative)."""
    monkeypatch.chdir(ROOT)
    assert reproduce_main(["-opt", "options/tables/demo.yml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 training(s), 3 evaluation(s)" in out and "train:swinir_demo_ggt100k" in out
    assert "--cpu" in out and "--resume latest" in out
    assert reproduce_main(["-opt", "options/tables/generalization.yml", "--dry-run"]) == 0
    assert "9 training(s), 9 evaluation(s)" in capsys.readouterr().out

# --------------------------------------------------------------------------- end to end
def _reproduce(table: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "ggt_ir", "reproduce", "-opt", str(table)], cwd=table.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_demo_table_end_to_end_with_a_sigkill(tmp_path, demo_root, weights):
    """Two tiny models x two arms plus a zero-shot row on the demo data, trained with `accelerate launch` on the
    CPU and SIGKILLed (the whole process group, as a scheduler does) in the middle of the third training, then
    started again: the killed training resumes from its checkpoint (`--resume latest`), the rows finished before
    the kill are neither retrained nor scored again, and the resumed cell equals the same cell trained straight
    through (same weights, same scores)."""
    table = write_demo_table(tmp_path / "b", demo_root, weights)
    exp, results = tmp_path / "b" / "exp", tmp_path / "b" / "results"
    p = _reproduce(table, start_new_session=True)
    deadline = time.time() + 900
    while not (exp / "nafnet_existing" / "checkpoints" / "checkpoint-3").is_dir():
        assert p.poll() is None and time.time() < deadline, "reproduce ended before the kill"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (exp / "nafnet_existing" / "results.json").exists()  # killed in the middle of that training
    assert not (tmp_path / "b" / "tables" / "demo.md").exists()  # the table is written last
    finished = ("swinir_existing", "swinir_ggt100k")
    scored_at = {c: (results / c / "summary.json").stat().st_mtime_ns for c in finished}
    p = _reproduce(table)
    out = p.communicate(timeout=900)[0]
    assert p.returncode == 0, out[-4000:]
    for c in finished:
        assert f"train:{c}: done" in out and f"eval:{c}: done" in out, out
        assert len((exp / c / "commands.txt").read_text().splitlines()) == 1  # never retrained
        assert (results / c / "summary.json").stat().st_mtime_ns == scored_at[c]  # never scored again
    assert "train:nafnet_existing resumes at iteration 3" in out
    log = "".join(f.read_text() for f in (exp / "nafnet_existing").glob("train_*.log"))
    assert "resumed from" in log and "checkpoint-3" in log

    # the killed cell, trained straight through in a table of its own: the same weights and scores
    straight = write_demo_table(tmp_path / "a", demo_root, weights, models=("NAFNet",), arms=("existing",),
                                zero_shot=False)
    p = _reproduce(straight)
    out = p.communicate(timeout=900)[0]
    assert p.returncode == 0, out[-4000:]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "exp" / "nafnet_existing" / "models" / "net_g_6.safetensors"))
    b = load_file(str(exp / "nafnet_existing" / "models" / "net_g_6.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scores = lambda root: json.loads((root / "nafnet_existing" / "summary.json").read_text())["metrics"]  # noqa: E731
    assert scores(tmp_path / "a" / "results") == scores(results)

    md = (tmp_path / "b" / "tables" / "demo.md").read_text()
    assert "| SwinIR | Δ (GGT-100K − Existing) |" in md and "| NAFNet | Δ (GGT-100K − Existing) |" in md, md
    assert "LQ input" in md
    summary = json.loads((results / "swinir_ggt100k" / "summary.json").read_text())
    assert summary["protocol"]["metrics"]["lpips"]["weights"] and summary["cell"]["weights_sha256"]
