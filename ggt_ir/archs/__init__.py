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
        # any architecture spandrel knows (RRDBNet/ESRGAN, HAT, DAT, SCUNet, SPAN, ...): docs/model_zoo.md
        "Spandrel": "ggt_ir.archs.spandrel_arch:Spandrel",
        "FoundIR": "ggt_ir.archs.foundir_arch:FoundIR",  # residual diffusion: restore(lq), loss = net(lq, gt)
        # discriminators (network_d of a GAN step)
        "UNetDiscriminatorSN": "ggt_ir.archs.unet_discriminator_arch:UNetDiscriminatorSN",  # Real-ESRGAN's
        "PatchGANDiscriminatorSN": "ggt_ir.archs.patchgan_arch:PatchGANDiscriminatorSN",
        "MultiScalePatchGANDiscriminatorSN": "ggt_ir.archs.patchgan_arch:MultiScalePatchGANDiscriminatorSN",
        "VisionAidedDiscriminator": "ggt_ir.archs.vision_aided_arch:VisionAidedDiscriminator",  # frozen DINOv2/ConvNeXt
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
