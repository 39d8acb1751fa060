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
    assert r["kills"] == kills and r["resumes"] >= kills, where
    assert r["max_diff"] <= 1e-6, f"{r['kind']} ({r['procs']} process(es)): resumed weights differ by {r['max_diff']}; {where}"


def _trial(kind, procs, kills, kill_data, tmp_path, total=6):
    seed = int.from_bytes(os.urandom(2), "little")
    r = trial(kind, procs, kills, seed, tmp_path, *kill_data, total=total)
    r["seed"] = seed
    return r


def test_sigkill_and_resume_on_shards_gives_the_uninterrupted_weights(kill_data, tmp_path):
    _check(_trial("shards", 1, 1, kill_data, tmp_path), 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind,procs", [("paired", 1), ("synthetic", 1), ("shards", 1), ("shards-exact", 1),
                                        ("shards", 2), ("shards-exact", 2), ("paired", 2)])
def test_several_sigkills_on_every_data_path(kind, procs, kill_data, tmp_path):
    _check(_trial(kind, procs, 2, kill_data, tmp_path, total=8), 2)
