"""The evaluation loop behind ``ggt-ir eval``.

Each process takes a disjoint, strided slice of every eval set, gets the outputs from the source
(:mod:`ggt_ir.eval.sources`: a restorer, a folder of restored images, or the LQ inputs) and scores them
with the metric suite; per-image rows are gathered to the main process, which adds the set-level metrics
(``fid``), the metric protocol and the cell record, writes the results (:mod:`ggt_ir.eval.report`) under
``<results_root>/<name>/`` and prints a summary table.

The GT side of the work goes through the reference cache (:mod:`ggt_ir.eval.reference_cache`, unless
``eval.cache: false``): when the source does not read the LQ images (restored folders), GT images are
decoded once and read back from it; reference features of lpips / dists / fid are computed once per GT
image. A stochastic restorer can be sampled ``eval.num_samples`` times (per-image seeds); the summary then
has each metric's mean and standard deviation over the samples.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ggt_ir.config import plain_options
from ggt_ir.eval.options import EvalOptions, use_cpu
from ggt_ir.eval.report import grid_picks, save_previews, summary_record, summary_table, write_results
from ggt_ir.eval.sources import EvalError, FolderSource, InputSource, RestorerSource, open_source, set_fingerprint
from ggt_ir.utils.image_io import to_tensor

FOLDER_FIELD = "_folder_features"  # per-row (output, GT) features of set-level metrics, dropped before writing


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


def image_index(ds) -> list[tuple[str, dict[str, Path]]]:
    """(category, {lq, gt: source file}) of every image of a map-style eval set, from its listing when it
    has one (PairedFolder, LQFolder), else from its samples (no files then)."""
    if hasattr(ds, "pairs"):
        return [(p.category, {"lq": Path(p.lq), "gt": Path(p.gt)}) for p in ds.pairs]
    if hasattr(ds, "items"):
        return [(it[2], {"lq": Path(it[1])}) for it in ds.items]
    return [(ds[i].get("category", "unknown"), {}) for i in range(len(ds))]


def output_file(source, set_name: str, key: str, files: dict[str, Path]) -> Path | None:
    """The full-size file of an image's output (what the report pages link to)."""
    if isinstance(source, RestorerSource):
        return source.images_dir / set_name / f"{key}.png"
    if isinstance(source, FolderSource):
        return source.files[set_name][key]
    if isinstance(source, InputSource):
        return files.get("lq")
    return None


def panel_scores(suite, smp: dict, row: dict, lq_is_output: bool) -> dict:
    """Scores printed on a grid pick's LQ and GT panels: the LQ scored as if it were the output (full-reference
    metrics only when it has the GT's size), the GT with the no-reference metrics."""
    lq, gt, key = smp["lq"][None], smp.get("gt"), smp["key"]
    if lq_is_output:
        lq_scores = {k: v for k, v in row.items() if k in suite.metrics}
    else:
        ref = gt[None] if gt is not None and gt.shape == smp["lq"].shape else None
        lq_scores = {k: v[0] for k, v in suite.score(lq, ref, [key]).items()}
    out = {"lq": lq_scores}
    if gt is not None:
        out["gt"] = {k: v[0] for k, v in suite.score(gt[None], None, [key]).items()}
    return out


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


class CachedGT(torch.utils.data.Dataset):
    """A paired eval set whose GT images come from the reference cache; the LQ is read only where
    ``need_lq(index)`` (the grid's images) -- for sources that never look at it (restored folders)."""

    def __init__(self, ds, cache, need_lq):
        self.ds, self.cache, self.need_lq = ds, cache, need_lq

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        p = self.ds.pairs[index]
        gt, sha = self.cache.gt_image(p.gt)
        if self.need_lq(index):
            smp = self.ds[index]
            return {**smp, "_gt_sha": sha}
        return {"gt": to_tensor(gt), "lq": None, "key": p.key, "category": p.category, "_gt_sha": sha}


