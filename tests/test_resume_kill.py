"""A training process killed with SIGKILL at a random moment and resumed (``--resume latest``), possibly several
times, ends with exactly the weights of an uninterrupted run, on every data path (tests/kill_resume.py).

The default suite runs the GGT-100K path (``GGTShards``, 2 data workers) with one kill; the other data paths,
several kills and 2 processes are slow tests. Each run draws its kill moments afresh (the seed is in the message).
"""
import os

import pytest

from ggt_ir.data.demo import build_demo_shards
from kill_resume import trial


@pytest.fixture(scope="module")
def kill_data(demo_root, tmp_path_factory):
    shards = tmp_path_factory.mktemp("kill_shards")
    build_demo_shards(demo_root, shards, per_shard=2)  # 12 train pairs -> 6 shards
    return demo_root, shards


def _check(r: dict, kills: int) -> None:
    where = f"seed {r['seed']}, kills at log iterations {r['killed_at_log_iter']}, runs in {r['killed']}"
    assert 1 <= r["kills"] <= kills and r["resumes"] >= r["kills"], where  # (a start may finish before its kill)
    assert r["max_diff"] <= 1e-6, f"{r['kind']} ({r['procs']} process(es)): resumed weights differ by {r['max_diff']}; {where}"


def _trial(kind, procs, kills, kill_data, tmp_path, total=12):
    seed = int.from_bytes(os.urandom(2), "little")
    r = trial(kind, procs, kills, seed, tmp_path, *kill_data, total=total)
    r["seed"] = seed
    return r


@pytest.mark.parametrize("kind", ["paired", "synthetic", "shards", "shards-exact"])
@pytest.mark.parametrize("workers", [0, 2])
def test_the_loaders_leave_the_global_generators_alone(kind, workers, kill_data, tmp_path):
    """The trainer restores the global RNG states on resume and builds the loader after: building it and
    drawing batches must not move them (a DataLoader without its own generator draws its base seed there)."""
    import random

    import numpy as np
    import torch

    from ggt_ir.train.options import load_options
    from ggt_ir.data import DATASETS
    from kill_resume import options, write

    opt = options(kind, *kill_data, tmp_path / "exp", "rng", workers=workers)
    ds_opts = load_options(write(tmp_path / "rng.yml", opt)).datasets["train"]
    ds = DATASETS.get(ds_opts.type)(ds_opts)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    it = ds.train_loader(seed=0, rank=0, world_size=1, start_iter=3)
    for _ in range(3):
        next(it)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_sigkill_and_resume_on_shards_gives_the_uninterrupted_weights(kill_data, tmp_path):
    _check(_trial("shards", 1, 1, kill_data, tmp_path), 1)


@pytest.mark.slow
# every data path at least once (the 2-process ones cover the 1-process code too); the full 7-setting table is
# `python tests/kill_resume.py` (figures in docs/data.md): the suite keeps to ~10 minutes
@pytest.mark.parametrize("kind,procs", [("synthetic", 1), ("shards-exact", 1), ("shards", 2), ("paired", 2)])
def test_several_sigkills_on_every_data_path(kind, procs, kill_data, tmp_path):
    _check(_trial(kind, procs, 2, kill_data, tmp_path, total=20), 2)


_KILL_AFTER_CHECKPOINT = """
import os, signal, sys
import ggt_ir.train.trainer as T
original = T.save_checkpoint
def save_then_die(acc, root, it, keep, **kwargs):
    path = original(acc, root, it, keep, **kwargs)
    if it == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # right after the checkpoint completed, before anything else
    return path
T.save_checkpoint = save_then_die
from ggt_ir.train.cli import run_and_exit
sys.argv = ["train.py", "-opt", sys.argv[1], "--resume", "latest"]
run_and_exit()
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [4, 6])  # a checkpoint in the middle, and the last one
def test_a_kill_between_checkpoint_and_export_loses_no_export(kill_at, kill_data, tmp_path):
    import subprocess
    import sys

    from kill_resume import command, environment, final_state, max_diff, options, write
    from safetensors.torch import load_file

    demo_root, shards = kill_data
    opt = options("paired", demo_root, shards, tmp_path / "exp", "export_loss", total=6, workers=0, freq=2)
    path = write(tmp_path / "export_loss.yml", opt)
    env = dict(environment(), KILL_AT=str(kill_at))
    p = subprocess.run([sys.executable, "-c", _KILL_AFTER_CHECKPOINT, str(path)], env=env, capture_output=True)
    assert p.returncode == -9  # killed by SIGKILL
    run = tmp_path / "exp" / "export_loss"
    assert (run / "checkpoints" / f"checkpoint-{kill_at}").is_dir()
    assert subprocess.run(command(path, 1, True), env=environment(), capture_output=True).returncode == 0
    missing = [it for it in (2, 4, 6) if not (run / "models" / f"net_g_{it}.safetensors").is_file()]
    latest = {k: v for k, v in load_file(str(run / "models" / "net_g_latest.safetensors")).items()
              if k.startswith("params.")}
    final = {k: v for k, v in final_state(run, 6).items() if k.startswith("params.")}
    assert not missing and max_diff(latest, final) == 0, f"lost exports {missing}"
