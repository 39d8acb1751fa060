"""``ggt-ir <command> ...``: one entry point, each command imported only when it runs."""
from __future__ import annotations

import importlib
import sys

# command -> ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ggt_ir.train.cli:main", "train a model from an option file (same as train.py)"),
    "demo-data": ("ggt_ir.data.demo:main", "build the embedded demo dataset (GGT layout) from bundled photos"),
    "shards": ("ggt_ir.data.shards:main", "build / verify webdataset shards of LQ/HQ pairs (docs/data.md)"),
    "restore": ("ggt_ir.inference.restore:main", "restore an image or a folder with any model or run (docs/model_zoo.md)"),
    "eval": ("ggt_ir.eval.cli:main", "score a run / zoo model / restored folder on eval sets (docs/evaluation.md)"),
    "table": ("ggt_ir.eval.table:main", "paper-style tables (Markdown, LaTeX, CSV, plot) from eval summaries"),
    "plan": ("ggt_ir.train.plan:main", "peak GPU memory of a generative run per component, before loading (docs/generative.md)"),
    "reproduce": ("ggt_ir.reproduce.cli:main", "train, score and tabulate a table file's rows; resumable (docs/evaluation.md)"),
    "merge": ("ggt_ir.inference.merge:main", "merge exported LoRA adapters into full diffusers weights (docs/generative.md)"),
    "synth": ("ggt_ir.synth.cli:main", "LQ photos -> generated HQ targets + 3 QC stages -> a GGT dataset (docs/synthesis.md)"),
    "data": ("ggt_ir.assets.datasets:main", "list / fetch / check GGT-100K and the benchmark sets (docs/data.md)"),
    "weights": ("ggt_ir.assets.weights:main", "list / check / fetch the weights option files need (docs/evaluation.md)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ggt-ir <command> [args]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<12} {help_}")
        print("\n`ggt-ir <command> --help` shows a command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"ggt-ir: unknown command {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""), file=sys.stderr)
        return 2
    module, _, func = COMMANDS[name][0].partition(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
