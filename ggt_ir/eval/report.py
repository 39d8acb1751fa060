"""What an evaluation writes under ``<results_root>/<name>/``: ``per_image.csv``, ``per_image.json``,
``summary.json``, previews (``thumbs/``, ``grids/``), ``grids/<set>.png``, ``index.html``,
``eval_options.yml``, and the summary table it prints."""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import math
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ggt_ir.config import options_to_yaml
from ggt_ir.eval.webpage import arrow, esc, fmt, json_safe, page, scores_text
from ggt_ir.utils.fs import atomic_write, atomic_write_json, atomic_write_text, sha256_text
from ggt_ir.utils.image_io import save_jpeg


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
    """The content of ``summary.json`` (without ``files.grids`` and ``files.per_image_json``, added when they are written)."""
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


# --------------------------------------------------------------------------- previews (written by the ranks)
THUMB_SIZE = 128  # longest side of every image's thumbnails (the per-image table, `ggt-ir table`'s comparison page)
ROLES = ("lq", "output", "gt")
ROLE_LABELS = {"lq": "LQ", "output": "output", "gt": "GT"}


def grid_picks(categories: list[str], per_category: int) -> set[int]:
    """Indices of the first ``per_category`` images of every category, in set order: the same images for
    every method scored on the set, so two reports (and ``ggt-ir table``) show the same picks."""
    count: dict[str, int] = {}
    picks = set()
    for i, c in enumerate(categories):
        if count.get(c, 0) < per_category:
            count[c] = count.get(c, 0) + 1
            picks.add(i)
    return picks


def _resized(x, h: int, w: int):
    """A (3, H, W) float tensor at (h, w): area-averaged when shrinking, nearest when enlarging. Resized
    before the conversion to 8 bits, so a 1024² image costs a small tensor's conversion, not a full one."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x[None].float(), size=(h, w), mode="area" if h < x.shape[-2] else "nearest")[0]


def save_previews(out_dir: Path, set_name: str, key: str, images: dict, panel_height: int | None) -> dict:
    """Small JPEG previews of one image's ``lq`` / ``output`` / ``gt`` (CHW tensors): thumbnails
    ``thumbs/<set>/<key>.<role>.jpg`` (longest side THUMB_SIZE) and, for a grid pick (``panel_height``),
    grid panels ``grids/<set>/<key>.<role>.jpg``. All are drawn at the output's size and aspect (an upscaling
    model's smaller LQ is enlarged). Returns ``{"thumbs": {role: path}, "panel": {role: path}}``, paths
    relative to ``out_dir``. Full-size images are never copied: the pages link the files themselves."""
    images = {r: x[0] if x.ndim == 4 else x for r, x in images.items() if x is not None}
    h, w = images["output"].shape[-2:]
    t = THUMB_SIZE / max(h, w)
    th, tw = max(1, round(h * t)), max(1, round(w * t))
    out: dict = {"thumbs": {}}
    for r, x in images.items():
        out["thumbs"][r] = rel = f"thumbs/{set_name}/{key}.{r}.jpg"
        save_jpeg(_resized(x, th, tw), out_dir / rel, quality=85)
    if panel_height:
        out["panel"] = {}
        for r, x in images.items():
            out["panel"][r] = rel = f"grids/{set_name}/{key}.{r}.jpg"
            save_jpeg(_resized(x, panel_height, max(1, round(w * panel_height / h))), out_dir / rel, quality=92)
    return out


# --------------------------------------------------------------------------- per-image records
def image_records(rows: list[dict], metric_keys: list[str]) -> dict[str, list[dict]]:
    """``{set: [record]}`` in set order; a record holds the image's key, category, scores, files (full
    size: lq, output, gt; relative to the results folder), thumbnails, and for grid picks the panels and
    the scores of the LQ (scored as if it were the output) and of the GT (no-reference metrics)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        rec = {"index": r["index"], "image": r["image"], "category": r["category"],
               "scores": {k: r[k] for k in metric_keys if k in r}}
        for k in ("note", "files", "thumbs", "panel", "panel_scores"):
            if k in r:
                rec[k] = r[k]
        out.setdefault(r["set"], []).append(rec)
    return out


def write_per_image_json(path: Path, summary: dict, records: dict[str, list[dict]]) -> None:
    atomic_write_json(path, json_safe({"name": summary["name"], "label": summary["label"], "thumb_size": THUMB_SIZE,
                                       "sets": records}))


