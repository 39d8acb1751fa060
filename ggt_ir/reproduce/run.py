"""Running a plan: each cell as a child process (its output also in ``<work>/logs/<cell>.log``), one lock per
run folder, the table at the end.

Trainings always start with ``--resume latest``: a fresh run starts from scratch, a killed one continues from
its newest verified checkpoint with its exact state (tests/test_train.py), so killing ``reproduce`` at any
moment and starting it again loses at most the iterations since the last checkpoint. Evaluations write their
summary last, so a killed evaluation is simply run again. Children stay in reproduce's process group: a
Ctrl-C or a scheduler's kill reaches them too.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import yaml

from ggt_ir.reproduce.options import launch_command, machines
from ggt_ir.reproduce.plan import EvalCell, Plan, TrainCell, eval_status, table_with_runs, train_status
from ggt_ir.utils.fs import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]


class ReproduceError(RuntimeError):
    """A cell failed or cannot start; the message names the cell and its log."""


def train_argv(cell: TrainCell) -> tuple[list[str], dict]:
    script = ROOT / "train.py"
    args = ["-opt", cell.recipe, "--set", *cell.train_overrides(), "--resume", "latest"]
    if script.is_file():
        return launch_command(cell.launch, [str(script), *args])
    return launch_command(cell.launch, ["ggt_ir", "train", *args], module=True)


def command_text(argv_env) -> str:
    """A launch command for display; a multi-node one that needs the scheduler's variables says so."""
    try:
        return " ".join(argv_env()[0])
    except ValueError as e:
        return f"(started on each node by the emitted Slurm script: {e})"


def eval_file(plan: Plan, cell: EvalCell) -> Path:
    return plan.work_dir / "eval" / f"{cell.name}.yml"


def eval_argv(plan: Plan, cell: EvalCell) -> tuple[list[str], dict]:
    return launch_command(cell.launch, ["ggt_ir", "eval", "-opt", str(eval_file(plan, cell))], module=True)


def write_eval_file(plan: Plan, cell: EvalCell) -> Path:
    head = (f"# written by `ggt-ir reproduce -opt {plan.table_file}` for row {cell.row} "
            f"(from {plan.table.eval}); `ggt-ir eval -opt <this file>` scores the row again\n")
    return atomic_write_text(eval_file(plan, cell), head + yaml.safe_dump(cell.raw, sort_keys=False))


@contextlib.contextmanager
def locked(target: Path, what: str) -> Iterator[None]:
    """An exclusive lock beside ``target`` (``.<name>.reproduce-lock``), held while a child works on it; a
    second reproduce on the same run fails at once instead of writing into it too."""
    lock = target.with_name(f".{target.name}.reproduce-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ReproduceError(f"{what}: {target} is in use by {holder} (another `ggt-ir reproduce`?); "
                                 f"wait for it, or remove {lock} if no such process runs") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_logged(argv: list[str], env: dict, log_file: Path, say: Callable[[str], None]) -> int:
    """Run a child, copying its output line by line to our stdout and to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
                             bufsize=1)
        assert p.stdout is not None
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
        sys.stdout.flush()
        return p.wait()


def _log(plan: Plan, cell_id: str) -> Path:
    return plan.work_dir / "logs" / f"{cell_id.replace(':', '_')}.log"


def run_train(plan: Plan, cell: TrainCell, say=print) -> None:
    train_status(cell)
    if cell.status == "done":
        say(f"[reproduce] {cell.id}: done ({cell.run_dir}, {cell.total_iter} iterations, options {cell.train_sha256[:12]})")
        return
    argv, env = train_argv(cell)
    what = "resumes at iteration %d" % cell.done_iter if cell.status == "partial" else "starts"
    say(f"[reproduce] {cell.id} {what} -> {cell.run_dir}\n  $ {' '.join(argv)}")
    main_node = machines(cell.launch) == 1 or str(os.environ.get("SLURM_NODEID", "0")) == "0"
    with (locked(cell.run_dir, cell.id) if main_node else contextlib.nullcontext()):
        rc = run_logged(argv, env, _log(plan, cell.id), say)
    if rc != 0:
        raise ReproduceError(f"{cell.id} failed (exit code {rc}); log: {_log(plan, cell.id)} and {cell.run_dir}")
    train_status(cell)
    if cell.status != "done":
        raise ReproduceError(f"{cell.id} exited but {cell.run_dir} is not complete ({cell.status} at iteration "
                             f"{cell.done_iter} of {cell.total_iter})")


def run_eval(plan: Plan, cell: EvalCell, say=print) -> None:
    from ggt_ir.eval.reference_cache import HashMemo, resolve_cache_dir

    memo = HashMemo(resolve_cache_dir(None, plan.table.results_root))
    eval_status(cell, Path(plan.table.results_root), memo)
    if cell.status == "done":
        say(f"[reproduce] {cell.id}: done ({cell.reason})")
        return
    if cell.status == "waiting":
        raise ReproduceError(f"{cell.id} waits for {cell.train.id} (run it first)")
    write_eval_file(plan, cell)
    argv, env = eval_argv(plan, cell)
    say(f"[reproduce] {cell.id}: {cell.reason} -> scoring\n  $ {' '.join(argv)}")
    with locked(Path(plan.table.results_root) / cell.name, cell.id):
        rc = run_logged(argv, env, _log(plan, cell.id), say)
    if rc != 0:
        raise ReproduceError(f"{cell.id} failed (exit code {rc}); log: {_log(plan, cell.id)}")
    eval_status(cell, Path(plan.table.results_root), memo)
    memo.flush()
    if cell.status != "done":
        raise ReproduceError(f"{cell.id}: the new summary does not match the plan ({cell.reason})")


def write_table(plan: Plan, say=print) -> list[Path]:
    from ggt_ir.eval.table import build_table, to_markdown, write_all

    table = build_table(table_with_runs(plan))
    files = write_all(table, Path(plan.table.out_dir), plan.table.name)
    say(to_markdown(table))
    say("[reproduce] wrote " + ", ".join(str(f) for f in files))
    return files


def save_plan_record(plan: Plan) -> None:
    atomic_write_json(plan.work_dir / "plan.json", plan.as_record())


def run_plan(plan: Plan, only: str | None = None, keep_going: bool = False, say=print) -> int:
    """Run every cell that is not done (or only ``only``), then write the table. Returns an exit code."""
    save_plan_record(plan)
    if only is not None:
        cell = plan.cell(only)
        if cell == "table":
            write_table(plan, say)
        elif isinstance(cell, TrainCell):
            run_train(plan, cell, say)
        else:
            run_eval(plan, cell, say)
        save_plan_record(plan)
        return 0
    failed = []
    for cell in plan.evals:  # each row: its training (once per distinct recipe), then its evaluation
        try:
            if cell.train is not None:
                if cell.train.id in failed:
                    raise ReproduceError(f"{cell.id} skipped: {cell.train.id} failed")
                try:
                    run_train(plan, cell.train, say)
                except ReproduceError:
                    failed.append(cell.train.id)
                    raise
            run_eval(plan, cell, say)
        except ReproduceError as e:
            failed.append(cell.id)
            say(f"[reproduce] error: {e}")
            if not keep_going:
                save_plan_record(plan)
                return 1
        finally:
            save_plan_record(plan)
    if failed:
        say(f"[reproduce] {len(failed)} cell(s) failed: {', '.join(failed)}; the table is not written")
        return 1
    write_table(plan, say)
    return 0


__all__ = ["ReproduceError", "run_plan", "run_train", "run_eval", "write_table", "train_argv", "eval_argv",
           "write_eval_file", "locked"]
