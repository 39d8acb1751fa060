"""The evaluation loop behind ``ggt-ir eval``.

What is evaluated (exactly one of):

* ``model.run``: a trained run folder (``experiments/<name>``): its ``options.yml`` gives
  ``network_g``, its newest ``models/net_g_<iter>.safetensors`` the weights (or ``model.checkpoint``);
* ``model.network_g`` + ``model.checkpoint``: any zoo model with weights;
* ``restored``: folder(s) of images already restored by any other method (external baselines),
  matched to the eval sets by key; ``restored: input`` scores the LQ images themselves.

Each process takes a disjoint, strided slice of every eval set, restores it (tiled if
``model.tile``), saves the outputs as PNG, reads the PNG back and scores it; per-image rows are
gathered to the main process, which writes ``per_image.csv``, ``summary.json``, a comparison grid
per set and ``index.html`` under ``<results_root>/<name>/``, and prints a summary table.
"""
from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import yaml

from ggt_ir.config import OptionsError, apply_overrides, options_to_yaml, read_yaml_with_includes, to_typed
from ggt_ir.data.pairing import list_images
from ggt_ir.utils.fs import sha256_file, sha256_text
from ggt_ir.utils.image_io import read_image, to_tensor


class EvalError(RuntimeError):
    """A problem with the evaluated images (missing, wrong size); the message names the file."""


# --------------------------------------------------------------------------- options
@dataclass
class ModelOptions:
    run: Optional[str] = None  # experiments/<name>: options.yml + newest models/net_g_<iter>.*
    options: Optional[str] = None  # a run's resolved option file (instead of run/options.yml)
    checkpoint: Optional[str] = None  # a weights file (.safetensors / .pth); default with run: newest
    network_g: Dict[str, Any] = field(default_factory=dict)  # a zoo model: {type: ..., **kwargs}
    param_key: str = "auto"  # auto | params | params_ema | ...
    strict_load: bool = True
    tile: int = 0  # tile size in LQ pixels; 0 = whole images
    tile_overlap: int = 32
    self_ensemble: bool = False  # x8 flips/rotations averaged


@dataclass
class EvalSettings:
    weights_dir: Optional[str] = None  # local pyiqa weights; default $GGT_IR_WEIGHTS or $TORCH_HOME/hub
    strict: bool = False  # a metric with missing weights is an error instead of skipped
    seed: int = 0  # per-image seeds for random-crop metrics derive from it
    batch_size: int = 4
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_grid: int = 4  # images per set in the comparison grid
    grid_size: int = 256  # panel height in the grid
    max_size_diff: int = 16  # output vs GT sizes may differ by this many pixels (cropped top-left)
    pbar: bool = True


@dataclass
class EvalOptions:
    name: str = "eval"
    results_root: str = "results"
    label: Dict[str, str] = field(default_factory=dict)  # e.g. {model: SwinIR, data: GGT-100K} for `ggt-ir table`
    model: Optional[ModelOptions] = None
    restored: Any = None  # a folder, {set: folder}, or "input"
    datasets: Dict[str, Any] = field(default_factory=dict)
    metrics: Any = None  # [psnr, ssim, ...] or {key: {type: ..., **options}}
    eval: EvalSettings = field(default_factory=EvalSettings)
    source_file: str = ""

    @property
    def out_dir(self) -> Path:
        return Path(self.results_root) / self.name


