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
        "Restormer": "ggt_ir.archs.restormer_arch:Restormer",
        "NAFNet": "ggt_ir.archs.nafnet_arch:NAFNet",
        "NAFNetLocal": "ggt_ir.archs.nafnet_arch:NAFNetLocal",  # official name of NAFNet + TLC
        "PromptIR": "ggt_ir.archs.promptir_arch:PromptIR",
        # generative (diffusers, imported on first use): docs/generative.md
        "OneStepSD": "ggt_ir.generative.onestep_sd:OneStepSD",
        "EditorLoRA": "ggt_ir.generative.editor:EditorLoRA",  # FLUX.1-Kontext / Qwen-Image-Edit
    },
    entry_point_group="ggt_ir.archs",  # plugins of installed packages (registry.py)
)


def build_network(opt: dict):
    """Build ``{type: Name, **kwargs}`` (the ``network_g`` block)."""
    kwargs = dict(opt)
    cls = ARCHS.get(kwargs.pop("type"))
    return cls(**kwargs)
