"""Evaluate a run, a zoo model or restored images:  accelerate launch evaluate.py -opt options/eval/demo.yml
(the same as `ggt-ir eval`; see docs/evaluation.md)."""
import sys

from ggt_ir.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