def evaluate_set(set_name: str, ds, source, suite, opt: EvalOptions, rank: int, world: int,
                 pbar: bool, cache=None, sample_index: int = 0) -> list[dict]:
    """This rank's slice of one eval set -> per-image rows (and, for the first sample, the previews of its
    images: thumbnails of every image, grid panels of the first ``eval.num_grid`` images of each category)."""
    from ggt_ir.utils.progress import progress

    s = opt.eval
    mine = list(range(rank, len(ds), world))
    index = image_index(ds)
    previews = sample_index == 0  # later samples of an N-sample evaluation are scored, not shown again
    grid_ids = grid_picks([c for c, _ in index], s.num_grid) if previews else set()
    gt_files = {p.key: p.gt for p in ds.pairs} if cache is not None and hasattr(ds, "pairs") else {}
    source_ds = ds
    if gt_files and not source.needs_lq:
        source_ds = CachedGT(ds, cache, lambda i: i in grid_ids)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(source_ds, mine), batch_size=None,
                                         num_workers=s.num_workers)
    rows, chunk = [], []
    bar = progress(total=len(mine), desc=f"eval {set_name}", unit="img", enabled=pbar)  # lines in a log file

    def flush():
        samples = list(chunk)
        chunk.clear()
        outputs = source.outputs(set_name, [smp for _, smp in samples], sample_index)
        # score groups of same-size images together
        groups: dict[tuple, list] = {}
        for (i, smp), out in zip(samples, outputs):
            smp["out"] = out
            gt, cropped, rid = smp.get("gt"), False, None
            if gt is not None:
                out, gt, cropped = match_size(out, gt, f"set '{set_name}', image '{smp['key']}'", s.max_size_diff)
                if not cropped and smp["key"] in gt_files:  # a cropped GT is not the cached one
                    rid = smp.get("_gt_sha") or cache.memo.sha256(gt_files[smp["key"]])
            smp["_scored"] = (out, gt, cropped, rid)
            groups.setdefault((tuple(out.shape), gt is not None), []).append((i, smp))
        for (_, paired), members in groups.items():
            pred = torch.stack([m[1]["_scored"][0] for m in members])
            ref = torch.stack([m[1]["_scored"][1] for m in members]) if paired else None
            rids = [m[1]["_scored"][3] for m in members]
            scores = suite.score(pred, ref, [m[1]["key"] for m in members], ref_ids=rids)
            folder = suite.folder_features(pred, ref, rids) if paired and suite.folder() else {}
            for j, (i, smp) in enumerate(members):
                row = {"set": set_name, "index": i, "image": smp["key"], "category": smp.get("category", "unknown")}
                row.update({k: v[j] for k, v in scores.items()})
                if folder:
                    row[FOLDER_FIELD] = {k: (f[0][j], f[1][j]) for k, f in folder.items()}
                if smp["_scored"][2]:
                    row["note"] = "cropped top-left to match sizes"
                rows.append(row)
                smp["_row"] = row
        for i, smp in samples if previews else ():  # what the report pages show: previews, files, grid scores
            row, files = smp["_row"], dict(index[i][1])
            files["output"] = output_file(source, set_name, smp["key"], files)
            row["files"] = {k: _relative(f, opt.out_dir) for k, f in files.items() if f is not None}
            row.update(save_previews(opt.out_dir, set_name, smp["key"], {"lq": smp["lq"], "output": smp["out"],
                                                                          "gt": smp.get("gt")},
                                     s.grid_size if i in grid_ids else None))
            if i in grid_ids:
                row["panel_scores"] = panel_scores(suite, smp, row, isinstance(source, InputSource))
        bar.update(len(samples))

    for i, smp in zip(mine, loader):
        chunk.append((i, smp))
        if len(chunk) >= s.batch_size:
            flush()
    if chunk:
        flush()
    bar.close()
    return rows


# --------------------------------------------------------------------------- set-level metrics, samples
def folder_scores(rows: list[dict], suite) -> dict:
    """{set: {"means": {metric: v}, "per_category": {cat: {metric: v}}}} of the set-level metrics (fid)."""
    out: dict[str, dict] = {}
    for k in suite.folder():
        metric = suite.metrics[k]
        for set_name in dict.fromkeys(r["set"] for r in rows):
            rs = [r for r in rows if r["set"] == set_name and FOLDER_FIELD in r]
            if not rs:
                continue
            entry = out.setdefault(set_name, {"means": {}, "per_category": {}})
            entry["means"][k] = metric.distance([r[FOLDER_FIELD][k][0] for r in rs], [r[FOLDER_FIELD][k][1] for r in rs])
            for c in sorted(dict.fromkeys(r["category"] for r in rs)):
                rc = [r for r in rs if r["category"] == c]
                entry["per_category"].setdefault(c, {})[k] = metric.distance(
                    [r[FOLDER_FIELD][k][0] for r in rc], [r[FOLDER_FIELD][k][1] for r in rc])
    return out


