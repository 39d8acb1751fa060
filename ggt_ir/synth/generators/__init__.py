"""Generators (multimodal foundation models) behind one interface: ``base.Generator``. The table of names is
``ggt_ir.synth.GENERATORS``."""
