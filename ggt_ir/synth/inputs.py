"""The LQ images a synthesis run reads: a folder, a list file, or webdataset shards.

* **folder**: every image below ``path``; in a paired GGT tree only the LQ side is read (files under an
  HQ-like folder are skipped). The key is the path below ``path`` without the LQ folder and the extension;
  the category is the first path component that names one (``Rain``, ``low_light`` ... ``pairing.py``).
* **list**: ``.txt`` (one path a line, optionally ``<path> <category>``; ``#`` comments), ``.csv``/``.tsv``
  (a header with a path column: ``lq``, ``path``, ``image``, ``file_name`` ...; optional ``key``,
  ``category``, ``prompt``) or ``.jsonl``. Relative paths are relative to the list file.
* **shards**: local tar shards written by ``ggt-ir shards build`` (a brace pattern); their ``lq.*`` member,
  with the key, category and prompt of the sample's json.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggt_ir.data.pairing import HQ_DIR_NAMES, LQ_DIR_NAMES, PROMPT_FIELDS, list_images, normalize_category
from ggt_ir.utils.image_io import IMAGE_EXTS, read_image

_PATH_FIELDS = ("lq", "lq_path", "path", "image", "image_path", "file_name", "filename", "file", "input", "img")


class InputError(ValueError):
    """The input of a synthesis run cannot be read; the message names the file and what to do."""


@dataclass
class LQItem:
    key: str  # unique, '/'-separated, no extension
    category: str
    source: str  # a file path, or '<shard>#<member>'
    ext: str  # '.png', '.jpg', ...
    prompt: str = ""  # the input's own prompt (list column / shard json), used by prompting.mode: input
    _offset: int = -1  # shards: byte range of the member
    _size: int = 0

    @property
    def flat(self) -> str:
        """The file stem used in the output tree (keys are unique, so flattened keys are too)."""
        return self.key.replace("/", "__")

    def read_bytes(self) -> bytes:
        if self._offset < 0:
            return Path(self.source).read_bytes()
        path = self.source.partition("#")[0]
        with open(path, "rb") as f:
            f.seek(self._offset)
            return f.read(self._size)

    def sha256(self) -> str:
        return hashlib.sha256(self.read_bytes()).hexdigest()

    def load(self) -> np.ndarray:
        """float32 RGB HWC in [0, 1]."""
        if self._offset < 0:
            return read_image(self.source)
        import cv2

        img = cv2.imdecode(np.frombuffer(self.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"{self.source}: cannot decode the LQ image of sample {self.key!r}")
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def _category(parts, default: str) -> str:
    return next((c for c in map(normalize_category, parts) if c), default)


def from_folder(root: str | os.PathLike, default_category: str = "general") -> tuple[list[LQItem], list[str]]:
    root = Path(root)
    items, notes = [], []
    skipped_hq = 0
    for f in list_images(root):
        parts = f.relative_to(root).parts[:-1]
        lower = [p.lower() for p in parts]
        if any(p in HQ_DIR_NAMES for p in lower):
            skipped_hq += 1
            continue
        kept = [p for p in parts if p.lower() not in LQ_DIR_NAMES]
        key = "/".join((*kept, f.stem))
        items.append(LQItem(key=key, category=_category(parts, default_category), source=str(f),
                            ext=f.suffix.lower()))
    if skipped_hq:
        notes.append(f"{skipped_hq} images under HQ-like folders ({'|'.join(sorted(HQ_DIR_NAMES))}) were skipped")
    return items, notes


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return rows
    rows = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            cols = line.split("\t") if "\t" in line else line.split()
            rows.append(dict(zip(("lq", "category"), cols)))
    return rows


def from_list(list_file: str | os.PathLike, default_category: str = "general") -> tuple[list[LQItem], list[str]]:
    list_file = Path(list_file)
    base = list_file.parent
    items, notes, seen = [], [], set()
    for n, row in enumerate(_rows(list_file), 1):
        if not isinstance(row, dict):
            raise InputError(f"{list_file}:{n}: expected an object with a path field, got {row!r}")
        row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        value = next((row[k] for k in _PATH_FIELDS if row.get(k)), None)
        if not value:
            raise InputError(f"{list_file}:{n}: no path column (one of {', '.join(_PATH_FIELDS)}) in {sorted(row)}")
        p = Path(str(value))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise InputError(f"{list_file}:{n}: image not found: {p}")
        if p.suffix.lower() not in IMAGE_EXTS:
            raise InputError(f"{list_file}:{n}: {p} is not an image ({', '.join(sorted(IMAGE_EXTS))})")
        if row.get("key"):
            key = str(row["key"])
        else:
            rel = p.relative_to(base) if p.is_relative_to(base) else Path(p.name)
            key = "/".join((*[q for q in rel.parts[:-1] if q.lower() not in LQ_DIR_NAMES], rel.stem))
        if key in seen:
            raise InputError(f"{list_file}:{n}: duplicate key {key!r}; add a 'key' column to tell them apart")
        seen.add(key)
        cat = row.get("category")
        category = (normalize_category(str(cat)) or str(cat)) if cat else _category(p.parts[:-1], default_category)
        prompt = next((str(row[k]) for k in PROMPT_FIELDS if row.get(k)), "")
        items.append(LQItem(key=key, category=category, source=str(p), ext=p.suffix.lower(), prompt=prompt))
    return items, notes


def from_shards(pattern: str, default_category: str = "general") -> tuple[list[LQItem], list[str]]:
    from ggt_ir.data.shard_io import expand_urls, local_path, scan_local_tar

    urls = expand_urls(pattern)
    if not urls:
        raise InputError(f"input.path {pattern!r}: no shards (a brace pattern such as x-train-{{000000..000009}}.tar)")
    items, notes, seen = [], [], set()
    for url in urls:
        path = local_path(url)
        if path is None:
            raise InputError(f"{url}: synthesis reads local shards only; download them first")
        if not Path(path).is_file():
            raise InputError(f"shard not found: {path}")
        with open(path, "rb") as f:
            for tar_key, members in scan_local_tar(path):
                lq = next((s for s in members if s.startswith("lq.")), None)
                if lq is None:
                    notes.append(f"{path}: sample {tar_key!r} has no lq.* member; skipped")
                    continue
                meta = {}
                if "json" in members:
                    off, size = members["json"]
                    f.seek(off)
                    try:
                        meta = json.loads(f.read(size))
                    except json.JSONDecodeError:
                        notes.append(f"{path}: sample {tar_key!r}: unreadable json; key and category from the tar")
                key = str(meta.get("key") or tar_key)
                if key in seen:
                    raise InputError(f"{path}: key {key!r} appears in two shards; pass one split's shards")
                seen.add(key)
                cat = meta.get("category")
                category = (normalize_category(str(cat)) or str(cat)) if cat and cat != "unknown" else default_category
                off, size = members[lq]
                items.append(LQItem(key=key, category=category, source=f"{path}#{tar_key}.{lq}",
                                    ext="." + lq.rpartition(".")[2], prompt=str(meta.get("prompt") or ""),
                                    _offset=off, _size=size))
    return items, notes


def read_inputs(kind: str, path: str, *, default_category: str = "general", categories: list[str] | None = None,
                limit: int = 0, per_category: int = 0) -> tuple[list[LQItem], list[str]]:
    """(items sorted by key, notes). Raises :class:`InputError` with a one-line reason."""
    readers = {"folder": from_folder, "list": from_list, "shards": from_shards}
    if kind not in readers:
        raise InputError(f"input.type {kind!r}: expected one of {', '.join(readers)}")
    if kind == "folder" and not Path(path).is_dir():
        raise InputError(f"input.path: folder not found: {path}")
    if kind == "list" and not Path(path).is_file():
        raise InputError(f"input.path: list file not found: {path}")
    items, notes = readers[kind](path, default_category)
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"input {path}: key {dup!r} names two images (same stem, different extensions?)")
    flats = [i.flat for i in items]
    if len(set(flats)) != len(flats):
        dup = next(k for k in flats if flats.count(k) > 1)
        raise InputError(f"input {path}: two keys flatten to the same file stem {dup!r} ('/' -> '__'); rename one")
    if categories:
        wanted = {normalize_category(c) or c for c in categories}
        items = [i for i in items if i.category in wanted]
    items.sort(key=lambda i: i.key)
    if per_category > 0:
        seen: dict[str, int] = {}
        kept = []
        for i in items:
            seen[i.category] = seen.get(i.category, 0) + 1
            if seen[i.category] <= per_category:
                kept.append(i)
        items = kept
    if limit > 0:
        items = items[:limit]
    if not items:
        raise InputError(f"input {path} ({kind}): no LQ images" + (f" in categories {categories}" if categories else ""))
    return items, notes
