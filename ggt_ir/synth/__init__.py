"""``ggt-ir synth``: real LQ photos -> generated HQ targets -> three quality-control stages -> a GGT dataset.

    LQ images (folder | list | shards)
      -> prompt: fixed per category, or adaptive (a VLM writes it from the LQ; cached)   prompting.py
      -> N candidates: generators x seeds (local editors through diffusers, or APIs)     generators/
      -> QC 1, metrics: NR quality + gain, low-res fidelity, colour, alignment, size      qc_metrics.py
      -> QC 2, a VLM judges the best candidates: accept | reject | regenerate (K times)   qc_vlm.py
      -> dataset/<split>/<category>/{LQ,GT,prompt}/ + manifest.jsonl                     pipeline.py
      -> QC 3, manual: review page (review.py), then finalize (finalize.py)
    compare.py runs several generators x {fixed, adaptive} prompting on a probe set (the MFM study).

Nothing here is imported by ``import ggt_ir``; the registries below name ``"module:attr"`` strings, imported
when an option file uses them. Add a generator or a VLM with one line in its table. See docs/synthesis.md.
"""
from __future__ import annotations

from ggt_ir.registry import Registry

# generator (MFM) type -> class; each has a nested ``Options`` dataclass (its keys) and ``generate()``
GENERATORS = Registry("synth generator", {
    "FluxKontext": "ggt_ir.synth.generators.local:FluxKontextGenerator",
    "QwenImageEdit": "ggt_ir.synth.generators.local:QwenImageEditGenerator",
    "QwenImageEditPlus": "ggt_ir.synth.generators.local:QwenImageEditPlusGenerator",
    "GeminiImage": "ggt_ir.synth.generators.gemini:GeminiImageGenerator",
    "OpenAIImage": "ggt_ir.synth.generators.openai_images:OpenAIImageGenerator",
    "OpenCVBaseline": "ggt_ir.synth.generators.opencv:OpenCVBaselineGenerator",
    "FakeEdit": "ggt_ir.testing.synth:FakeEditGenerator",
})

# vision-language model type -> class with ``Options`` and ``chat(images, text)``: adaptive prompts and QC 2
VLMS = Registry("synth VLM", {
    "QwenVL": "ggt_ir.synth.vlm:QwenVL",
    "GeminiVLM": "ggt_ir.synth.vlm:GeminiVLM",
    "FakeVLM": "ggt_ir.testing.synth:FakeVLM",
})
