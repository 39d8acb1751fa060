"""``ggt-ir synth compare``: the MFM study. Every generator of the option file x every prompting mode of
``compare.modes`` (fixed, adaptive) is one arm, run as its own synthesis run on the same probe set (the input)
with the same QC settings (NR metrics on every candidate: no early exit); adaptive prompts are shared by all
arms (one VLM call per image).

Writes, in ``compare.out`` (default ``<output.root>/<name>``)::

    arms/<generator>-<mode>/     each arm's run folder (manifest, work, dataset, summary)
    table.md, table.csv          per arm and category: QC pass rates, fidelity and NR metrics, cost and time
    compare.json                 the same numbers, plus the metric variants
    index.html                   side by side: LQ | each arm's chosen candidate (or its best, marked rejected)
"""
from __future__ import annotations

import copy
import csv
import html
import io
import json
import math
from pathlib import Path

from ggt_ir.synth.options import SynthOptions
from ggt_ir.utils.fs import atomic_write_json, atomic_write_text


def _mean(xs):
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def arm_rows(arm: str, generator: str, mode: str, records: list[dict], score_keys: list[str]) -> list[dict]:
    groups: dict[str, list[dict]] = {"all": records}
    for r in records:
        groups.setdefault(r.get("category", "unknown"), []).append(r)
    rows = []
    for cat, rs in groups.items():
        first = [c for r in rs for c in r.get("candidates", []) if c.get("attempt", 0) == 0]
        ok = [c for c in first if c.get("status") == "ok"]
        n = len(rs)
        row = {"arm": arm, "generator": generator, "prompting": mode, "category": cat, "images": n,
               "candidates": len(first),
               "gen_ok": len(ok) / len(first) if first else None,
               "qc1_pass_candidates": (sum(bool(c.get("qc1", {}).get("passed")) for c in ok) / len(ok)) if ok else None,
               "qc1_pass_images": sum(any(c.get("qc1", {}).get("passed") for c in r.get("candidates", []))
                                      for r in rs) / n if n else None,
               "accepted": sum(r.get("status") == "accepted" for r in rs) / n if n else None,
               "cost_per_image": _mean([r.get("cost_usd", {}).get("total", 0.0) for r in rs]),
               "gen_s_per_candidate": _mean([c.get("time_s") for c in first if not c.get("cached")]),
               "s_per_image": _mean([r.get("timings", {}).get("total") for r in rs])}
        for k in score_keys:
            row[k] = _mean([c.get("qc1", {}).get("scores", {}).get(k) for c in ok])
        rows.append(row)
    return rows


_FMT = {"gen_ok": "{:.0%}", "qc1_pass_candidates": "{:.0%}", "qc1_pass_images": "{:.0%}", "accepted": "{:.0%}",
        "cost_per_image": "${:.4f}", "gen_s_per_candidate": "{:.2f}", "s_per_image": "{:.2f}"}
_HEAD = {"images": "images", "qc1_pass_candidates": "QC1 pass (cand.)", "qc1_pass_images": "QC1 pass (img.)",
         "accepted": "accepted", "cost_per_image": "$/img", "gen_s_per_candidate": "gen s/cand.",
         "s_per_image": "s/img"}


def markdown_table(rows: list[dict], score_keys: list[str], category: str | None = None) -> str:
    cols = ["images", "qc1_pass_candidates", "qc1_pass_images", "accepted", *score_keys, "cost_per_image",
            "gen_s_per_candidate", "s_per_image"]
    sel = [r for r in rows if category is None or r["category"] == category]
    head = "| generator | prompting | category | " + " | ".join(_HEAD.get(c, c) for c in cols) + " |"
    sep = "|---|---|---|" + "---:|" * len(cols)

    def cell(r, c):
        v = r.get(c)
        if v is None:
            return "–"
        return _FMT.get(c, "{:.4g}" if isinstance(v, float) else "{}").format(v)

    body = [f"| {r['generator']} | {r['prompting']} | {r['category']} | " + " | ".join(cell(r, c) for c in cols) + " |"
            for r in sel]
    return "\n".join([head, sep, *body])


def _score_keys(all_records: list[list[dict]]) -> list[str]:
    keys: list[str] = []
    for recs in all_records:
        for r in recs:
            for c in r.get("candidates", []):
                for k, v in (c.get("qc1", {}).get("scores") or {}).items():
                    if k.startswith(("fidelity.", "nr.", "gain.")) or k == "color.delta_e":
                        if isinstance(v, (int, float)) and k not in keys:
                            keys.append(k)
    order = {"fidelity": 0, "nr": 1, "gain": 2, "color": 3}
    return sorted(keys, key=lambda k: (order.get(k.partition(".")[0], 9), k))


