"""``python -m ggt_ir.testing --out datasets/tiny-sd [--family flux_kontext]``."""
from ggt_ir.testing.pipelines import main

raise SystemExit(main())
