"""Architectures. A ``network_g.type`` in an option file is a name in :data:`ARCHS`.

One file per architecture (``<name>_arch.py``), readable top to bottom, with the official
constructor arguments and state-dict keys so released checkpoints load. To add one, write the
file and add a line to the table below.
"""
from ggt_ir.registry import Registry

ARCHS = Registry(
    "architecture",
    {
        "SwinIR": "ggt_ir.archs.swinir_arch:SwinIR",
    },
)


def build_network(opt: dict):
    """Build ``{type: Name, **kwargs}`` (the ``network_g`` block)."""
    kwargs = dict(opt)
    cls = ARCHS.get(kwargs.pop("type"))
    return cls(**kwargs)
