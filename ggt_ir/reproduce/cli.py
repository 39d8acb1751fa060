"""``ggt-ir reproduce``: train what has no finished run, score what has no current summary, write the table.

    ggt-ir reproduce -opt options/tables/generalization.yml               # run it (resumable: run it again)
    ggt-ir reproduce -opt options/tables/generalization.yml --dry-run     # the plan and its device-hours
    ggt-ir reproduce -opt ... --accelerate-config options/accelerate/fsdp_bf16_8gpu.yaml
    ggt-ir reproduce -opt ... --emit shell > reproduce.sh                  # the plan as a script
    ggt-ir reproduce -opt ... --emit slurm --emit-dir jobs/                # Slurm job array + eval job + submit.sh
    ggt-ir reproduce -opt ... --only train:swinir_ggt100k                  # one cell (what the scripts call)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir reproduce", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("-opt", "--opt", required=True, help="table option file (options/tables/*.yml)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimated device-hours; run nothing")
    p.add_argument("--emit", choices=["shell", "slurm"], help="write the plan as a shell script (stdout) or Slurm "
                                                             "batch scripts (--emit-dir) instead of running it")
    p.add_argument("--emit-dir", help="folder for --emit slurm (default: <out_dir>/<name>.reproduce/slurm)")
    p.add_argument("--only", metavar="CELL", help="run one cell: train:<run>, eval:<row> or table")
    p.add_argument("--accelerate-config", metavar="FILE",
                   help="accelerate config for every training (`accelerate launch --config_file FILE`)")
    p.add_argument("--keep-going", action="store_true", help="after a failed cell, go on with the others")
    return p


def describe(plan) -> str:
    """The plan as text: cells, status, launch commands and the cost estimate with its sources."""
    from ggt_ir.reproduce.run import command_text, eval_argv, train_argv

    lines = [f"plan of {plan.table_file}: {len(plan.train)} training(s), {len(plan.evals)} evaluation(s), then "
             f"the table ({plan.table.out_dir}/{plan.table.name}.*)", "", "trainings:"]
    total, unknown = 0.0, []
    for c in plan.train:
        e = c.estimate()
        lines.append(f"  {c.id:<34} {c.status:<8} iteration {c.done_iter:,}/{c.total_iter:,}  "
                     f"options {c.train_sha256[:12]}  -> {c.run_dir}" + ("  (renamed: the name holds another "
                                                                         "training)" if c.renamed else ""))
        if c.status != "done":
            lines.append(f"      $ {command_text(lambda c=c: train_argv(c))}")
            if e["device_hours"] is None:
                unknown.append(c.id)
                lines.append(f"      cost: {e['remaining_iter']:,} iterations x ? s/it x {e['processes']} process(es) "
                             f"({e['source']})")
            else:
                total += e["device_hours"]
                lines.append(f"      cost: {e['remaining_iter']:,} iterations x {e['sec_per_iter']:.4g} s/it x "
                             f"{e['processes']} process(es) = {e['device_hours']:,.2f} device-hours ({e['source']})")
    lines += ["", "evaluations:"]
    for c in plan.evals:
        lines.append(f"  {c.id:<34} {c.status:<8} {c.reason}")
        if c.status != "done":
            lines.append(f"      $ {command_text(lambda c=c: eval_argv(plan, c))}")
    lines += ["", f"estimated device-hours for the trainings left: {total:,.2f}"
              + (f" + unknown for {', '.join(unknown)}" if unknown else "")
              + " (a device = one process: a GPU, or a CPU process on a machine without one)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    a = build_parser().parse_args(argv)
    from ggt_ir.config import OptionsError
    from ggt_ir.reproduce.plan import build_plan
    from ggt_ir.reproduce.run import ReproduceError, run_plan

    planning_only = a.dry_run or a.emit is not None
    try:
        plan = build_plan(a.opt, accelerate_config=a.accelerate_config, check_paths=not planning_only)
    except (OptionsError, ValueError) as e:
        print(f"ggt-ir reproduce: {e}", file=sys.stderr)
        return 2
    extra = ["--accelerate-config", str(Path(a.accelerate_config).resolve())] if a.accelerate_config else []
    try:
        if a.emit == "shell":
            from ggt_ir.reproduce.emit import shell_script

            print(shell_script(plan, extra))
            return 0
        if a.emit == "slurm":
            from ggt_ir.reproduce.emit import slurm_scripts

            out = Path(a.emit_dir) if a.emit_dir else plan.work_dir / "slurm"
            files = slurm_scripts(plan, out, extra)
            print(describe(plan))
            print("\nwrote " + ", ".join(str(f) for f in files) + f"\nsubmit with: bash {out / 'submit.sh'}")
            return 0
        if a.dry_run:
            print(describe(plan))
            return 0
        if a.only is None:
            print(describe(plan), flush=True)
        return run_plan(plan, only=a.only, keep_going=a.keep_going)
    except (ReproduceError, OptionsError, ValueError) as e:
        print(f"ggt-ir reproduce: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
