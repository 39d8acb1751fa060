"""What produces the images an evaluation scores.

Every source has ``info`` (what was scored, recorded in ``summary.json``), ``needs_lq`` (whether it reads
the LQ images), ``stochastic`` (whether repeated samples differ) and one method,
``outputs(set_name, samples, sample_index=0) -> list[Tensor]``: the (3, H, W) outputs in [0, 1] for a chunk
of one eval set's samples, in order. :func:`open_source` picks the source the options name:

* :class:`InputSource` (``restored: input``): the LQ images themselves;
* :class:`FolderSource` (``restored: <folder>``): images restored by another method, found by key;
* :class:`RestorerSource` (``model: ...``): a restorer of any family (:func:`model_restorer`) run on the LQ batches;
  its outputs are saved as PNG and what was saved is scored, as offline scripts do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import hashlib

from ggt_ir.data.pairing import list_images
from ggt_ir.utils.image_io import read_image, save_png, tensor_to_uint8, to_tensor


class EvalError(RuntimeError):
    """A problem with the evaluated images (missing, wrong size); the message names the file."""


# --------------------------------------------------------------------------- a restorer from model options
def model_restorer(m, device: torch.device):
    """The restorer that ``model:`` (:class:`ggt_ir.eval.options.ModelOptions`) names -- a trained run of any
    family (its options.yml and newest export), a run's option file, or ``network_g`` (+ ``checkpoint``) --
    built by the one loader (``ggt_ir.inference.loader.load_restorer``)."""
    from ggt_ir.inference.loader import RestorerError, load_restorer, newest_export

    source, weights = m.run or m.options, m.checkpoint
    try:
        if m.run and m.options:  # the run's exports with another option file
            source, weights = m.options, weights or newest_export(Path(m.run) / "models")
        restorer = load_restorer(source, weights, network_g=dict(m.network_g) or None,
                                 overrides=dict(m.inference) or None, param_key=m.param_key, strict=m.strict_load,
                                 device=device, tile=m.tile or None, tile_overlap=m.tile_overlap if m.tile else None,
                                 self_ensemble=m.self_ensemble or None, prompt=m.prompt, seed=m.seed)
    except RestorerError as e:
        raise EvalError(f"model: {e}") from None
    if m.run:
        restorer.info["run"] = str(m.run)
    return restorer


# --------------------------------------------------------------------------- sources
class InputSource:
    """``restored: input``: the LQ images themselves (the no-restoration baseline)."""

    info = {"kind": "input", "note": "LQ inputs scored as outputs"}
    needs_lq, stochastic = True, False

    def outputs(self, set_name: str, samples: list[dict], sample_index: int = 0) -> list[torch.Tensor]:
        return [smp["lq"] for smp in samples]


class RestorerSource:
    """A restorer on LQ batches (same-size LQs batched together); each output is saved as
    ``<images_dir>/<set>/<key>.png`` (sample s > 0 of a stochastic restorer: ``<images_dir>/sample<s>/<set>/``)
    and the saved PNG is what is scored. Each sample dict given to the restorer carries its ``key`` and
    ``sample_index``, from which a stochastic restorer derives the image's seed."""

    needs_lq = True

    def __init__(self, restorer, images_dir: Path):
        self.restorer, self.images_dir = restorer, images_dir
        self.info = restorer.info
        self.stochastic = bool(self.info.get("stochastic"))

    def outputs(self, set_name: str, samples: list[dict], sample_index: int = 0) -> list[torch.Tensor]:
        results: dict[int, torch.Tensor] = {}
        by_size: dict[tuple, list[int]] = {}
        for j, smp in enumerate(samples):
            by_size.setdefault(tuple(smp["lq"].shape), []).append(j)
        folder = self.images_dir if sample_index == 0 else self.images_dir / f"sample{sample_index}"
        for js in by_size.values():
            group = [{**samples[j], "sample_index": sample_index} for j in js]
            with torch.inference_mode():
                out = self.restorer.restore(torch.stack([smp["lq"] for smp in group]), group)
                out = out.float().clamp_(0, 1).cpu()
            for j, o in zip(js, out):
                results[j] = o
        outs = []
        for j, smp in enumerate(samples):
            path = folder / set_name / f"{smp['key']}.png"
            save_png(tensor_to_uint8(results[j]), path)
            outs.append(to_tensor(read_image(path)))  # score the saved PNG, as offline scripts do
        return outs


def dataset_keys(ds) -> list[str]:
    """Every sample key of a map-style eval set, without reading its images where the set lists them."""
    if hasattr(ds, "pairs"):
        return [p.key for p in ds.pairs]
    if hasattr(ds, "items"):
        return [it[0] for it in ds.items]
    return [ds[i]["key"] for i in range(len(ds))]