def _mean_rows(per_sample: list[list[dict]], keys: list[str]) -> list[dict]:
    """Rows averaged over samples, image by image (the per-image CSV of an N-sample evaluation)."""
    out = []
    for group in zip(*per_sample):
        row = {k: v for k, v in group[0].items() if k not in keys and k != FOLDER_FIELD}
        for k in keys:
            vals = [r[k] for r in group if r.get(k) is not None]
            if vals:
                row[k] = float(np.mean(vals))
        out.append(row)
    return out


def _sample_stats(per_sample_sets: list[dict]) -> dict:
    """{set: {num_samples, per_sample: [...], std: {metric}, per_category_std: {cat: {metric}}}} from each
    sample's {set: {means, per_category}} (standard deviation with ddof=1, over samples)."""
    out = {}
    n = len(per_sample_sets)
    for set_name in per_sample_sets[0]:
        means = [ps[set_name]["means"] for ps in per_sample_sets]
        std = {k: float(np.std([m[k] for m in means if m.get(k) is not None], ddof=1))
               for k in means[0] if all(m.get(k) is not None for m in means)}
        cat_std = {}
        for c in per_sample_sets[0][set_name]["per_category"]:
            cm = [ps[set_name]["per_category"][c] for ps in per_sample_sets]
            cat_std[c] = {k: float(np.std([m[k] for m in cm], ddof=1)) for k in cm[0]
                          if k != "num_images" and all(m.get(k) is not None for m in cm)}
        out[set_name] = {"num_samples": n, "per_sample": means, "std": std, "per_category_std": cat_std}
    return out


# --------------------------------------------------------------------------- the cell record
def eval_cell_hash(opt: EvalOptions) -> str:
    """sha256 of what defines an evaluation's numbers apart from the weights and the protocol: the eval sets'
    options, the metric choices, seeds and sample count, and how the model is run (tiling, prompts, ...);
    not names, paths of results, batch sizes or workers."""
    skip_ds = {"name", "batch_size_per_gpu", "num_worker_per_gpu", "pin_memory"}
    datasets = {n: {k: v for k, v in plain_options(o).items() if k not in skip_ds} for n, o in opt.datasets.items()}
    model = None
    if opt.model is not None:
        model = {k: v for k, v in plain_options(opt.model).items() if k not in ("run", "options", "checkpoint")}
    record = {"datasets": datasets, "metrics": {k: c.as_option() for k, c in opt.metrics.items()},
              "seed": opt.eval.seed, "num_samples": opt.eval.num_samples, "max_size_diff": opt.eval.max_size_diff,
              "model": model, "restored": None if opt.restored is None else ("input" if str(opt.restored) == "input"
                                                                             else "folder")}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def weights_identity(source_info: dict) -> str | None:
    """The scored weights' sha256 (a model), or the restored files' fingerprint (a folder); None for the LQ."""
    if source_info.get("kind") == "folder":
        return hashlib.sha256(json.dumps(source_info.get("files_sha256"), sort_keys=True).encode()).hexdigest()
    if source_info.get("kind") == "model":
        return source_info.get("checkpoint_sha256") or hashlib.sha256(
            json.dumps(source_info.get("network_g"), sort_keys=True, default=str).encode()).hexdigest()
    return None


