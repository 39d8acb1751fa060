"""Datasets. A dataset ``type:`` in an option file is a name in :data:`DATASETS`.

Contract of a dataset class (see ``paired_folder.py`` for the reference one):

* a nested dataclass ``Options`` with the option keys it accepts and a
  ``check(src, key_path)`` method that raises :class:`ggt_ir.config.OptionsError` for bad
  paths before any model is built;
* ``__init__(self, opts)``;
* for training: ``train_loader(seed, rank, world_size, start_iter) -> Iterator[dict]``, an endless
  stream of this rank's batches that starts after ``start_iter`` micro-batches already served;
* for validation: map-style ``__len__`` / ``__getitem__(i) -> dict`` (the trainer gives each
  rank a disjoint slice).

Samples and batches are dicts: ``lq``/``gt`` float tensors in [0, 1], CHW (BCHW in batches),
and ``key``, ``category``, ``prompt`` strings (lists in batches). A training batch may also carry
``skipped``: ``{"<shard>:<key>": reason}``, the damaged samples its producing reader found since its previous
batch, each once per pass (``GGTShards``); the trainer counts the distinct ones. ``LQFolder`` samples have no
``gt``.
"""
from ggt_ir.registry import Registry


def missing_data_hint(path: str) -> str:
    """What to do about a data path that does not exist: build the demo set, or get the real data."""
    if "demo" in str(path).replace("\\", "/").split("/")[:3] or "datasets/demo" in str(path):
        return "Build the demo data with `make demo-data`, or fix the path."
    return ("Get the data first (GGT-100K: docs/data.md#getting-ggt-100k; the eval benchmarks: docs/data.md), "
            "or fix the path.")


DATASETS = Registry(
    "dataset",
    {
        "PairedFolder": "ggt_ir.data.paired_folder:PairedFolderDataset",
        # BasicSR's name for the same thing, so BasicSR option files read naturally
        "PairedImageDataset": "ggt_ir.data.paired_folder:PairedFolderDataset",
        # webdataset shards (``ggt-ir shards build``), streamed; docs/data.md
        "GGTShards": "ggt_ir.data.stream:GGTShardsDataset",
        # HQ images + on-the-fly Real-ESRGAN-style degradation (the synthetic comparison arm)
        "SyntheticDegradation": "ggt_ir.data.synthetic:SyntheticDegradationDataset",
        # LQ-only folders (real-world benchmarks without ground truth)
        "LQFolder": "ggt_ir.data.lq_folder:LQFolderDataset",
    },
    entry_point_group="ggt_ir.datasets",  # plugins of installed packages (registry.py)
)