def write_results(opt, summary: dict, rows: list[dict]) -> None:
    """Every file of the results folder, from the summary and the gathered per-image rows."""
    out_dir = opt.out_dir
    metric_keys = list(summary["metrics"])
    records = image_records(rows, metric_keys)
    write_csv(out_dir / "per_image.csv", rows, metric_keys)
    write_per_image_json(out_dir / "per_image.json", summary, records)
    summary["files"]["per_image_json"] = "per_image.json"
    summary["files"]["grids"] = write_grids(out_dir, summary, records)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "eval_options.yml").write_text(options_yaml(opt))
    write_html(out_dir, summary, records, grid_size=opt.eval.grid_size, num_grid=opt.eval.num_grid)


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


def _panel_scores(rec: dict, role: str) -> dict:
    return rec["scores"] if role == "output" else rec.get("panel_scores", {}).get(role, {})


def _wrap(draw, words: list[str], font, width: int) -> list[str]:
    lines, cur = [], ""
    for w in words:
        cand = f"{cur}  {w}" if cur else w
        if cur and draw.textlength(cand, font=font) > width:
            lines.append(cur)
            cur = w
        else:
            cur = cand
    return lines + ([cur] if cur else [])


def write_grids(out_dir: Path, summary: dict, records: dict[str, list[dict]]) -> dict[str, str]:
    """``grids/<set>.png``: every grid pick of a set (by category) as LQ | output | GT panels, each labelled
    with its scores: the page's grids as one image, for slides. Drawn from the panels the ranks wrote."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    bold = ImageFont.load_default(size=13)
    grids = {}
    for s, recs in records.items():
        picks = [r for r in recs if r.get("panel")]
        if not picks:
            continue
        blocks = []
        for cat in sorted(dict.fromkeys(r["category"] for r in picks)):
            for rec in (r for r in picks if r["category"] == cat):
                roles = [ro for ro in ROLES if ro in rec["panel"]]
                panels = [Image.open(out_dir / rec["panel"][ro]).convert("RGB") for ro in roles]
                scratch = ImageDraw.Draw(panels[0])
                captions = [_wrap(scratch, [ROLE_LABELS[ro]] + [f"{k} {_fmt(v)}" for k, v in _panel_scores(rec, ro).items()],
                                  font, max(p.width - 6, 60)) for ro, p in zip(roles, panels)]
                cap_h = 15 * max(len(c) for c in captions) + 4
                width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
                block = Image.new("RGB", (width, 18 + panels[0].height + cap_h), "white")
                d = ImageDraw.Draw(block)
                d.text((0, 2), f"{cat}  {rec['image']}", fill="black", font=bold)
                x = 0
                for p, cap in zip(panels, captions):
                    block.paste(p, (x, 18))
                    for li, text in enumerate(cap):
                        d.text((x + 2, 18 + p.height + 2 + 15 * li), text, fill="black" if li else (0, 60, 160), font=font)
                    x += p.width + 4
                blocks.append(block)
        w = max(b.width for b in blocks)
        grid = Image.new("RGB", (w, sum(b.height + 10 for b in blocks)), "white")
        y = 0
        for b in blocks:
            grid.paste(b, (0, y))
            y += b.height + 10
        grids[s] = f"grids/{s}.png"
        atomic_write(out_dir / grids[s], lambda tmp, g=grid: g.save(tmp, format="PNG"))
    return grids


# --------------------------------------------------------------------------- index.html
def _source_text(src: dict) -> str:
    kind = src.get("kind", "?")
    if kind == "folder":
        return "restored images from " + ", ".join(f"{s}: {f}" for s, f in src.get("folders", {}).items())
    if kind == "input":
        return "the LQ inputs themselves (no restoration)"
    net = (src.get("network_g") or {}).get("type")
    parts = [f"{k}: {src[k]}" for k in ("run", "checkpoint", "param_key", "tile", "self_ensemble") if src.get(k)]
    return f"{kind} {net or ''} ({', '.join(parts)})" if parts else f"{kind} {net or ''}"


def _metric_heads(keys: list[str], metrics: dict) -> str:
    return "".join(f"<th data-type='num' data-key='{esc(k)}' data-lower='{int(metrics[k]['lower_better'])}'>{esc(k)}"
                   f"{arrow(metrics[k]['lower_better'])}</th>" for k in keys)


def _num_cells(vals: dict, keys: list[str]) -> str:
    return "".join(f"<td data-v='{'' if vals.get(k) is None else repr(float(vals[k]))}'>{_fmt(vals.get(k))}</td>"
                   for k in keys)


def viewer_item(title: str, layers: list[tuple[str, str | None, str]], a: int, b: int) -> dict:
    """One entry of the viewer's data: ``layers`` are (name, link or None, scores text); layers without a
    file are left out and ``a``/``b`` (the two shown first) follow them."""
    kept = [(k, (n, s, t)) for k, (n, s, t) in enumerate(layers) if s]
    index = {k: j for j, (k, _) in enumerate(kept)}
    a2 = index.get(a, 0)
    b2 = index.get(b, next((j for j in range(len(kept)) if j != a2), a2))
    return {"title": title, "layers": [{"name": n, "src": s, "scores": t} for _, (n, s, t) in kept], "a": a2, "b": b2}


def _link(rel: str | None) -> str | None:
    return quote(rel, safe="/") if rel else None


def write_html(out_dir: Path, summary: dict, records: dict[str, list[dict]], grid_size: int = 256,
               num_grid: int = 0) -> None:
    """``index.html``: per set the summary table, per-category grids (LQ | output | GT with the scores of
    each panel), a sortable per-image table with thumbnails, and a full-size viewer (slider between any
    two of LQ / output / GT, synchronised zoom and pan). Everything inline; opens from file://."""
    metrics = summary["metrics"]
    directions = {k: bool(v["lower_better"]) for k, v in metrics.items()}
    label = summary.get("label") or {}
    files = summary.get("files", {})
    links = [("summary.json", "summary.json"), ("per_image.csv", "per_image.csv"), ("per_image.json", "per_image.json"),
             ("eval_options.yml", "eval_options.yml")]
    body = [f"<h1>{esc(summary['name'])}</h1>",
            f"<p class='meta'>{esc(label.get('model', ''))} {('/ ' + esc(label['data'])) if label.get('data') else ''} "
            f"&middot; {esc(summary.get('date', ''))} &middot; {esc(_source_text(summary.get('source', {})))}</p>",
            "<p class='meta'>" + "".join(f"<a href='{esc(h)}'>{esc(t)}</a>" for t, h in links)
            + f" &middot; {summary.get('world_size', 1)} process(es) on {esc(summary.get('device', '?'))}"
            + f" &middot; seed {summary.get('seed', '?')}</p>"]
    if len(summary["sets"]) > 1:
        body.append("<p class='meta'>sets: " + " ".join(f"<a href='#set-{k}'>{esc(s)}</a>"
                                                        for k, s in enumerate(summary["sets"])) + "</p>")
    items: dict[str, list[dict]] = {}
    for si, (s, info) in enumerate(summary["sets"].items()):
        recs = records.get(s, [])
        keys = list(info["means"])
        paired = info.get("paired")
        body.append(f"<h2 id='set-{si}'>{esc(s)} <small>({info['num_images']} images, "
                    f"{'paired: full- and no-reference metrics' if paired else 'LQ only: no-reference metrics'})</small></h2>")
        # summary table: one row per category (sortable), the set mean in the footer
        rows_html = "".join(f"<tr><th class='l'>{esc(c)}</th><td data-v='{v['num_images']}'>{v['num_images']}</td>"
                            f"{_num_cells(v, keys)}</tr>" for c, v in info["per_category"].items())
        body.append("<table class='sortable summary'><thead><tr><th class='l' data-type='text'>category</th>"
                    f"<th data-type='num' data-lower='0'>images</th>{_metric_heads(keys, metrics)}</tr></thead>"
                    f"<tbody>{rows_html}</tbody><tfoot><tr><th class='l'>all</th><td>{info['num_images']}</td>"
                    f"{_num_cells(info['means'], keys)}</tr></tfoot></table>")
        # the viewer's items: one per image, in set order
        items[s] = []
        for rec in recs:
            f = rec.get("files", {})
            layers = [(ROLE_LABELS[ro], _link(f.get(ro)), scores_text(_panel_scores(rec, ro), directions)) for ro in ROLES]
            items[s].append(viewer_item(f"{s}: {rec['image']} ({rec['category']})", layers, 1, 2 if f.get("gt") else 0))
        body.append(_grids_html(s, si, recs, info, keys, metrics, directions, grid_size, num_grid, files.get("grids", {})))
        body.append(_image_table_html(s, si, recs, info, keys, metrics))
    if summary.get("skipped_metrics"):
        body.append("<h2>Skipped metrics</h2><ul>" + "".join(
            f"<li><b>{esc(k)}</b>: <pre>{esc(v)}</pre></li>" for k, v in summary["skipped_metrics"].items()) + "</ul>")
    atomic_write_text(out_dir / "index.html", page(summary["name"], "\n".join(body), items))


