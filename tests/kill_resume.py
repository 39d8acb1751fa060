"""Kill a real training process with SIGKILL at random moments, resume it, and compare its final weights with an
uninterrupted run (used by tests/test_resume_kill.py; ``python tests/kill_resume.py --trials N`` is the soak).

A run is ``python train.py -opt X.yml --resume latest`` (or ``accelerate launch`` with 2 CPU processes), killed
with ``SIGKILL`` sent to its whole process tree (the launcher, the ranks, which torch starts in sessions of their
own, and their data workers) once the log shows a random iteration, plus a random delay, or during start-up,
so kills land anywhere: in start-up, mid-iteration, in a checkpoint write, between the checkpoint and the
weight export. It is started again until it finishes.
Weights are compared in the final checkpoint folder (``model.safetensors`` + the EMA), which is written
atomically; the exports under ``models/`` are checked separately (see ``lost_exports``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import tiny_options  # noqa: E402

ITER_RE = re.compile(r"iter:\s+(\d+)")


FREQ = 3  # checkpoint every 3 iterations: kills land between checkpoints, resumes go back up to 2 iterations


def options(kind: str, demo_root: Path, shards: Path | None, exp_root: Path, name: str, total: int = 8,
            workers: int = 2, freq: int = FREQ) -> dict:
    """A tiny run of one data path: paired, synthetic, shards (resampled stream) or shards-exact."""
    opt = tiny_options(demo_root, exp_root, name=name, train__total_iter=total, val__val_freq=total,
                       logger__save_checkpoint_freq=freq, logger__keep_last=0)
    train = {"batch_size_per_gpu": 2, "num_worker_per_gpu": workers}
    if kind == "paired":
        train.update(type="PairedFolder", dataroot=str(demo_root), split="train", gt_size=16)
    elif kind == "synthetic":
        train.update(type="SyntheticDegradation", dataroot=str(demo_root), split="train", gt_size=16)
    elif kind in ("shards", "shards-exact"):
        train.update(type="GGTShards", urls=str(shards / "ggt-demo-train-{000000..000005}.tar"), gt_size=16,
                     crops_per_image=2, shuffle_buffer=8, resampled=kind == "shards")
    else:
        raise ValueError(kind)
    opt["datasets"]["train"] = train
    opt["datasets"]["val"]["categories"] = ["rain"]  # one image: validation is not what is tested here
    return opt


def write(path: Path, opt: dict) -> Path:
    path.write_text(yaml.safe_dump(opt))
    return path


def command(opt_path: Path, procs: int, resume: bool) -> list[str]:
    args = [str(ROOT / "train.py"), "-opt", str(opt_path)] + (["--resume", "latest"] if resume else [])
    if procs == 1:
        return [sys.executable, *args]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
            str(procs), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *args]


def environment() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
                ACCELERATE_USE_CPU="true")


def _iteration(run_dir: Path, old_logs: set) -> int:
    """The last iteration that this start's training log shows (0 before its first line)."""
    logs = sorted((p for p in run_dir.glob("train_*.log") if p not in old_logs), key=lambda p: p.stat().st_mtime)
    if not logs:
        return 0
    found = ITER_RE.findall(logs[-1].read_text(errors="replace"))
    return int(found[-1]) if found else 0


