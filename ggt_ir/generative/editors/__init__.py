"""Instruction-editor families for :class:`ggt_ir.generative.editor.EditorLoRA` (``network_g.family``).

A family is what differs between editors: which components it loads, how its VAE latents are normalised,
how the instruction is encoded, how the transformer is called with the LQ condition, its resolution
buckets and its CFG. Everything else (flow-matching training, the sampler loop, LoRA and its export)
is EditorLoRA's. The shared interface and helpers are in ``base.py``.

To add a family: write ``<name>.py`` with a subclass of :class:`~ggt_ir.generative.editors.base.EditorFamily`
and add a line to the table below.
"""
from ggt_ir.registry import Registry

FAMILIES = Registry(
    "editor family",
    {
        "flux_kontext": "ggt_ir.generative.editors.flux_kontext:FluxKontext",  # FluxKontextPipeline
        "qwen_image_edit": "ggt_ir.generative.editors.qwen_image_edit:QwenImageEdit",  # QwenImageEditPipeline
    },
)
