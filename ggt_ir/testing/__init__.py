"""Test and benchmark scaffolding (as accelerate's ``test_utils`` and diffusers' ``testing_utils``).

* ``pipelines.py`` -- tiny random SD / FLUX.1-Kontext / Qwen-Image-Edit folders in diffusers layout,
  loaded through the same ``from_pretrained`` path as real weights;
* ``weights.py``   -- random metric / LPIPS weight files in the layout the offline loaders read.

Nothing here is imported by ``import ggt_ir`` or by the model code; tests and ``bench/`` import it.
``python -m ggt_ir.testing --out <folder> [--family sd | flux_kontext | qwen_image_edit]`` writes a tiny folder.
"""
