"""``ggt-ir synth``: run a synthesis, write its review page, finalize it, or run the MFM study.

    ggt-ir synth -opt options/synth/<x>.yml [--set key=value ...]      run (resumes by itself)
    ggt-ir synth review RUN [--serve [--port N]]                        QC 3: the review page (and a write-back server)
    ggt-ir synth finalize RUN --decisions decisions.json [--out DIR]    the final dataset + statistics
    ggt-ir synth compare -opt options/synth/<x>.yml                    generators x {fixed, adaptive} on a probe set

Multi-process: ``accelerate launch [--multi_gpu --num_processes N] -m ggt_ir synth -opt X.yml``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

SUBCOMMANDS = ("review", "finalize", "compare")


def _run_parser(prog: str, what: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=what)
    p.add_argument("-opt", "--opt", required=True, help="option file (options/synth/*.yml)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides")
    return p


def _exit_distributed(state, rc: int) -> int:
    """gloo can abort at interpreter exit; leave cleanly (docs: dependencies.md 6)."""
    if state is not None and state.num_processes > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            if rc == 0:
                state.wait_for_everyone()
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _run(argv: list[str], compare: bool) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights silently
    prog = "ggt-ir synth" + (" compare" if compare else "")
    a = _run_parser(prog, __doc__.splitlines()[0]).parse_args(argv)
    from ggt_ir.config import OptionsError
    from ggt_ir.registry import RegistryError
    from ggt_ir.synth.options import load_synth_options

    try:
        opt = load_synth_options(a.opt, a.set)
    except (OptionsError, RegistryError, KeyError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    from ggt_ir.eval.options import use_cpu
    from ggt_ir.synth.http import APIError
    from ggt_ir.synth.inputs import InputError
    from ggt_ir.synth.pipeline import SynthError

    state = PartialState(cpu=use_cpu("auto"))  # a multi-process CPU group needs cpu=True
    command = " ".join(shlex.quote(x) for x in ["ggt-ir", "synth", *(["compare"] if compare else []), *argv])
    rc = 0
    try:
        if compare:
            from ggt_ir.synth.compare import run_compare

            run_compare(opt, state, command=command)
        else:
            from ggt_ir.synth.pipeline import run_synth

            run_synth(opt, state, command=command)
    except (SynthError, InputError, APIError, OptionsError, KeyError) as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        rc = 1
    return _exit_distributed(state, rc)


def _review(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ggt-ir synth review", description="write the review page of a run (QC 3)")
    p.add_argument("run", help="the run folder (<output.root>/<name>)")
    p.add_argument("--serve", action="store_true", help="also serve it on 127.0.0.1 and write decisions back")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--only-accepted", action="store_true",
                   help="list only the automatically accepted images (default: all, accepted first)")
    p.add_argument("--category", help="only this category")
    p.add_argument("--limit", type=int, default=0, help="at most N images on the page (0 = all)")
    a = p.parse_args(argv)
    from ggt_ir.synth.review import ReviewError, serve, write_review

    try:
        page = write_review(a.run, only_accepted=a.only_accepted, category=a.category, limit=a.limit)
    except ReviewError as e:
        print(f"ggt-ir synth review: {e}", file=sys.stderr)
        return 2
    print(f"review page: {page}  (keys: a accept, r reject, 1-9 pick a candidate, <- -> move, d download decisions)")
    if a.serve:
        serve(a.run, a.port)
    return 0


def _finalize(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ggt-ir synth finalize", description="the final dataset after manual review")
    p.add_argument("run", help="the run folder")
    p.add_argument("--decisions", help="decisions JSON from the review page (default: RUN/review/decisions.json)")
    p.add_argument("--out", help="output folder (default: RUN/final)")
    p.add_argument("--undecided", choices=["auto", "drop"], default="auto",
                   help="images without a manual decision: keep the automatic decision (auto) or drop them")
    a = p.parse_args(argv)
    from ggt_ir.synth.finalize import FinalizeError, finalize

    try:
        finalize(a.run, a.decisions, out=a.out, undecided=a.undecided)
    except FinalizeError as e:
        print(f"ggt-ir synth finalize: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "review":
        return _review(argv[1:])
    if argv and argv[0] == "finalize":
        return _finalize(argv[1:])
    if argv and argv[0] == "compare":
        return _run(argv[1:], compare=True)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return _run(argv, compare=False)


if __name__ == "__main__":
    sys.exit(main())
