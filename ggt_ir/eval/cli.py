"""``ggt-ir eval``: score a trained run, a zoo model or a folder of restored images on eval sets.

    ggt-ir eval -opt options/eval/demo.yml
    ggt-ir eval -opt options/eval/demo.yml --restored input            (the LQ baseline -> results/<name>_input)
    ggt-ir eval -opt options/eval/ggt100k.yml --run experiments/swinir_ggt --name swinir_ggt
    ggt-ir eval -opt options/eval/ggt100k.yml --restored outputs/OSEDiff --name osediff --set label.model=OSEDiff
    accelerate launch --num_processes 2 -m ggt_ir eval -opt ...      (each process a disjoint slice)
    ggt-ir eval -opt ... --check-weights                               (what the metrics need, offline)

With --restored the option file's label (which names its model) is dropped: 'input' is labelled
"LQ input", a folder gets its folder name as label.model unless --set label.model=... says otherwise,
and without --name the results go to results/<name>_<input|folder name>, never over the model's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ggt_ir.config import add_import_argument


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir eval", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("-opt", "--opt", help="eval option file (options/eval/*.yml)")
    p.add_argument("--run", help="a trained run folder (experiments/<name>); sets model.run")
    p.add_argument("--checkpoint", help="weights file; sets model.checkpoint")
    p.add_argument("--restored", help="folder of images restored by another method ('input' = score the LQ)")
    p.add_argument("--name", help="results name (results/<name>/)")
    p.add_argument("--results-root", help="results folder (default: results)")
    p.add_argument("--weights-dir", help="local pyiqa weights folder (default: $GGT_IR_WEIGHTS or $TORCH_HOME/hub)")
    p.add_argument("--strict", action="store_true", help="a metric with missing weights is an error, not skipped")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override options, e.g. --set eval.batch_size=8 label.model=X (repeatable)")
    add_import_argument(p)
    p.add_argument("--check-weights", action="store_true",
                   help="list the weight files the configured metrics need and which are missing; no evaluation "
                        "(= ggt-ir weights check -opt FILE)")
    p.add_argument("--list-metrics", action="store_true", help="list metric names with their direction")
    return p


def _overrides(a, file_name: str | None = None) -> list[str]:
    ov = []
    if a.restored:  # the file's label names its model: a baseline row must not carry it
        from pathlib import Path

        what = "input" if a.restored == "input" else (Path(a.restored).name or "restored")
        ov.append("label=" + json.dumps({"model": "LQ input"} if a.restored == "input" else {"model": what}))
        if not a.name and file_name:
            ov.append(f"name={file_name}_{what}")
    ov += list(a.overrides)
    if a.run:
        ov += [f"model.run={a.run}", "restored=null"]
    if a.checkpoint:
        ov += [f"model.checkpoint={a.checkpoint}", "restored=null"]
    if a.restored:
        ov += ["model=null", f"restored={a.restored}"]
    if a.name:
        ov.append(f"name={a.name}")
    if a.results_root:
        ov.append(f"results_root={a.results_root}")
    if a.weights_dir:
        ov.append(f"eval.weights_dir={a.weights_dir}")
    if a.strict:
        ov.append("eval.strict=true")
    return ov


def _file_name(path: str) -> str | None:
    """The ``name:`` of an eval option file (what its results folder is called), or None."""
    try:
        from ggt_ir.config import read_yaml_with_includes

        name = read_yaml_with_includes(path).get("name")
    except Exception:  # noqa: BLE001 - the real load reports any problem of the file
        return None
    return str(name) if name else None


def list_metrics() -> int:
    from ggt_ir.eval.metrics import SPECS

    print("metric          mode  better  notes")
    for name, s in SPECS.items():
        notes = "built in (torch), convention pyiqa|basicsr" if s.builtin else ("random crops, seeded per image" if s.random else "")
        print(f"{name:<15} {s.mode:<5} {'lower' if s.lower_better else 'higher':<7} {notes}")
    print("Any other pyiqa name also works (python -c \"import pyiqa; print(pyiqa.list_models())\").")
    return 0


def check_weights(a) -> int:
    """``--check-weights``: the same as ``ggt-ir weights check -opt FILE`` (with --weights-dir and --set)."""
    from ggt_ir.assets.weights import main as weights_main

    argv = ["check", "-opt", a.opt] + (["--weights-dir", a.weights_dir] if a.weights_dir else [])
    return weights_main(argv + [x for o in a.overrides for x in ("--set", o)])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evaluation never downloads
    a = build_parser().parse_args(argv)
    if a.list_metrics:
        return list_metrics()
    if not a.opt:
        build_parser().error("-opt is required (an eval option file, e.g. options/eval/demo.yml)")
    from ggt_ir.config import OptionsError, import_modules
    from ggt_ir.eval.loop import run_evaluation
    from ggt_ir.eval.options import load_eval_options, use_cpu
    from ggt_ir.eval.sources import EvalError
    from ggt_ir.eval.weights import MissingWeightsError

    if a.check_weights:
        return check_weights(a)
    try:
        import_modules(a.imports, "--import")
        opt = load_eval_options(a.opt, _overrides(a, _file_name(a.opt)), check_paths=not a.check_weights)
    except OptionsError as e:
        print(f"ggt-ir eval: {e}", file=sys.stderr)
        return 2

    from accelerate import PartialState

    state = PartialState(cpu=use_cpu(opt.eval.device))
    rc = 0
    try:
        run_evaluation(opt, state)
    except (EvalError, OptionsError, MissingWeightsError) as e:
        print(f"ggt-ir eval: error: {e}", file=sys.stderr)
        rc = 1
    if state.num_processes > 1:  # gloo can abort at interpreter exit; leave cleanly (dependencies.md 6)
        import torch.distributed as dist

        if rc == 0:
            state.wait_for_everyone()
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