class FolderSource:
    """Images already restored by another method, found by the eval set's keys.

    A key such as ``test/rain/0001`` is looked up as ``test/rain/0001.*``, then ``rain/0001.*``,
    then ``0001.*`` under the set's folder, so both mirrored trees and flat folders work. Every
    key of every set is matched when the source opens, so a missing file is reported (the same on
    every rank) before anything is scored.
    """

    needs_lq, stochastic = False, False

    def __init__(self, restored: Any, datasets: dict[str, Any]):
        self.folders: dict[str, Path] = {}
        for s in datasets:
            if isinstance(restored, dict):
                if s not in restored:
                    raise EvalError(f"restored: no folder given for eval set '{s}' (have: {', '.join(restored)})")
                folder = Path(restored[s])
            else:
                root = Path(str(restored))
                folder = root / s if (root / s).is_dir() else root
            if not folder.is_dir():
                raise EvalError(f"restored images for set '{s}': folder not found: {folder}")
            self.folders[s] = folder
        self.info = {"kind": "folder", "folders": {s: str(f) for s, f in self.folders.items()}}
        self.files = {s: self.find_all(s, dataset_keys(ds)) for s, ds in datasets.items()}
        # what was scored, by file sizes and modification times (a rewritten output changes it)
        self.info["files_sha256"] = {s: _stat_fingerprint(sorted((k, p) for k, p in files.items()))
                                     for s, files in self.files.items()}

    def outputs(self, set_name: str, samples: list[dict], sample_index: int = 0) -> list[torch.Tensor]:
        return [to_tensor(read_image(self.files[set_name][smp["key"]])) for smp in samples]

    def _index(self, set_name: str) -> dict[str, list[Path]]:
        idx: dict[str, list[Path]] = {}
        root = self.folders[set_name]
        for f in list_images(root):
            idx.setdefault(f.relative_to(root).with_suffix("").as_posix(), []).append(f)
        return idx

    def find_all(self, set_name: str, keys: list[str]) -> dict[str, Path]:
        """key -> file for every key; one clear error listing what is missing or ambiguous."""
        idx = self._index(set_name)
        found, missing, ambiguous = {}, [], []
        for key in keys:
            parts = key.split("/")
            tried = ["/".join(parts[i:]) for i in range(len(parts))]
            hit = next((t for t in tried if t in idx), None)
            if hit is None:
                missing.append(f"{key} (looked for {', '.join(t + '.*' for t in tried)})")
            elif len(idx[hit]) > 1:
                ambiguous.append(f"{key}: {', '.join(str(p) for p in idx[hit])}")
            else:
                found[key] = idx[hit][0]
        stems = {}
        for key, p in found.items():
            stems.setdefault(p, []).append(key)
        clashes = [f"{p} matches {', '.join(ks)}" for p, ks in stems.items() if len(ks) > 1]
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(keys)} images have no restored file in "
                            f"{self.folders[set_name]}: " + "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if ambiguous:
            problems.append("several files for one image (different extensions): " + "; ".join(ambiguous[:5]))
        if clashes:
            problems.append("one file matches several images (use a mirrored folder tree): " + "; ".join(clashes[:5]))
        if problems:
            raise EvalError(f"set '{set_name}': " + " | ".join(problems))
        return found


def _stat_fingerprint(items) -> str:
    """sha256 of (name, size, mtime_ns) of each (name, path): a cheap identity of a set of files."""
    h = hashlib.sha256()
    for name, p in items:
        st = Path(p).stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def set_fingerprint(ds) -> str | None:
    """The identity of an eval set's files (LQ and GT): names, sizes and modification times; None for a
    set that does not list its files."""
    if hasattr(ds, "pairs"):
        items = [(f"{p.key}\0lq", p.lq) for p in ds.pairs] + [(f"{p.key}\0gt", p.gt) for p in ds.pairs]
    elif hasattr(ds, "items"):
        items = [(it[0], it[1]) for it in ds.items]
    else:
        return None
    return _stat_fingerprint(sorted(items, key=lambda kv: kv[0]))


def open_source(opt, datasets: dict[str, Any], device: torch.device):
    """The source ``opt`` (:class:`ggt_ir.eval.options.EvalOptions`) names, for the built eval sets."""
    if opt.model is not None:
        return RestorerSource(model_restorer(opt.model, device), opt.out_dir / "images")
    if str(opt.restored) == "input":
        return InputSource()
    return FolderSource(opt.restored, datasets)
