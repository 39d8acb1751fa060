"""``train.py`` / ``ggt-ir train``: parse the command line, load options, train."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback

from ggt_ir.config import add_import_argument


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description="Train an image-restoration model from an option file.",
        epilog="Multi-GPU: accelerate launch --multi_gpu --num_processes 8 train.py -opt X.yml. "
               "See README, 'Distributed training'.")
    p.add_argument("-opt", "--opt", required=True, help="option file (YAML)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. --set train.total_iter=2000 datasets.train.batch_size_per_gpu=8; "
                        "repeatable (--set a=1 --set b=2). They rank above the option file and accelerate's config")
    add_import_argument(p)  # recorded in the run (imports:), so eval/restore --run import it too
    p.add_argument("--resume", metavar="latest|PATH",
                   help="resume from the newest checkpoint of this run ('latest') or a checkpoint folder")
    p.add_argument("--auto_resume", "--auto-resume", action="store_true", help="same as --resume latest")
    p.add_argument("--debug", action="store_true",
                   help="debug run: name prefixed 'debug_', log every iteration, validate and save every 8")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ggt_ir.config import OptionsError, import_modules
    from ggt_ir.train.options import load_options

    try:
        import_modules(args.imports, "--import")
        opt = load_options(args.opt, args.set, debug=args.debug)
        # recorded in the run's options.yml (imports:), so eval/restore --run import them again
        opt.imports = list(dict.fromkeys([*opt.imports, *args.imports]))
    except (OptionsError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ggt_ir.train.checkpoint import CheckpointError
    from ggt_ir.train.trainer import Trainer

    command = " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    try:
        set_keys = {item.split("=", 1)[0].strip() for item in args.set}
        Trainer(opt, resume="latest" if args.auto_resume else args.resume, command=command, set_keys=set_keys).fit()
    except (CheckpointError, OptionsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line on the console, the traceback in the run's log file
        log_file = _log_traceback(opt.name)
        first = str(e).splitlines()[0] if str(e) else ""
        where = f" (traceback in {log_file})" if log_file else ""
        print(f"error: {type(e).__name__}: {first}{where}", file=sys.stderr)
        if args.debug or not log_file:
            traceback.print_exc()
        return 1
    return 0


def _log_traceback(run_name: str) -> str | None:
    """Write the current exception's traceback into the run's log file; its path, or None without one."""
    import logging

    from ggt_ir.train.logging import run_logger_name

    for h in logging.getLogger(run_logger_name(run_name)).handlers:
        if isinstance(h, logging.FileHandler):
            h.stream.write("".join(traceback.format_exc()))
            h.flush()
            return h.baseFilename
    return None


def run_and_exit(argv: list[str] | None = None) -> None:
    """Entry for train.py: under torch.distributed, tear down explicitly and skip interpreter exit,
    where gloo intermittently aborts (SIGABRT) after the work is done."""
    code = main(argv)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
