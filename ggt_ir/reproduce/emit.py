"""The plan as files to run elsewhere: a shell script, or Slurm batch scripts (a job array of the trainings,
then one job for the evaluations and the table, submitted with a dependency).

Every step calls ``ggt-ir reproduce -opt <table> --only <cell>``, so the same skip rules apply where they run
(a finished cell returns at once; a partial training resumes). On several machines each node runs the same
command under ``srun``; the script exports ``MASTER_ADDR`` / ``MASTER_PORT`` and accelerate gets the node's
rank from ``$SLURM_NODEID``.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ggt_ir.reproduce.options import SlurmOptions, machines, processes
from ggt_ir.reproduce.plan import Plan


def _reproduce(plan: Plan, cell_id: str, extra: list[str]) -> str:
    cmd = [sys.executable, "-m", "ggt_ir", "reproduce", "-opt", str(plan.table_file.resolve()), "--only", cell_id,
           *extra]
    return " ".join(shlex.quote(c) for c in cmd)


def shell_script(plan: Plan, extra: list[str]) -> str:
    from ggt_ir.reproduce.run import command_text, eval_argv, train_argv

    lines = ["#!/usr/bin/env bash", f"# `ggt-ir reproduce -opt {plan.table_file}` as a script; safe to run again",
             "# (finished cells are skipped, trainings resume from their last checkpoint).", "set -euo pipefail",
             f"cd {shlex.quote(str(Path.cwd()))}", ""]
    for c in plan.train:
        est = c.estimate()
        lines += [f"# {c.id}: {c.status}, {est['remaining_iter']:,} iterations left; runs",
                  f"#   {command_text(lambda c=c: train_argv(c))}", _reproduce(plan, c.id, extra), ""]
    for c in plan.evals:
        lines += [f"# {c.id}: {c.status} ({c.reason}); runs", f"#   {command_text(lambda c=c: eval_argv(plan, c))}",
                  _reproduce(plan, c.id, extra), ""]
    lines += ["# the table", _reproduce(plan, "table", extra), ""]
    return "\n".join(lines)


def _header(s: SlurmOptions, name: str, nodes: int, gpus: int, time: str, log_dir: Path, array: str | None) -> list[str]:
    out = ["#!/usr/bin/env bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={nodes}",
           "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={s.cpus_per_task}", f"#SBATCH --time={time}",
           f"#SBATCH --output={log_dir}/%x-%A_%a.out" if array else f"#SBATCH --output={log_dir}/%x-%j.out"]
    if gpus:
        out.append(f"#SBATCH --gpus-per-node={gpus}")
    for k in ("partition", "account", "qos", "mem"):
        if getattr(s, k):
            out.append(f"#SBATCH --{k}={getattr(s, k)}")
    if array:
        out.append(f"#SBATCH --array={array}")
    out += [f"#SBATCH {e}" for e in s.extra]
    return out + ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", *s.setup]


def slurm_scripts(plan: Plan, out_dir: Path, extra: list[str]) -> list[Path]:
    """Write ``train_array[_N].sbatch`` (one array per launch shape), ``eval.sbatch`` and ``submit.sh``."""
    from ggt_ir.config import to_typed

    s = to_typed(SlurmOptions, dict(plan.table.slurm), str(plan.table_file), prefix="slurm.")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(s.log_dir) if Path(s.log_dir).is_absolute() else out_dir / s.log_dir
    shapes: dict[tuple[int, int], list] = {}
    for c in plan.train:
        if c.status != "done":
            n, m = processes(c.launch), machines(c.launch)
            shapes.setdefault((m, s.gpus_per_node or max(1, n // m) if not c.launch.cpu else 0), []).append(c)
    written, arrays = [], []
    for k, ((nodes, gpus), cells) in enumerate(shapes.items()):
        name = "train_array.sbatch" if len(shapes) == 1 else f"train_array_{k}.sbatch"
        body = _header(s, f"{s.job_name}-train", nodes, gpus, s.time, log_dir, f"0-{len(cells) - 1}")
        if nodes > 1:
            body += ['export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
                     'export MASTER_PORT="${MASTER_PORT:-29500}"']
        body += ["case \"$SLURM_ARRAY_TASK_ID\" in"]
        for i, c in enumerate(cells):
            est = c.estimate()
            run = _reproduce(plan, c.id, extra)
            body += [f"  {i})  # {c.id}: {est['remaining_iter']:,} iterations left",
                     f"    {'srun --ntasks-per-node=1 ' if nodes > 1 else ''}{run} ;;"]
        body += ["esac", ""]
        p = out_dir / name
        p.write_text("\n".join(body))
        written.append(p)
        arrays.append(name)
    ev = _header(s, f"{s.job_name}-eval", 1, s.eval_gpus, s.eval_time, log_dir, None)
    ev += [_reproduce(plan, c.id, extra) for c in plan.evals] + [_reproduce(plan, "table", extra), ""]
    (out_dir / "eval.sbatch").write_text("\n".join(ev))
    written.append(out_dir / "eval.sbatch")
    sub = ["#!/usr/bin/env bash", "# submit the trainings (job arrays), then the evaluations and the table after them",
           "set -euo pipefail", f"cd {shlex.quote(str(out_dir))}", f"mkdir -p {shlex.quote(str(log_dir))}", "deps=\"\""]
    for a in arrays:
        sub += [f'jid=$(sbatch --parsable {a}); echo "submitted {a}: $jid"; deps="${{deps}}:${{jid}}"']
    sub += ['if [ -n "$deps" ]; then sbatch --dependency=afterok${deps} eval.sbatch; else sbatch eval.sbatch; fi', ""]
    (out_dir / "submit.sh").write_text("\n".join(sub))
    written.append(out_dir / "submit.sh")
    for p in written:
        p.chmod(0o755)
    return written


__all__ = ["shell_script", "slurm_scripts"]
