"""``ggt-ir reproduce``: a paper table from one command.

A table file (options/tables/*.yml, read by :mod:`ggt_ir.eval.table`) names the rows -- training recipes x
data arms (existing / synthetic / GGT-100K), plus zero-shot rows for pretrained models or other methods'
outputs -- and the columns (eval sets x metrics). ``ggt-ir reproduce -opt <table>`` turns it into cells:

* a **train** cell per distinct recipe (identified by the hash of its resolved options, not by folder name);
  launched with ``accelerate launch`` and the table's (or the row's) settings, always with
  ``--resume latest``, so a killed reproduce continues every run from its own last checkpoint;
* an **eval** cell per row: ``ggt-ir eval`` with the table's eval file; done when a summary exists whose
  cell record matches (eval options, scored weights, eval-set files) and whose metric protocol is current;
* the **table**, written by ``ggt-ir table``'s code.

Modules: :mod:`.options` (launch settings), :mod:`.plan` (cells, hashes, status, cost estimates),
:mod:`.run` (execution, locks, logs), :mod:`.emit` (shell script, Slurm job array), :mod:`.cli`.
"""
