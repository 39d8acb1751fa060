"""What an evaluation writes under ``<results_root>/<name>/``: ``per_image.csv``, ``summary.json``,
``grids/<set>.png``, ``index.html``, ``eval_options.yml``, and the summary table it prints."""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import html
import json
import math
import sys
from pathlib import Path

import numpy as np

from ggt_ir.config import options_to_yaml
from ggt_ir.utils.fs import sha256_text
from ggt_ir.utils.image_io import save_png, side_by_side


# --------------------------------------------------------------------------- summary
def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict], metric_keys: list[str]) -> dict:
    """Per-image rows -> {set: {num_images, means, per_category}}."""
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


def options_yaml(opt) -> str:
    """The resolved eval options as YAML that loads back: metrics written as ``{key: {type, **options}}``."""
    return options_to_yaml(dataclasses.replace(opt, metrics={k: c.as_option() for k, c in opt.metrics.items()}))


def summary_record(opt, source_info: dict, suite, rows: list[dict], set_info: dict[str, dict],
                   world: int, device) -> dict:
    """The content of ``summary.json`` (without ``files.grids``, added when the grids are written)."""
    sets = summarize(rows, list(suite.metrics))
    for k, v in sets.items():
        v.update(set_info[k])
    return {
        "name": opt.name,
        "label": {"model": source_info.get("network_g", {}).get("type") or opt.name, **opt.label},
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "source": source_info,
        "options_file": opt.source_file,
        "options_sha256": sha256_text(options_yaml(opt)),
        "metrics": suite.variants(),
        "skipped_metrics": suite.skipped,
        "sets": sets,
        "seed": opt.eval.seed,
        "world_size": world,
        "device": str(device),
        "weights_dir": str(suite.weights_dir),
        "versions": package_versions(),
        "files": {"per_image_csv": "per_image.csv", "html": "index.html",
                  "images": "images" if source_info.get("kind") == "model" else None},
    }


def write_results(opt, summary: dict, rows: list[dict]) -> None:
    """Every file of the results folder, from the summary and the gathered per-image rows."""
    out_dir = opt.out_dir
    write_csv(out_dir / "per_image.csv", rows, list(summary["metrics"]))
    summary["files"]["grids"] = write_grids(out_dir, summary["sets"])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "eval_options.yml").write_text(options_yaml(opt))
    write_html(out_dir, summary, summary["files"]["grids"])


# --------------------------------------------------------------------------- files
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


def save_grid_panel(panels: list, height: int, path: Path) -> None:
    """One grid row (LQ | output [| GT]) scaled to ``height``, written by the rank that scored the image."""
    import cv2

    img = side_by_side(*panels, gap=4)
    s = height / img.shape[0]
    img = cv2.resize(img, (max(1, round(img.shape[1] * s)), height),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    save_png(img, path)


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


# --------------------------------------------------------------------------- console
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
