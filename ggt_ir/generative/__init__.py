"""Generative restorers trained with LoRA on the generic trainer.

* ``onestep_sd.py``  -- :class:`OneStepSD`, a one-step Stable-Diffusion restorer (OSEDiff-style):
  VAE-encode LQ -> UNet at a fixed timestep -> x0 -> VAE-decode, LoRA on the UNet (encoder /
  decoder / other regions) and on the VAE encoder.
* ``vsd.py``         -- variational score distillation regulariser (frozen UNet + "fake score" LoRA UNet).
* ``editor.py``      -- :class:`EditorLoRA`, flow-matching LoRA finetuning of instruction editors as restorers;
* ``editors/``       -- the editor families (FLUX.1-Kontext, Qwen-Image-Edit), one file each, a lazy table.
* ``steps.py``       -- the trainer steps ``onestep_sd`` and ``editor_lora`` (``model_type``).
* ``pretrained.py``  -- loading components with diffusers ``from_pretrained`` (never downloads silently).
* ``lora.py``        -- region adapters, LoRA-only checkpoint state, EMA, peft/diffusers export, merge.
* ``adapters.py``    -- the export record (``ggt_ir_adapter.json``): write, read, rebuild arguments.
* ``tiling.py``      -- tiled VAE / latent inference and colour fix (AdaIN, wavelet).
* ``lpips.py``       -- LPIPS (VGG) loss with weights from local files.

Nothing here is imported by ``import ggt_ir``; the registries import these modules on first use.
Tiny random models for tests and benchmarks: ``ggt_ir/testing/``. See docs/generative.md.
"""
