"""Getting what the recipes and benchmarks need onto this machine: data sets and weights.

* :mod:`ggt_ir.assets.hub` -- the shared download helpers: Hugging Face Hub listings and snapshots
  (``huggingface_hub``), resumable plain-URL downloads, disk-space checks, archive extraction;
* :mod:`ggt_ir.assets.datasets` -- the catalogue of data sets (GGT-100K and the real-world benchmarks, with
  source, licence, size and file count) and ``ggt-ir data {list,fetch,check}``; the ``expected_images`` check
  of eval sets;
* :mod:`ggt_ir.assets.weights` -- ``ggt-ir weights {list,check,fetch}``: what option files need (metric weights
  from the catalogue in :mod:`ggt_ir.eval.weights`, LPIPS for training, base models as Hub ids).

Nothing here downloads unless a ``fetch`` command runs; nothing heavy is imported at module level.
"""