def load_eval_options(path: str | os.PathLike, overrides: list[str] | None = None, *,
                      check_paths: bool = True) -> EvalOptions:
    from ggt_ir.eval.metrics import parse_metric_options

    src = str(path)
    raw = read_yaml_with_includes(path)
    raw = apply_overrides(raw, overrides)
    if overrides:
        src = f"{src} (with --set {' '.join(overrides)})"
    raw.pop("source_file", None)
    opt: EvalOptions = to_typed(EvalOptions, raw, src)
    opt.source_file = str(path)
    if opt.model is not None and opt.restored is not None:
        raise OptionsError(f"{src}: give either 'model' (run a model) or 'restored' (score existing images), not both")
    if opt.model is None and opt.restored is None:
        raise OptionsError(f"{src}: nothing to evaluate: set 'model' (model.run / model.network_g + "
                           "model.checkpoint) or 'restored' (a folder of restored images, or 'input')")
    if opt.model is not None:
        m = opt.model
        if not (m.run or m.options or m.network_g):
            raise OptionsError(f"{src}: 'model' needs 'run' (a trained run folder), 'options' or 'network_g'")
        if check_paths and m.run and not Path(m.run).is_dir():
            raise OptionsError(f"{src}: model.run: folder not found: {m.run}")
        for k in ("options", "checkpoint"):
            if check_paths and getattr(m, k) and not Path(getattr(m, k)).is_file():
                raise OptionsError(f"{src}: model.{k}: file not found: {getattr(m, k)}")
    if not opt.datasets:
        raise OptionsError(f"{src}: 'datasets' is empty: name at least one eval set")
    for name, ds in opt.datasets.items():
        dataset_class(name, ds, src, check_paths)  # validates options (and paths) now, before any work
    try:
        metrics = parse_metric_options(opt.metrics)
    except ValueError as e:
        raise OptionsError(f"{src}: {e}") from None
    if not metrics:
        raise OptionsError(f"{src}: 'metrics' is empty (e.g. metrics: [psnr, ssim, lpips, musiq])")
    if opt.eval.device not in ("auto", "cpu", "cuda"):
        raise OptionsError(f"{src}: eval.device is {opt.eval.device!r}; expected auto, cpu or cuda")
    return opt


# --------------------------------------------------------------------------- datasets
def dataset_class(name: str, raw: Any, src: str = "<options>", check_paths: bool = True):
    """(dataset class, typed options) for one eval set: any map-style type of :data:`ggt_ir.data.DATASETS`
    (``PairedFolder`` for pairs with a per-category breakdown, ``LQFolder`` for LQ-only benchmarks)."""
    from ggt_ir.data import DATASETS

    kp = f"datasets.{name}"
    if not isinstance(raw, dict) or "type" not in raw:
        raise OptionsError(f"{src}: '{kp}' needs a 'type' (PairedFolder for pairs, LQFolder for LQ-only benchmarks)")
    raw = dict(raw)
    try:
        cls = DATASETS.get(raw["type"])
    except KeyError as e:
        raise OptionsError(f"{src}: {kp}.type: {e}") from None
    raw.setdefault("name", name)
    typed = to_typed(cls.Options, raw, src, kp + ".")
    if check_paths:
        typed.check(src, kp)
    return cls, typed


# --------------------------------------------------------------------------- what produces the outputs
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
    from ggt_ir.utils.tiling import restore

    return restore(net, lq, tile, overlap, ensemble=ensemble)


class ModelSource:
    """Runs a network (trained run or zoo model) on LQ batches."""

    kind = "model"

    def __init__(self, m: ModelOptions, device: torch.device):
        from ggt_ir.archs import build_network
        from ggt_ir.archs.weights import load_weights

        self.info: dict[str, Any] = {"kind": "model"}
        network_g = dict(m.network_g)
        run_options = Path(m.options) if m.options else (Path(m.run) / "options.yml" if m.run else None)
        if run_options is not None:
            if not run_options.is_file():
                raise EvalError(f"run option file not found: {run_options}")
            raw = yaml.safe_load(run_options.read_text()) or {}
            network_g = {**raw.get("network_g", {}), **network_g}
            self.info.update(run=str(m.run) if m.run else None, run_options=str(run_options),
                             run_options_sha256=sha256_file(run_options), run_name=raw.get("name"))
        if not network_g.get("type"):
            raise EvalError("model: no network_g.type (give model.run, model.options or model.network_g)")
        ckpt = Path(m.checkpoint) if m.checkpoint else (newest_checkpoint(Path(m.run) / "models") if m.run else None)
        self.net = build_network(network_g)
        if ckpt is not None:
            report = load_weights(self.net, ckpt, m.param_key, m.strict_load)
            self.info.update(checkpoint=str(ckpt), checkpoint_sha256=sha256_file(ckpt), param_key=report.param_key)
        else:
            self.info.update(checkpoint=None, note="no checkpoint: randomly initialised network")
        self.net.eval().to(device)
        from ggt_ir.utils.tiling import model_scale

        self.m, self.device = m, device
        self.info.update(network_g=network_g, scale=model_scale(self.net), tile=m.tile, tile_overlap=m.tile_overlap,
                         self_ensemble=m.self_ensemble)

    @torch.inference_mode()
    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        out = restore_batch(self.net, lq.to(self.device), self.m.tile, self.m.tile_overlap, self.m.self_ensemble)
        return out.float().clamp_(0, 1).cpu()