# --------------------------------------------------------------------------- the run
def run_evaluation(opt: EvalOptions, state=None, log=print) -> dict | None:
    """Evaluate ``opt`` (from :func:`ggt_ir.eval.options.load_eval_options`) on every process of ``state``
    (an accelerate PartialState); returns the summary on the main process, None elsewhere."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from ggt_ir.data import DATASETS
    from ggt_ir.eval.metrics import MetricSuite
    from ggt_ir.eval.reference_cache import ReferenceCache, resolve_cache_dir
    from ggt_ir.eval.report import summarize

    s = opt.eval
    if state is None:
        state = PartialState(cpu=use_cpu(s.device))
    device = state.device if s.device != "cpu" else torch.device("cpu")
    rank, world = state.process_index, state.num_processes
    main = state.is_main_process
    say = log if main else (lambda *_: None)

    out_dir = opt.out_dir
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in [*(out_dir / "grids").glob("**/*.[pj][np]g"), *(out_dir / "thumbs").glob("**/*.jpg")]:
            p.unlink()  # previews of an earlier evaluation under the same name
    state.wait_for_everyone()

    cache = ReferenceCache(resolve_cache_dir(s.cache_dir, opt.results_root), s.cache_max_gb) if s.cache else None
    suite = MetricSuite(opt.metrics, device=device, weights_dir=s.weights_dir, strict=s.strict, seed=s.seed, log=say,
                        cache=cache)
    if not suite.metrics:
        raise EvalError("no metric could be created: " + "; ".join(suite.skipped))
    datasets = {name: DATASETS.get(o.type)(o) for name, o in opt.datasets.items()}
    source = open_source(opt, datasets, device)
    if s.num_samples > 1 and not source.stochastic:
        raise EvalError(f"eval.num_samples is {s.num_samples}, but {source.info.get('kind')} outputs do not change "
                        "between samples (only a stochastic restorer, e.g. EditorLoRA, can be sampled several times)")

    say(f"[eval] {opt.name}: {len(datasets)} set(s), metrics {', '.join(suite.metrics)}, "
        f"{world} process(es), device {device}; results in {out_dir}"
        + (f"; {s.num_samples} samples per image" if s.num_samples > 1 else ""))
    per_sample_rows: list[list[dict]] = []
    set_info: dict[str, dict] = {}
    for sample_index in range(s.num_samples):
        all_rows: list[dict] = []
        for set_name, ds in datasets.items():
            ds_opts = opt.datasets[set_name]
            payload: dict[str, Any] = {"rank": rank}
            try:
                payload["rows"] = evaluate_set(set_name, ds, source, suite, opt, rank, world,
                                               pbar=s.pbar and state.is_local_main_process, cache=cache,
                                               sample_index=sample_index)
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
            set_info[set_name] = {"paired": "gt" in ds[0], "type": ds_opts.type,
                                  "dataroot": getattr(ds_opts, "dataroot", None) or getattr(ds_opts, "dataroot_lq", None),
                                  "split": getattr(ds_opts, "split", None)}
        per_sample_rows.append(all_rows)
    if cache is not None:
        cache.flush()

    summary = None
    if main:
        keys = list(suite.metrics)
        per_sample_sets = []
        for rows in per_sample_rows:
            sets = summarize(rows, keys)
            for set_name, fs in folder_scores(rows, suite).items():
                sets[set_name]["means"].update(fs["means"])
                for c, vals in fs["per_category"].items():
                    sets[set_name]["per_category"][c].update(vals)
            per_sample_sets.append(sets)
        rows = _mean_rows(per_sample_rows, keys) if s.num_samples > 1 else [
            {k: v for k, v in r.items() if k != FOLDER_FIELD} for r in per_sample_rows[0]]
        summary = summary_record(opt, source.info, suite, rows, set_info, world, device)
        for set_name, entry in summary["sets"].items():  # set-level metrics; means over samples
            for k in suite.folder():
                vals = [ps[set_name]["means"].get(k) for ps in per_sample_sets if set_name in ps]
                if any(v is not None for v in vals):
                    entry["means"][k] = float(np.mean([v for v in vals if v is not None]))
                for c, cat in entry["per_category"].items():
                    cv = [ps[set_name]["per_category"][c].get(k) for ps in per_sample_sets]
                    cat[k] = float(np.mean(cv)) if all(v is not None for v in cv) else None
        if s.num_samples > 1:
            for set_name, stats in _sample_stats(per_sample_sets).items():
                summary["sets"][set_name]["samples"] = stats
        protocol = suite.protocol()
        summary["protocol"] = protocol
        summary["num_samples"] = s.num_samples
        summary["cell"] = {"eval_sha256": eval_cell_hash(opt), "weights_sha256": weights_identity(source.info),
                           "data_sha256": {n: set_fingerprint(ds) for n, ds in datasets.items()},
                           "protocol_sha256": protocol["sha256"]}
        summary["cache"] = cache.describe() if cache is not None else None
        write_results(opt, summary, rows)
        log(summary_table(summary))
        log(f"[eval] wrote {out_dir / 'summary.json'}, {out_dir / 'per_image.csv'}, {out_dir / 'index.html'}")
    state.wait_for_everyone()
    return summary
