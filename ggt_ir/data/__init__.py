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


def _is_demo_path(path: str) -> bool:
    return "demo" in str(path).replace("\\", "/").split("/")[:3] or "datasets/demo" in str(path)


# where the real data comes from (docs/data.md, "Getting GGT-100K"; `ggt-ir data` is ggt_ir/assets)
REAL_DATA = ("GGT-100K: `ggt-ir data fetch ggt100k` (into datasets/GGT-100K; docs/data.md#getting-ggt-100k); "
             "the eval benchmarks: `ggt-ir data list`, `ggt-ir data fetch NAME`")


def missing_data_hint(path: str) -> str:
    """What to do about a data path that does not exist: build the demo set, or get the real data."""
    if _is_demo_path(path):
        return f"Build the demo data with `make demo-data` (the real data: {REAL_DATA}), or fix the path."
    return f"Get the data first ({REAL_DATA}), or fix the path."


def missing_shards_hint(url: str) -> str:
    """What to do about shards that do not exist: the demo's come with the demo data, others are built."""
    if _is_demo_path(url):
        return f"Build the demo data (and its shards) with `make demo-data` (the real data: {REAL_DATA}), or fix the pattern."
    return ("Build them with `ggt-ir shards build` (docs/data.md; GGT-100K: `ggt-ir data fetch ggt100k`, then "
            "`ggt-ir shards build datasets/GGT-100K --out datasets/shards --name ggt100k`), or fix the pattern.")


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