class FolderSource:
    """Images already restored by another method, found by the eval set's keys.

    A key such as ``test/rain/0001`` is looked up as ``test/rain/0001.*``, then ``rain/0001.*``,
    then ``0001.*`` under the set's folder, so both mirrored trees and flat folders work.
    """

    kind = "folder"

    def __init__(self, restored: Any, set_names: list[str]):
        self.folders: dict[str, Path] = {}
        for s in set_names:
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
        self._index: dict[str, dict[str, list[Path]]] = {}
        self.info = {"kind": "folder", "folders": {s: str(f) for s, f in self.folders.items()}}

    def _files(self, set_name: str) -> dict[str, list[Path]]:
        if set_name not in self._index:
            idx: dict[str, list[Path]] = {}
            root = self.folders[set_name]
            for f in list_images(root):
                idx.setdefault(f.relative_to(root).with_suffix("").as_posix(), []).append(f)
            self._index[set_name] = idx
        return self._index[set_name]

    def find_all(self, set_name: str, keys: list[str]) -> dict[str, Path]:
        """key -> file for every key; one clear error listing what is missing or ambiguous."""
        idx = self._files(set_name)
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


class InputSource:
    """``restored: input``: the LQ images themselves (the no-restoration baseline)."""

    kind = "input"
    info = {"kind": "input", "note": "LQ inputs scored as outputs"}


def match_size(out: torch.Tensor, gt: torch.Tensor, where: str, max_diff: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Crop both to the common top-left region when sizes differ by at most ``max_diff`` pixels.
    Never resizes."""
    (ho, wo), (hg, wg) = out.shape[-2:], gt.shape[-2:]
    if (ho, wo) == (hg, wg):
        return out, gt, False
    if abs(ho - hg) > max_diff or abs(wo - wg) > max_diff:
        raise EvalError(f"{where}: output is {wo}x{ho} but the GT is {wg}x{hg}, a difference of more than "
                        f"eval.max_size_diff={max_diff} pixels. Images are never resized; check the scale "
                        "or that the right files are paired.")
    h, w = min(ho, hg), min(wo, wg)
    return out[..., :h, :w], gt[..., :h, :w], True


# --------------------------------------------------------------------------- the loop
def _png_path(out_dir: Path, set_name: str, key: str) -> Path:
    return out_dir / "images" / set_name / f"{key}.png"


def _save_png(x: torch.Tensor, path: Path) -> None:
    from ggt_ir.utils.image_io import save_png, tensor_to_uint8

    save_png(tensor_to_uint8(x), path)


def _grid_panel(panels: list[torch.Tensor], height: int) -> np.ndarray:
    import cv2

    from ggt_ir.utils.image_io import side_by_side

    img = side_by_side(*panels, gap=4)
    s = height / img.shape[0]
    return cv2.resize(img, (max(1, round(img.shape[1] * s)), height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)


def evaluate_set(set_name: str, ds, source, suite, opt: EvalOptions, rank: int, world: int,
                 pbar: bool) -> list[dict]:
    """This rank's slice of one eval set -> per-image rows (and output PNGs, grid panels)."""
    from tqdm import tqdm

    out_dir, s = opt.out_dir, opt.eval
    mine = list(range(rank, len(ds), world))
    grid_ids = set(range(min(s.num_grid, len(ds))))
    files: dict[str, Path] = {}
    if isinstance(source, FolderSource):
        keys = _keys(ds)
        files = source.find_all(set_name, keys)  # every rank checks the whole set: same error everywhere
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, mine), batch_size=None,
                                         num_workers=s.num_workers)
    rows, chunk = [], []
    bar = tqdm(total=len(mine), desc=f"eval {set_name}", unit="img", disable=not pbar, dynamic_ncols=True)

    def flush():
        samples = list(chunk)
        chunk.clear()
        outputs = _outputs(samples, source, files, set_name, out_dir)
        for (_, smp), out in zip(samples, outputs):
            smp["out"] = out
        # score groups of same-size images together
        groups: dict[tuple, list] = {}
        for i, smp in samples:
            out, gt, cropped = smp["out"], smp.get("gt"), False
            if gt is not None:
                out, gt, cropped = match_size(out, gt, f"set '{set_name}', image '{smp['key']}'", s.max_size_diff)
            smp["_scored"] = (out, gt, cropped)
            groups.setdefault((tuple(out.shape), gt is not None), []).append((i, smp))
        for (_, paired), members in groups.items():
            pred = torch.stack([m[1]["_scored"][0] for m in members])
            ref = torch.stack([m[1]["_scored"][1] for m in members]) if paired else None
            scores = suite.score(pred, ref, [m[1]["key"] for m in members])
            for j, (i, smp) in enumerate(members):
                row = {"set": set_name, "index": i, "image": smp["key"], "category": smp.get("category", "unknown")}
                row.update({k: v[j] for k, v in scores.items()})
                if smp["_scored"][2]:
                    row["note"] = "cropped top-left to match sizes"
                rows.append(row)
        for i, smp in samples:
            if i in grid_ids:
                panels = [smp["lq"], smp["out"]] + ([smp["gt"]] if smp.get("gt") is not None else [])
                grid = _grid_panel(panels, s.grid_size)
                from ggt_ir.utils.image_io import save_png

                save_png(grid, out_dir / "grids" / set_name / f"{i:05d}.png")
        bar.update(len(samples))

    for i, smp in zip(mine, loader):
        chunk.append((i, smp))
        if len(chunk) >= s.batch_size:
            flush()
    if chunk:
        flush()
    bar.close()
    return rows