def _grids_html(s: str, si: int, recs: list[dict], info: dict, keys: list[str], metrics: dict,
                directions: dict, grid_size: int, num_grid: int, grid_pngs: dict) -> str:
    picks = [r for r in recs if r.get("panel")]
    if not picks:
        return f"<h3>Per-category grids</h3><p class='note'>none (eval.num_grid: {num_grid})</p>"
    roles = [ro for ro in ROLES if ro in picks[0]["panel"]]
    out = ["<h3>Per-category grids</h3><p class='note'>The first "
           f"{num_grid} image(s) of each category (the same images for every method scored on this set): "
           + " | ".join(ROLE_LABELS[ro] for ro in roles)
           + ", each with its scores (the LQ scored as if it were the output"
           + (", the GT with the no-reference metrics" if "gt" in roles else "")
           + "; green / red: the output is better / worse than the LQ). Click a panel for the full-size view."
           + (f" The same grid as one image: <a href='{_link(grid_pngs[s])}'>{esc(grid_pngs[s])}</a>." if s in grid_pngs else "")
           + "</p><div class='cats'>"]
    for cat in sorted(dict.fromkeys(r["category"] for r in picks)):
        cinfo = info["per_category"].get(cat, {})
        means = " &middot; ".join(f"{esc(k)}{arrow(directions[k])} {_fmt(cinfo.get(k))}" for k in keys)
        out.append(f"<div class='cat' data-category='{esc(cat)}'><h4>{esc(cat)} <small>({cinfo.get('num_images', '?')} "
                   f"images; mean {means})</small></h4><div class='trips'>")
        for rec in (r for r in picks if r["category"] == cat):
            pos = recs.index(rec)
            lq_scores = _panel_scores(rec, "lq")
            figs = []
            for li, ro in enumerate(roles):
                spans = []
                for k, v in _panel_scores(rec, ro).items():
                    cls = ""
                    if ro == "output" and v is not None and lq_scores.get(k) is not None and v != lq_scores[k]:
                        better = (v < lq_scores[k]) if directions.get(k) else (v > lq_scores[k])
                        cls = " class='better'" if better else " class='worse'"
                    spans.append(f"<span{cls}>{esc(k)}{arrow(directions.get(k, False))} {_fmt(v)}</span>")
                figs.append(f"<figure class='panel' data-role='{ro}'><span class='badge'>{ROLE_LABELS[ro]}</span>"
                            f"<img src='{_link(rec['panel'][ro])}' loading='lazy' alt='{ROLE_LABELS[ro]} {esc(rec['image'])}' "
                            f"data-group='{esc(s)}' data-i='{pos}' data-layer='{ROLES.index(ro)}' height='{grid_size}'>"
                            f"<figcaption>{''.join(spans) or ('reference' if ro == 'gt' else '&nbsp;')}</figcaption></figure>")
            out.append(f"<div class='trip'><div class='name' title='{esc(rec['image'])}'>{esc(rec['image'])}</div>"
                       f"<div class='panels'>{''.join(figs)}</div></div>")
        out.append("</div></div>")
    out.append("</div>")
    return "\n".join(out)


