"""Paired image folders: an LQ folder and a GT folder with the same stems, or one root in a
GGT-style layout (``<root>/[split/][category/]{LQ,GT}/<name>.<ext>``; see ``pairing.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import torch

from ggt_ir.config import OptionsError, at_least
from ggt_ir.data import missing_data_hint
from ggt_ir.data.pairing import Pair, find_pairs, pairs_from_two_folders
from ggt_ir.data.sampler import ResumableBatchSampler
from ggt_ir.data.transforms import check_pair_size, paired_flip_rot, paired_random_crop
from ggt_ir.utils.image_io import read_image, to_tensor


def collate(samples: list[dict]) -> dict:
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def resumable_train_loader(dataset, seed: int, rank: int, world_size: int, start_iter: int) -> Iterator[dict]:
    """Endless training batches of a map-style dataset (``dataset.opts`` holds its loader options) for one rank,
    starting after ``start_iter`` batches: the same batches whatever the number of workers (exact resume)."""
    o = dataset.opts
    sampler = ResumableBatchSampler(len(dataset), o.batch_size_per_gpu, seed=seed, rank=rank,
                                    world_size=world_size, start=start_iter)
    dataset.batches_per_epoch = sampler.batches_per_epoch  # shown as the epoch in the training log
    return iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=o.num_worker_per_gpu, collate_fn=collate,
        pin_memory=o.pin_memory, persistent_workers=False,
        prefetch_factor=4 if o.num_worker_per_gpu else None,
        # its own generator: creating the loader must not draw from the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
    ))


class PairedFolderDataset(torch.utils.data.Dataset):
    @dataclass
    class Options:
        name: str = "paired"
        type: str = "PairedFolder"
        dataroot: Optional[str] = None  # a GGT-style tree; or give both folders below
        dataroot_lq: Optional[str] = None
        dataroot_gt: Optional[str] = None
        split: Optional[str] = None  # keep only this split of a GGT-style tree (train | test)
        categories: Optional[List[str]] = None  # keep only these categories (default: all)
        scale: int = at_least(1, 1)
        gt_size: int = at_least(0, 0)  # training crop size on the GT side; 0 = whole images
        use_hflip: bool = True
        use_rot: bool = True
        batch_size_per_gpu: int = at_least(1, 1)
        num_worker_per_gpu: int = at_least(2, 0)
        pin_memory: bool = False
        prompt: str = ""  # fixed prompt passed to the batch (generative models)

        def check(self, src: str, key: str) -> None:
            if self.dataroot:
                if not Path(self.dataroot).is_dir():
                    raise OptionsError(f"{src}: {key}.dataroot: folder not found: {self.dataroot}. "
                                       + missing_data_hint(self.dataroot))
            else:
                for k in ("dataroot_lq", "dataroot_gt"):
                    v = getattr(self, k)
                    if not v:
                        raise OptionsError(f"{src}: {key} needs 'dataroot' or both 'dataroot_lq' and 'dataroot_gt'")
                    if not Path(v).is_dir():
                        raise OptionsError(f"{src}: {key}.{k}: folder not found: {v}. {missing_data_hint(v)}")

    def __init__(self, opts: "PairedFolderDataset.Options"):
        self.opts = opts
        if opts.dataroot:
            report = find_pairs(opts.dataroot)
        else:
            report = pairs_from_two_folders(opts.dataroot_lq, opts.dataroot_gt)
        pairs = report.pairs
        if opts.split:
            pairs = [p for p in pairs if p.split == opts.split]
        if opts.categories:
            pairs = [p for p in pairs if p.category in set(opts.categories)]
        if not pairs:
            where = opts.dataroot or f"{opts.dataroot_lq} + {opts.dataroot_gt}"
            raise OptionsError(f"dataset '{opts.name}': no LQ/GT pairs found in {where}"
                               f" (split={opts.split}, categories={opts.categories}); {report.summary()}")
        self.pairs: list[Pair] = pairs
        self.unpaired = report.unpaired

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item) -> dict:
        # item is an index (validation) or (index, augmentation seed) (training)
        index, aug_seed = item if isinstance(item, tuple) else (item, None)
        p = self.pairs[index]
        lq, gt = read_image(p.lq), read_image(p.gt)
        names = (str(p.lq), str(p.gt))
        if aug_seed is not None:
            rng = np.random.default_rng(aug_seed)
            if self.opts.gt_size:
                lq, gt = paired_random_crop(lq, gt, self.opts.gt_size, self.opts.scale, rng, names)
            else:
                check_pair_size(lq, gt, self.opts.scale, names)
            lq, gt = paired_flip_rot(lq, gt, self.opts.use_hflip, self.opts.use_rot, rng)
        else:
            check_pair_size(lq, gt, self.opts.scale, names)
        return {"lq": to_tensor(lq), "gt": to_tensor(gt), "key": p.key, "category": p.category,
                "prompt": self.opts.prompt}

    def train_loader(self, seed: int, rank: int, world_size: int, start_iter: int) -> Iterator[dict]:
        return resumable_train_loader(self, seed, rank, world_size, start_iter)