def side_by_side_html(out: Path, arms: list[tuple[str, Path]], records: dict[str, list[dict]], table_md: str) -> str:
    keys = sorted({r["key"] for recs in records.values() for r in recs})
    by = {a: {r["key"]: r for r in records[a]} for a, _ in arms}
    parts = ["<!doctype html><meta charset='utf-8'><title>synth compare</title><style>"
             "body{font:13px system-ui,sans-serif;background:#16181c;color:#ddd}td,th{padding:3px;vertical-align:top}"
             "img{width:160px;image-rendering:pixelated;display:block}.rej{outline:3px solid #a33}"
             ".acc{outline:3px solid #2a7}pre{font-size:12px}</style>",
             "<h1>ggt-ir synth compare</h1><pre>" + html.escape(table_md) + "</pre><table><tr><th>image</th><th>LQ</th>"
             + "".join(f"<th>{html.escape(a)}</th>" for a, _ in arms) + "</tr>"]
    for k in keys:
        first = next(by[a][k] for a, _ in arms if k in by[a])
        lq = first.get("lq_preview")
        arm0_dir = next(d for a, d in arms if k in by[a])
        row = [f"<tr><td>{html.escape(k)}<br>{html.escape(first.get('category', ''))}</td>",
               f"<td><img src='{html.escape(str((arm0_dir / lq).relative_to(out)))}'></td>" if lq else "<td></td>"]
        for a, d in arms:
            r = by[a].get(k)
            if r is None:
                row.append("<td>–</td>")
                continue
            ok = [c for c in r.get("candidates", []) if c.get("status") == "ok"]
            c = next((c for c in ok if c["id"] == r.get("candidate")), None)
            if c is None and ok:
                c = max(ok, key=lambda c: c.get("qc1", {}).get("select_score") or -1e300)
            if c is None:
                row.append(f"<td>{html.escape(r.get('status', ''))}: {html.escape(r.get('reason', ''))}</td>")
                continue
            img = c.get("processed_path") or c["path"]
            cls = "acc" if r.get("status") == "accepted" else "rej"
            sc = c.get("qc1", {}).get("scores", {})
            row.append(f"<td><img class='{cls}' src='{html.escape(str((d / img).relative_to(out)))}'>"
                       f"{html.escape(r.get('status', ''))} ({html.escape(r.get('stage', ''))})<br>"
                       + "<br>".join(f"{html.escape(kk)} {sc[kk]:.3g}" for kk in sorted(sc)
                                     if kk.startswith(("fidelity.", "gain.")) and isinstance(sc[kk], (int, float)))
                       + "</td>")
        parts.append("".join(row) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def run_compare(opt: SynthOptions, state, log=print, command: str = "") -> dict:
    from ggt_ir.synth.pipeline import SynthError, run_synth

    out = Path(opt.compare.out or opt.run_dir)
    if "adaptive" in opt.compare.modes and opt.prompting.vlm is None:
        raise SynthError("compare.modes has 'adaptive' but 'prompting.vlm' names no VLM to write the prompts")
    arms: list[tuple[str, str, str, Path]] = []
    resources: dict = {}  # models are built once for all arms
    for g in opt.generators:
        for mode in opt.compare.modes:
            arm = copy.deepcopy(opt)
            arm.name = f"{g.name}-{mode}"
            arm.output.root = str(out / "arms")
            arm.generators = [copy.deepcopy(g)]
            arm.prompting.mode = mode
            arm.prompting.cache_dir = str(out / "prompts")
            arm.qc.metrics.early_exit = False  # the study averages NR metrics over every candidate
            if state.is_main_process:
                log(f"[compare] arm {arm.name}")
            run_synth(arm, state, log=log, command=command, resources=resources)
            arms.append((arm.name, g.name, mode, arm.run_dir))
    result: dict = {}
    if state.is_main_process:
        from ggt_ir.synth.pipeline import read_jsonl

        records = {a: read_jsonl(d / "manifest.jsonl")[0] for a, _, _, d in arms}
        keys = _score_keys(list(records.values()))
        rows = [row for a, g, m, _ in arms for row in arm_rows(a, g, m, records[a], keys)]
        md_all = markdown_table(rows, keys, "all")
        md = md_all + "\n\nper category:\n\n" + markdown_table([r for r in rows if r["category"] != "all"], keys)
        atomic_write_text(out / "table.md", md + "\n")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out / "table.csv", buf.getvalue())
        summaries = {a: json.loads((d / "summary.json").read_text()) for a, _, _, d in arms
                     if (d / "summary.json").is_file()}
        metrics = next((s.get("metrics") for s in summaries.values() if s.get("metrics")), {})
        result = {"arms": [{"arm": a, "generator": g, "prompting": m, "run": str(d)} for a, g, m, d in arms],
                  "rows": rows, "score_keys": keys, "metrics": metrics}
        atomic_write_json(out / "compare.json", result)
        atomic_write_text(out / "index.html", side_by_side_html(out, [(a, d) for a, _, _, d in arms], records, md_all))
        log(f"[compare] {len(arms)} arms x {len(records[arms[0][0]])} images -> {out / 'table.md'}, "
            f"{out / 'index.html'}\n{md_all}")
    state.wait_for_everyone()
    return result
