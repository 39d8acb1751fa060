"""The evaluation loop behind ``ggt-ir eval``.

Each process takes a disjoint, strided slice of every eval set, gets the outputs from the source
(:mod:`ggt_ir.eval.sources`: a restorer, a folder of restored images, or the LQ inputs) and scores them
with the metric suite; per-image rows are gathered to the main process, which writes the results
(:mod:`ggt_ir.eval.report`) under ``<results_root>/<name>/`` and prints a summary table.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ggt_ir.eval.options import EvalOptions, use_cpu
from ggt_ir.eval.report import grid_picks, save_previews, summary_record, summary_table, write_results
from ggt_ir.eval.sources import EvalError, FolderSource, InputSource, RestorerSource, open_source


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


def evaluate_set(set_name: str, ds, source, suite, opt: EvalOptions, rank: int, world: int,
                 pbar: bool) -> list[dict]:
    """This rank's slice of one eval set -> per-image rows (and the previews of its images: thumbnails of
    every image, grid panels of the first ``eval.num_grid`` images of each category)."""
    from ggt_ir.utils.progress import progress

    s = opt.eval
    mine = list(range(rank, len(ds), world))
    index = image_index(ds)
    grid_ids = grid_picks([c for c, _ in index], s.num_grid)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, mine), batch_size=None,
                                         num_workers=s.num_workers)
    rows, chunk = [], []
    bar = progress(total=len(mine), desc=f"eval {set_name}", unit="img", enabled=pbar)  # lines in a log file

    def flush():
        samples = list(chunk)
        chunk.clear()
        outputs = source.outputs(set_name, [smp for _, smp in samples])
        # score groups of same-size images together
        groups: dict[tuple, list] = {}
        for (i, smp), out in zip(samples, outputs):
            smp["out"] = out
            gt, cropped = smp.get("gt"), False
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
                smp["_row"] = row
        for i, smp in samples:  # what the report pages show: previews, full-size files, the grid picks' scores
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


def run_evaluation(opt: EvalOptions, state=None, log=print) -> dict | None:
    """Evaluate ``opt`` (from :func:`ggt_ir.eval.options.load_eval_options`) on every process of ``state``
    (an accelerate PartialState); returns the summary on the main process, None elsewhere."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from ggt_ir.data import DATASETS
    from ggt_ir.eval.metrics import MetricSuite

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

    suite = MetricSuite(opt.metrics, device=device, weights_dir=s.weights_dir, strict=s.strict, seed=s.seed, log=say)
    if not suite.metrics:
        raise EvalError("no metric could be created: " + "; ".join(suite.skipped))
    datasets = {name: DATASETS.get(o.type)(o) for name, o in opt.datasets.items()}
    source = open_source(opt, datasets, device)

    say(f"[eval] {opt.name}: {len(datasets)} set(s), metrics {', '.join(suite.metrics)}, "
        f"{world} process(es), device {device}; results in {out_dir}")
    all_rows: list[dict] = []
    set_info: dict[str, dict] = {}
    for set_name, ds in datasets.items():
        ds_opts = opt.datasets[set_name]
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
        set_info[set_name] = {"paired": "gt" in ds[0], "type": ds_opts.type,
                              "dataroot": getattr(ds_opts, "dataroot", None) or getattr(ds_opts, "dataroot_lq", None),
                              "split": getattr(ds_opts, "split", None)}

    summary = None
    if main:
        summary = summary_record(opt, source.info, suite, all_rows, set_info, world, device)
        write_results(opt, summary, all_rows)
        log(summary_table(summary))
        log(f"[eval] wrote {out_dir / 'summary.json'}, {out_dir / 'per_image.csv'}, {out_dir / 'index.html'}")
    state.wait_for_everyone()
    return summary
