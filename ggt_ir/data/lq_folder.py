"""``LQFolder``: low-quality images without ground truth (real-world benchmarks such as RealLQ250-style sets).

``<dataroot>/<subset>/.../<name>.<ext>``: the category of an image is its first folder below ``dataroot``
(``social_media``, ``old_photos``, ...), or the name of ``dataroot`` itself for images directly in it.
Samples have ``lq``, ``key``, ``category`` and ``prompt`` (a ``<stem>.txt`` next to the image, else the
``prompt`` option) and no ``gt``: score them with no-reference metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ggt_ir.config import OptionsError, at_least
from ggt_ir.data import missing_data_hint
from ggt_ir.data.pairing import _walk
from ggt_ir.utils.image_io import read_image, to_tensor


class LQFolderDataset(torch.utils.data.Dataset):
    @dataclass
    class Options:
        name: str = "lq_folder"
        type: str = "LQFolder"
        dataroot: Optional[str] = None
        categories: Optional[List[str]] = None  # keep only these subsets (first folder names)
        scale: int = at_least(1, 1)
        prompt: str = ""
        batch_size_per_gpu: int = at_least(1, 1)
        num_worker_per_gpu: int = at_least(0, 0)
        pin_memory: bool = False

        def check(self, src: str, key: str) -> None:
            if not self.dataroot:
                raise OptionsError(f"{src}: {key} needs 'dataroot' (a folder of LQ images)")
            if not Path(self.dataroot).is_dir():
                raise OptionsError(f"{src}: {key}.dataroot: folder not found: {self.dataroot}. "
                                   + missing_data_hint(self.dataroot))

    def __init__(self, opts: "LQFolderDataset.Options"):
        self.opts = opts
        root = Path(opts.dataroot)
        images, others = _walk(root)
        texts = {(p.parent, p.stem): p for p in others if p.suffix.lower() in (".txt", ".caption", ".prompt")}
        self.items: list[tuple[str, Path, str, Path | None]] = []
        for f in images:
            rel = f.relative_to(root)
            category = rel.parts[0] if len(rel.parts) > 1 else root.name
            if opts.categories and category not in opts.categories:
                continue
            self.items.append((rel.with_suffix("").as_posix(), f, category, texts.get((f.parent, f.stem))))
        if not self.items:
            raise OptionsError(f"dataset '{opts.name}': no images in {root}"
                               + (f" for categories {opts.categories}" if opts.categories else ""))

    @property
    def categories(self) -> list[str]:
        return sorted({c for _, _, c, _ in self.items})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict:
        index = item[0] if isinstance(item, tuple) else item
        key, path, category, text = self.items[index]
        prompt = text.read_text(encoding="utf-8", errors="replace").strip() if text else self.opts.prompt
        return {"lq": to_tensor(read_image(path)), "key": key, "category": category, "prompt": prompt}

    def train_loader(self, seed: int, rank: int, world_size: int, start_iter: int):
        raise TypeError(f"dataset '{self.opts.name}' (LQFolder) has no ground truth and cannot be a training set")