def _image_table_html(s: str, si: int, recs: list[dict], info: dict, keys: list[str], metrics: dict) -> str:
    tid = f"img-{si}"
    cats = list(info["per_category"])
    has_note = any("note" in r for r in recs)
    out = [f"<h3>Per-image table</h3><div class='controls'>category: <select data-filter='{tid}'>"
           "<option value=''>all</option>" + "".join(f"<option>{esc(c)}</option>" for c in cats) + "</select> "
           f"<span id='{tid}-count'>{len(recs)}</span> of {len(recs)} images shown &middot; click a header to sort, "
           "a thumbnail for the full-size view</div>",
           f"<div class='scroll'><table class='sortable images' id='{tid}'><thead><tr><th data-type='num' data-lower='1'>#</th>"
           "<th data-nosort>output</th><th class='l' data-type='text'>image</th><th class='l' data-type='text'>category</th>"
           f"{_metric_heads(keys, metrics)}" + ("<th class='l' data-type='text'>note</th>" if has_note else "")
           + "</tr></thead><tbody>"]
    for pos, rec in enumerate(recs):
        thumb = rec.get("thumbs", {}).get("output")
        img = (f"<img class='thumb' src='{_link(thumb)}' loading='lazy' alt='' data-group='{esc(s)}' data-i='{pos}'>"
               if thumb else "")
        out.append(f"<tr data-cat='{esc(rec['category'])}'><td data-v='{rec['index']}'>{rec['index']}</td><td>{img}</td>"
                   f"<td class='l'>{esc(rec['image'])}</td><td class='l'>{esc(rec['category'])}</td>"
                   f"{_num_cells(rec['scores'], keys)}" + (f"<td class='l'>{esc(rec.get('note', ''))}</td>" if has_note else "")
                   + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)

# --------------------------------------------------------------------------- console
def _fmt(v) -> str:
    return fmt(v)


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
