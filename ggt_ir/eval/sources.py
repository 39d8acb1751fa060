"""What produces the images an evaluation scores.

Every source has ``info`` (what was scored, recorded in ``summary.json``) and one method,
``outputs(set_name, samples) -> list[Tensor]``: the (3, H, W) outputs in [0, 1] for a chunk of one
eval set's samples, in order. :func:`open_source` picks the source the options name:

* :class:`InputSource` (``restored: input``): the LQ images themselves;
* :class:`FolderSource` (``restored: <folder>``): images restored by another method, found by key;
* :class:`RestorerSource` (``model: ...``): a restorer (:func:`model_restorer`) run on the LQ batches;
  its outputs are saved as PNG and what was saved is scored, as offline scripts do.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ggt_ir.data.pairing import list_images
from ggt_ir.utils.fs import sha256_file
from ggt_ir.utils.image_io import read_image, save_png, tensor_to_uint8, to_tensor


class EvalError(RuntimeError):
    """A problem with the evaluated images (missing, wrong size); the message names the file."""


# --------------------------------------------------------------------------- a restorer from model options
_NET_G_RE = re.compile(r"^net_g_(\d+)$")


def newest_checkpoint(models_dir: Path) -> Path:
    found = []
    for p in models_dir.glob("net_g_*"):
        m = _NET_G_RE.match(p.stem)
        if m and p.suffix in (".safetensors", ".pth"):
            found.append((int(m.group(1)), p.suffix != ".safetensors", p))
    if not found:
        latest = [p for p in (models_dir / "net_g_latest.safetensors", models_dir / "net_g_latest.pth") if p.is_file()]
        if latest:
            return latest[0]
        raise EvalError(f"no exported weights (net_g_<iter>.safetensors) in {models_dir}; pass model.checkpoint")
    return sorted(found)[-1][2]


def restore_batch(net: torch.nn.Module, lq: torch.Tensor, tile: int = 0, overlap: int = 32,
                  ensemble: bool = False) -> torch.Tensor:
    """The network on a batch: whole, or in feathered overlapping tiles (``tile``/``overlap`` in LQ
    pixels) when ``tile`` > 0, optionally with the x8 self-ensemble (ggt_ir.inference.tiling)."""
    from ggt_ir.inference.tiling import restore

    return restore(net, lq, tile, overlap, ensemble=ensemble)


class NetworkRestorer:
    """A zoo network with its weights, on a device: ``restore(lq_batch, samples=None)`` -> outputs."""

    def __init__(self, net: torch.nn.Module, device: torch.device, tile: int, tile_overlap: int,
                 self_ensemble: bool, info: dict[str, Any]):
        self.net, self.device, self.info = net, device, info
        self.tile, self.tile_overlap, self.self_ensemble = tile, tile_overlap, self_ensemble

    def restore(self, lq: torch.Tensor, samples: list[dict] | None = None) -> torch.Tensor:
        return restore_batch(self.net, lq.to(self.device), self.tile, self.tile_overlap, self.self_ensemble)


def model_restorer(m, device: torch.device) -> NetworkRestorer:
    """The restorer that ``model:`` (:class:`ggt_ir.eval.options.ModelOptions`) names: a trained run
    (its options.yml and newest export), a run's option file, or ``network_g`` (+ ``checkpoint``).
    The one place eval builds a model."""
    from ggt_ir.archs import build_network
    from ggt_ir.archs.weights import load_weights
    from ggt_ir.inference.tiling import model_scale

    info: dict[str, Any] = {"kind": "model"}
    network_g = dict(m.network_g)
    run_options = Path(m.options) if m.options else (Path(m.run) / "options.yml" if m.run else None)
    if run_options is not None:
        if not run_options.is_file():
            raise EvalError(f"run option file not found: {run_options}")
        raw = yaml.safe_load(run_options.read_text()) or {}
        network_g = {**raw.get("network_g", {}), **network_g}
        info.update(run=str(m.run) if m.run else None, run_options=str(run_options),
                    run_options_sha256=sha256_file(run_options), run_name=raw.get("name"))
    if not network_g.get("type"):
        raise EvalError("model: no network_g.type (give model.run, model.options or model.network_g)")
    ckpt = Path(m.checkpoint) if m.checkpoint else (newest_checkpoint(Path(m.run) / "models") if m.run else None)
    net = build_network(network_g)
    if ckpt is not None:
        report = load_weights(net, ckpt, m.param_key, m.strict_load)
        info.update(checkpoint=str(ckpt), checkpoint_sha256=sha256_file(ckpt), param_key=report.param_key)
    else:
        info.update(checkpoint=None, note="no checkpoint: randomly initialised network")
    net.eval().to(device)
    info.update(network_g=network_g, scale=model_scale(net), tile=m.tile, tile_overlap=m.tile_overlap,
                self_ensemble=m.self_ensemble)
    return NetworkRestorer(net, device, m.tile, m.tile_overlap, m.self_ensemble, info)


# --------------------------------------------------------------------------- sources
class InputSource:
    """``restored: input``: the LQ images themselves (the no-restoration baseline)."""

    info = {"kind": "input", "note": "LQ inputs scored as outputs"}

    def outputs(self, set_name: str, samples: list[dict]) -> list[torch.Tensor]:
        return [smp["lq"] for smp in samples]


class RestorerSource:
    """A restorer on LQ batches (same-size LQs batched together); each output is saved as
    ``<images_dir>/<set>/<key>.png`` and the saved PNG is what is scored."""

    def __init__(self, restorer, images_dir: Path):
        self.restorer, self.images_dir = restorer, images_dir
        self.info = restorer.info

    def outputs(self, set_name: str, samples: list[dict]) -> list[torch.Tensor]:
        results: dict[int, torch.Tensor] = {}
        by_size: dict[tuple, list[int]] = {}
        for j, smp in enumerate(samples):
            by_size.setdefault(tuple(smp["lq"].shape), []).append(j)
        for js in by_size.values():
            group = [samples[j] for j in js]
            with torch.inference_mode():
                out = self.restorer.restore(torch.stack([smp["lq"] for smp in group]), group)
                out = out.float().clamp_(0, 1).cpu()
            for j, o in zip(js, out):
                results[j] = o
        outs = []
        for j, smp in enumerate(samples):
            path = self.images_dir / set_name / f"{smp['key']}.png"
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

    def outputs(self, set_name: str, samples: list[dict]) -> list[torch.Tensor]:
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


def open_source(opt, datasets: dict[str, Any], device: torch.device):
    """The source ``opt`` (:class:`ggt_ir.eval.options.EvalOptions`) names, for the built eval sets."""
    if opt.model is not None:
        return RestorerSource(model_restorer(opt.model, device), opt.out_dir / "images")
    if str(opt.restored) == "input":
        return InputSource()
    return FolderSource(opt.restored, datasets)
