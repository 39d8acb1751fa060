import sys

from ggt_ir.cli import main

sys.exit(main())