def _keys(ds) -> list[str]:
    if hasattr(ds, "pairs"):
        return [p.key for p in ds.pairs]
    if hasattr(ds, "items"):
        return [it[0] for it in ds.items]
    return [ds[i]["key"] for i in range(len(ds))]


def _outputs(samples, source, files, set_name, out_dir) -> list[torch.Tensor]:
    if isinstance(source, InputSource):
        return [smp["lq"] for _, smp in samples]
    if isinstance(source, FolderSource):
        return [to_tensor(read_image(files[smp["key"]])) for _, smp in samples]
    # model: batch same-size LQs, save PNGs, score what was saved
    results: dict[int, torch.Tensor] = {}
    by_size: dict[tuple, list] = {}
    for j, (_, smp) in enumerate(samples):
        by_size.setdefault(tuple(smp["lq"].shape), []).append(j)
    for _, js in by_size.items():
        out = source(torch.stack([samples[j][1]["lq"] for j in js]))
        for j, o in zip(js, out):
            results[j] = o
    outs = []
    for j, (_, smp) in enumerate(samples):
        path = _png_path(out_dir, set_name, smp["key"])
        _save_png(results[j], path)
        outs.append(to_tensor(read_image(path)))  # score the saved PNG, as offline scripts do
    return outs


# --------------------------------------------------------------------------- summary, files
def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict], metric_keys: list[str]) -> dict:
    sets: dict[str, dict] = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == set_name]
        keys = [k for k in metric_keys if any(k in r for r in rs)]
        cats = {}
        for c in sorted(dict.fromkeys(r["category"] for r in rs)):
            rc = [r for r in rs if r["category"] == c]
            cats[c] = {"num_images": len(rc), **{k: _mean([r.get(k) for r in rc]) for k in keys}}
        sets[set_name] = {"num_images": len(rs), "means": {k: _mean([r.get(k) for r in rs]) for k in keys},
                          "per_category": cats}
    return sets


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("ggt-ir", "torch", "torchvision", "pyiqa", "basicsr", "accelerate", "numpy",
                 "opencv-python-headless", "scipy", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def options_sha256(opt: EvalOptions) -> str:
    return sha256_text(options_to_yaml(opt))


def write_csv(path: Path, rows: list[dict], metric_keys: list[str]) -> None:
    cols = ["set", "image", "category"] + [k for k in metric_keys if any(k in r for r in rows)]
    has_note = any("note" in r for r in rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + (["note"] if has_note else []))
        for r in rows:
            vals = [r.get(c, "") for c in cols]
            vals = [f"{v:.6f}" if isinstance(v, float) else v for v in vals]
            w.writerow(vals + ([r.get("note", "")] if has_note else []))


def write_grids(out_dir: Path, set_info: dict[str, dict]) -> dict[str, str]:
    """Stack each set's panels (written by the ranks) into ``grids/<set>.png`` under a title row."""
    import cv2

    grids = {}
    for s, info in set_info.items():
        parts = sorted((out_dir / "grids" / s).glob("*.png"))
        if not parts:
            continue
        imgs = [cv2.imread(str(p))[..., ::-1] for p in parts]
        w = max(i.shape[1] for i in imgs)
        titles = ["LQ", "output", "GT"] if info.get("paired") else ["LQ", "output"]
        head = np.full((22, w, 3), 255, np.uint8)
        for k, t in enumerate(titles):
            cv2.putText(head, t, (k * w // len(titles) + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows = [head] + [np.pad(i, ((0, 4), (0, w - i.shape[1]), (0, 0)), constant_values=255) for i in imgs]
        from ggt_ir.utils.image_io import save_png

        save_png(np.concatenate(rows, 0), out_dir / "grids" / f"{s}.png")
        grids[s] = f"grids/{s}.png"
    return grids


def write_html(out_dir: Path, summary: dict, grids: dict[str, str]) -> None:
    metrics = summary["metrics"]
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(summary['name'])}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>",
             f"<h1>{html.escape(summary['name'])}</h1><p>{html.escape(summary['date'])} &middot; "
             f"source: {html.escape(summary['source']['kind'])} &middot; <a href='summary.json'>summary.json</a> "
             "&middot; <a href='per_image.csv'>per_image.csv</a></p>"]
    for s, info in summary["sets"].items():
        keys = list(info["means"])
        head = "".join(f"<th>{html.escape(k)}{'↓' if metrics[k]['lower_better'] else '↑'}</th>" for k in keys)
        body = ""
        for label, vals in [("all", info["means"])] + [(c, v) for c, v in info["per_category"].items()]:
            n = info["num_images"] if label == "all" else vals["num_images"]
            body += (f"<tr><th>{html.escape(label)} ({n})</th>"
                     + "".join(f"<td>{_fmt(vals.get(k))}</td>" for k in keys) + "</tr>")
        parts.append(f"<h2>{html.escape(s)}</h2><table><tr><th>category</th>{head}</tr>{body}</table>")
        if s in grids:
            cols = "LQ | output | GT" if summary["sets"][s].get("paired") else "LQ | output"
            parts.append(f"<p>{cols}</p><img src='{html.escape(grids[s])}'>")
    if summary.get("skipped_metrics"):
        parts.append("<h2>Skipped metrics</h2><ul>" + "".join(
            f"<li><b>{html.escape(k)}</b>: <pre>{html.escape(v)}</pre></li>" for k, v in summary["skipped_metrics"].items())
            + "</ul>")
    (out_dir / "index.html").write_text("\n".join(parts))


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def summary_table(summary: dict) -> str:
    lines = []
    metrics = summary["metrics"]
    for s, info in summary["sets"].items():
        keys = list(info["means"])
        heads = [f"{k}{'↓' if metrics[k]['lower_better'] else '↑'}" for k in keys]
        label_w = max([len("all")] + [len(c) for c in info["per_category"]]) + 8
        widths = [max(len(h), 8) for h in heads]
        lines.append(f"== {s}: {info['num_images']} images ({'paired' if info.get('paired') else 'LQ only'})")
        lines.append(" " * label_w + "  ".join(h.rjust(w) for h, w in zip(heads, widths)))
        rows = [("all", info["num_images"], info["means"])] + [
            (c, v["num_images"], v) for c, v in info["per_category"].items()]
        for label, n, vals in rows:
            lines.append(f"{label} ({n})".ljust(label_w) + "  ".join(_fmt(vals.get(k)).rjust(w) for k, w in zip(keys, widths)))
    if summary.get("skipped_metrics"):
        lines.append("skipped (missing weights): " + ", ".join(summary["skipped_metrics"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def run_evaluation(opt: EvalOptions, state=None, log=print) -> dict | None:
    """Evaluate on every process of ``state`` (an accelerate PartialState); returns the summary on the
    main process, None elsewhere."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from ggt_ir.eval.metrics import MetricSuite, parse_metric_options

    s = opt.eval
    if state is None:
        from ggt_ir.eval.cli import use_cpu

        state = PartialState(cpu=use_cpu(s.device))
    device = state.device if s.device != "cpu" else torch.device("cpu")
    rank, world = state.process_index, state.num_processes
    main = state.is_main_process
    say = log if main else (lambda *_: None)

    out_dir = opt.out_dir
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in (out_dir / "grids").glob("**/*.png"):
            p.unlink()
    state.wait_for_everyone()

    metric_opts = parse_metric_options(opt.metrics)
    suite = MetricSuite(metric_opts, device=device, weights_dir=s.weights_dir, strict=s.strict, seed=s.seed, log=say)
    if not suite.metrics:
        raise EvalError("no metric could be created: " + "; ".join(suite.skipped))
    if opt.model is not None:
        source: Any = ModelSource(opt.model, device)
    elif str(opt.restored) == "input":
        source = InputSource()
    else:
        source = FolderSource(opt.restored, list(opt.datasets))

    say(f"[eval] {opt.name}: {len(opt.datasets)} set(s), metrics {', '.join(suite.metrics)}, "
        f"{world} process(es), device {device}; results in {out_dir}")
    all_rows: list[dict] = []
    set_info: dict[str, dict] = {}
    for set_name, raw in opt.datasets.items():
        cls, ds_opts = dataset_class(set_name, raw, opt.source_file or "<options>")
        ds = cls(ds_opts)
        payload: dict[str, Any] = {"rank": rank}
        try:
            payload["rows"] = evaluate_set(set_name, ds, source, suite, opt, rank, world,
                                           pbar=s.pbar and state.is_local_main_process)
        except Exception as e:  # noqa: BLE001 - reach the gather anyway, so no rank waits forever
            payload["error"] = f"{type(e).__name__}: {e}"
        gathered = gather_object([payload])
        errors = sorted({p["error"] for p in gathered if "error" in p})
        if errors:
            raise EvalError("; ".join(errors))
        rows = sorted((r for p in gathered for r in p["rows"]), key=lambda r: r["index"])
        if len(rows) != len(ds):
            raise EvalError(f"set '{set_name}': gathered {len(rows)} results for {len(ds)} images")
        all_rows += rows
        sample = ds[0]
        set_info[set_name] = {"paired": "gt" in sample, "type": getattr(ds_opts, "type", cls.__name__),
                              "dataroot": getattr(ds_opts, "dataroot", None) or getattr(ds_opts, "dataroot_lq", None),
                              "split": getattr(ds_opts, "split", None)}

    summary = None
    if main:
        keys = list(suite.metrics)
        sets = summarize(all_rows, keys)
        for k, v in sets.items():
            v.update(set_info[k])
        summary = {
            "name": opt.name,
            "label": {"model": source.info.get("network_g", {}).get("type") or opt.name, **opt.label},
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "source": source.info,
            "options_file": opt.source_file,
            "options_sha256": options_sha256(opt),
            "metrics": suite.variants(),
            "skipped_metrics": suite.skipped,
            "sets": sets,
            "seed": s.seed,
            "world_size": world,
            "device": str(device),
            "weights_dir": str(suite.weights_dir),
            "versions": package_versions(),
            "files": {"per_image_csv": "per_image.csv", "html": "index.html",
                      "images": "images" if isinstance(source, ModelSource) else None},
        }
        write_csv(out_dir / "per_image.csv", all_rows, keys)
        summary["files"]["grids"] = write_grids(out_dir, sets)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        (out_dir / "eval_options.yml").write_text(options_to_yaml(opt))
        write_html(out_dir, summary, summary["files"]["grids"])
        log(summary_table(summary))
        log(f"[eval] wrote {out_dir / 'summary.json'}, {out_dir / 'per_image.csv'}, {out_dir / 'index.html'}")
    state.wait_for_everyone()
    return summary
