"""Trainer steps, one file per model family; ``model_type`` in the options names one of :data:`STEPS`.

The contract a step fulfils (and the optimizer step every family shares) is in
``ggt_ir/train/step_api.py``. To add a family: write ``ggt_ir/train/steps/<family>.py`` with a
:class:`ggt_ir.train.step_api.Step` subclass and add one line below.
"""
from ggt_ir.registry import Registry

STEPS = Registry("model_type", {
    "regression": "ggt_ir.train.steps.regression:RegressionStep",
    "foundir": "ggt_ir.train.steps.foundir:FoundIRStep",  # residual diffusion (FoundIR)
    "gan": "ggt_ir.train.steps.gan:GANStep",  # generator + discriminator (Real-ESRGAN, SwinIR-GAN, ...)
    # generative restorers (diffusers + peft): docs/generative.md
    "onestep_sd": "ggt_ir.train.steps.onestep_sd:OneStepSDStep",
    "editor_lora": "ggt_ir.train.steps.editor_lora:EditorLoRAStep",
}, entry_point_group="ggt_ir.steps")