def _last_checkpoint(run_dir: Path) -> int:
    its = [int(m.group(1)) for p in (run_dir / "checkpoints").glob("checkpoint-*")
           if (m := re.match(r"checkpoint-(\d+)$", p.name))]
    return max(its, default=0)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torch's launcher starts the ranks in sessions of their own, so killing the
    launcher's process group is not enough)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a training start: the launcher, its ranks and their data workers. The tree is frozen first
    (SIGSTOP, until no new process appears), so it dies at one moment and no child escapes to init."""
    victims: list[int] = []
    while True:
        new = [p for p in [proc.pid] + _descendants(proc.pid) if p not in victims]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        victims += new
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in victims[1:]):
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_to_end(opt_path: Path, procs: int, out: Path, resume: bool = False, timeout: float = 600) -> None:
    with open(out, "a") as f:
        p = subprocess.run(command(opt_path, procs, resume), cwd=ROOT, env=environment(), stdout=f,
                           stderr=subprocess.STDOUT, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"training failed (exit {p.returncode}); output in {out}:\n{out.read_text()[-3000:]}")


def run_with_kills(opt_path: Path, run_dir: Path, procs: int, kills: int, rng: random.Random, out: Path,
                   total: int, timeout: float = 900) -> dict:
    """Start, SIGKILL at a random moment, restart with ``--resume latest``; ``kills`` times, then to the end."""
    done, killed_at, starts = 0, [], 0
    t_end = time.time() + timeout
    while True:
        starts += 1
        old_logs = set(run_dir.glob("train_*.log"))
        with open(out, "a") as f:
            f.write(f"\n===== start {starts}\n")
            f.flush()
            proc = subprocess.Popen(command(opt_path, procs, True), cwd=ROOT, env=environment(), stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        if done < kills:
            first = _last_checkpoint(run_dir) + 1
            if rng.random() < 0.2 or first > total - 1:  # in start-up (imports, building the model, loading)
                deadline = time.time() + rng.uniform(0.5, 6.0)
                # (on a fast, quiet machine start-up can be shorter than the delay: kill by the first new iteration)
                while proc.poll() is None and time.time() < deadline and _iteration(run_dir, old_logs) < first:
                    time.sleep(0.02)
            else:  # once this start's log shows a random iteration after its checkpoint, plus a random delay
                target = rng.randint(first, total - 1)
                while proc.poll() is None and time.time() < t_end and _iteration(run_dir, old_logs) < target:
                    time.sleep(0.003)
                time.sleep(rng.uniform(0.0, 0.05))  # (an iteration of these tiny runs takes ~10-30 ms)
            if proc.poll() is None:
                kill_tree(proc)
                done += 1
                killed_at.append(_iteration(run_dir, old_logs))
                continue
        rc = proc.wait(timeout=max(1.0, t_end - time.time()))
        if rc != 0:
            raise RuntimeError(f"training failed (exit {rc}); output in {out}:\n{out.read_text()[-3000:]}")
        if json.loads((run_dir / "results.json").read_text()).get("iter") == total:
            return {"kills": done, "resumes": starts - 1, "killed_at_log_iter": killed_at}


def final_state(run_dir: Path, total: int) -> dict:
    """Weights (``params.*``) and EMA (``ema.*``) in the checkpoint of the last iteration."""
    ck = run_dir / "checkpoints" / f"checkpoint-{total}"
    state = {f"params.{k}": v for k, v in load_file(str(ck / "model.safetensors")).items()}
    for p in sorted(ck.glob("custom_checkpoint_*.pkl")):
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state.update({f"ema.{k}": v for k, v in obj.items()})
    return state


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def lost_exports(run_dir: Path, total: int, freq: int = FREQ) -> list[int]:
    """Iterations with a checkpoint whose weight export ``models/net_g_<iter>`` is missing."""
    its = sorted(set(range(freq, total + 1, freq)) | {total})
    return [it for it in its if not (run_dir / "models" / f"net_g_{it}.safetensors").is_file()]


def stale_latest(run_dir: Path, total: int) -> bool:
    """Does ``models/net_g_latest`` differ from the final checkpoint's weights?"""
    latest = run_dir / "models" / "net_g_latest.safetensors"
    if not latest.is_file():
        return True
    sd = {k: v for k, v in load_file(str(latest)).items() if k.startswith("params.")}
    ref = {k: v for k, v in final_state(run_dir, total).items() if k.startswith("params.")}
    return sd.keys() != ref.keys() or max_diff(sd, ref) > 0


def trial(kind: str, procs: int, kills: int, seed: int, work: Path, demo_root: Path, shards: Path,
          total: int = 20) -> dict:
    """One uninterrupted run and one killed-and-resumed run of the same options; their final difference."""
    rng = random.Random(seed)
    res = {"kind": kind, "procs": procs}
    for label in ("straight", "killed"):
        opt = options(kind, demo_root, shards, work / "exp", f"{kind}_{procs}p_{seed}_{label}", total)
        opt["manual_seed"] = seed
        path = write(work / f"{kind}_{procs}p_{seed}_{label}.yml", opt)
        run_dir = work / "exp" / opt["name"]
        out = work / f"{opt['name']}.out"
        if label == "straight":
            run_to_end(path, procs, out)
        else:
            res.update(run_with_kills(path, run_dir, procs, kills, rng, out, total))
        res[label] = run_dir
    res["max_diff"] = max_diff(final_state(res["straight"], total), final_state(res["killed"], total))
    res["lost_exports"] = lost_exports(res["killed"], total)
    res["stale_latest"] = stale_latest(res["killed"], total)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="SIGKILL/resume soak: trials per data path, max weight difference")
    p.add_argument("--work", default="/tmp/ggt_kill_soak")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--kills", type=int, default=2)
    p.add_argument("--total", type=int, default=20)
    p.add_argument("--kinds", default="paired:1,synthetic:1,shards:1,shards-exact:1,shards:2,shards-exact:2")
    a = p.parse_args(argv)
    from ggt_ir.data.demo import build_demo, build_demo_shards

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    demo_root = build_demo(work / "demo", size=32, train_per_category=2, test_per_category=1)
    shards = work / "shards"
    build_demo_shards(demo_root, shards, per_shard=2)
    rows = []
    for spec in a.kinds.split(","):
        kind, procs = spec.split(":")
        for t in range(a.trials):
            r = trial(kind, int(procs), a.kills, 1000 + t, work, demo_root, shards, a.total)
            rows.append(r)
            print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}), flush=True)
    print("\n| data path | processes | trials | kills | resumes | max weight difference | lost exports | stale net_g_latest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["procs"]), []).append(r)
    for (kind, procs), rs in groups.items():
        print(f"| {kind} | {procs} | {len(rs)} | {sum(r['kills'] for r in rs)} | {sum(r['resumes'] for r in rs)} | "
              f"{max(r['max_diff'] for r in rs):.2e} | {sum(len(r['lost_exports']) for r in rs)} | "
              f"{sum(bool(r['stale_latest']) for r in rs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
