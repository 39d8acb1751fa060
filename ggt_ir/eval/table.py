"""``ggt-ir table``: paper-style generalization tables from ``ggt-ir eval`` summaries.

Rows are model x training data, columns eval set x metric (with ↑/↓ from the summaries), the best
value of each column in bold, and a Δ row per model: the target training data (GGT-100K) minus
the baseline data. Writes Markdown, LaTeX (booktabs), CSV, a PNG plot of each column's metric
against the training data (one line per model family), a PNG of the Δ per model and metric, and an
HTML page: the table, the plots, and the rows' outputs for the same images side by side, per eval set
and category, with a full-size viewer (slider or toggle between any two, and the LQ and GT).

Cells of one column must be scored under one protocol: every key of each summary's ``metrics.<metric>``
block (type, implementation, options, recorded versions and weight hashes ...; not ``note``) and the
number of images averaged are compared. Differing cells are marked † with the differing keys
(``protocol: mark``, the default) or refused (``protocol: strict``).

    ggt-ir table -opt options/tables/generalization.yml
    ggt-ir table results/*/summary.json --columns test:psnr,test:lpips,reallq:musiq --delta Existing:GGT-100K

A table file (options/tables/*.yml)::

    name: generalization              # output stem: <out_dir>/<name>.{md,tex,csv,png}
    title: Existing data vs GGT-100K   # LaTeX caption / Markdown heading
    results_root: results             # rows given by `run:` read <results_root>/<run>/summary.json
    out_dir: results/tables
    rows:
      - {model: SwinIR, data: Existing, run: swinir_existing}
      - {model: SwinIR, data: GGT-100K, summary: results/swinir_ggt/summary.json}
    columns:
      - {set: test, metric: psnr}
      - {set: test, metric: psnr, category: rain, label: PSNR (rain)}
      - {set: reallq250, metric: musiq}
    set_labels: {test: GGT-100K test, reallq250: RealLQ250}
    metric_labels: {psnr: PSNR, ssim: SSIM, lpips: LPIPS}
    delta: {baseline: Existing, target: GGT-100K}    # optional
    decimals: {psnr: 2, default: 4}
    protocol: mark                    # mark | strict: cells of one column scored differently
    compare: {images_per_category: 3, rows: []}      # HTML page: images per category; rows ("Model / Data"), [] = all
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ggt_ir.config import OptionsError, add_import_argument, at_least, choice, import_modules, load_typed

DEFAULT_METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "musiq": "MUSIQ",
                         "maniqa": "MANIQA", "maniqa-pipal": "MANIQA", "clipiqa": "CLIPIQA", "topiq_nr": "TOPIQ",
                         "niqe": "NIQE", "brisque": "BRISQUE"}
DEFAULT_DECIMALS = {"psnr": 2, "niqe": 3, "musiq": 2, "brisque": 2}


@dataclass
class RowOptions:
    model: Optional[str] = None  # default: the summary's label.model
    data: Optional[str] = None  # default: the summary's label.data
    run: Optional[str] = None  # <results_root>/<run>/summary.json
    summary: Optional[str] = None  # a summary.json path
    # `ggt-ir reproduce` (ggt_ir/reproduce): how the row is made when its summary is missing or stale
    recipe: Optional[str] = None  # a training option file (options/train/<Model>/<model>_<arm>.yml)
    arm: Optional[str] = None  # existing | synthetic | ggt100k (default: from the recipe's file name)
    set: List[str] = field(default_factory=list)  # training overrides (key=value), after the table's train_set
    pretrained: Dict[str, Any] = field(default_factory=dict)  # a zero-shot row: eval `model:` (run / options /
    #   network_g + checkpoint ...), scored without training
    restored: Optional[str] = None  # a zero-shot row: a folder of another method's outputs
    eval_set: List[str] = field(default_factory=list)  # eval overrides for this row (after the table's)
    accelerate: Dict[str, Any] = field(default_factory=dict)  # launch settings for this row's training
    sec_per_iter: Optional[float] = None  # cost hint for --dry-run (seconds per iteration with these settings)
    sec_per_iter_source: str = ""  # where that figure comes from


@dataclass
class ColumnOptions:
    set: str = "test"
    metric: str = "psnr"
    category: Optional[str] = None  # a per-category mean instead of the set mean
    label: Optional[str] = None
    lower_better: Optional[bool] = None  # default: from the summary


@dataclass
class DeltaOptions:
    baseline: str = "Existing"
    target: str = "GGT-100K"


@dataclass
class CompareOptions:
    images_per_category: int = at_least(3, 0)  # images of each category on the HTML comparison page
    rows: List[str] = field(default_factory=list)  # rows compared, as "Model / Data"; default: every row


@dataclass
class TableOptions:
    name: str = "table"
    imports: List[str] = field(default_factory=list)  # user modules to import first (registry.py: plugins)
    title: str = ""
    label: str = ""  # LaTeX \label
    results_root: str = "results"
    out_dir: str = "results/tables"
    rows: List[RowOptions] = field(default_factory=list)
    columns: List[ColumnOptions] = field(default_factory=list)
    set_labels: Dict[str, str] = field(default_factory=dict)
    metric_labels: Dict[str, str] = field(default_factory=dict)
    delta: Optional[DeltaOptions] = None
    decimals: Dict[str, int] = field(default_factory=dict)
    plot: bool = True
    html: bool = True  # <name>.html: the table, the plots, the rows' outputs side by side
    protocol: str = choice("mark", "mark", "strict")  # cells of one column scored under different protocols
    compare: CompareOptions = field(default_factory=CompareOptions)
    # `ggt-ir reproduce` (ggt_ir/reproduce): how missing rows are trained and scored
    eval: Optional[str] = None  # the eval option file (eval sets x metrics) every row is scored with
    eval_set: List[str] = field(default_factory=list)  # eval overrides for every row
    experiments_root: Optional[str] = None  # where trainings run (default: each recipe's path.experiments_root)
    train_set: List[str] = field(default_factory=list)  # training overrides for every recipe row
    accelerate: Dict[str, Any] = field(default_factory=dict)  # `accelerate launch` settings (1 GPU to N nodes)
    eval_accelerate: Dict[str, Any] = field(default_factory=dict)  # launch settings for evaluations (default: 1 process)
    cost: Dict[str, Any] = field(default_factory=dict)  # {model: {sec_per_iter, source}}: --dry-run estimates
    slurm: Dict[str, Any] = field(default_factory=dict)  # --emit slurm: partition, time, account, ... (sbatch)


@dataclass
class Table:
    opts: TableOptions
    rows: list[tuple[str, str]]  # (model, data)
    values: list[list[Optional[float]]]  # rows x columns
    lower_better: list[bool]
    deltas: dict[str, list[Optional[float]]] = field(default_factory=dict)  # model -> values
    summaries: list[dict] = field(default_factory=list)  # each row's summary.json
    summary_paths: list[Path] = field(default_factory=list)
    marks: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, column) -> how its protocol differs
    protocol_keys: list[list[str]] = field(default_factory=list)  # per column: the keys compared

    # -- labels
    def set_label(self, c: ColumnOptions) -> str:
        return self.opts.set_labels.get(c.set, c.set)

    def set_labels_get(self, set_name: str) -> str:
        return self.opts.set_labels.get(set_name, set_name)

    def metric_label(self, c: ColumnOptions) -> str:
        if c.label:
            return c.label
        base = self.opts.metric_labels.get(c.metric, DEFAULT_METRIC_LABELS.get(c.metric, c.metric))
        return f"{base} ({c.category})" if c.category else base

    def decimals(self, c: ColumnOptions) -> int:
        return self.opts.decimals.get(c.metric, self.opts.decimals.get("default", DEFAULT_DECIMALS.get(c.metric, 4)))

    def row_label(self, i: int) -> str:
        return " / ".join(self.rows[i])

    def delta_marked(self, model: str, j: int) -> bool:
        """A Δ computed from a marked cell is marked too."""
        d = self.opts.delta
        return any((i, j) in self.marks for i, (m, data) in enumerate(self.rows)
                   if m == model and d and data in (d.baseline, d.target))

    def fmt(self, j: int, v: Optional[float], signed: bool = False) -> str:
        if v is None:
            return "–"
        return f"{v:+.{self.decimals(self.opts.columns[j])}f}" if signed else f"{v:.{self.decimals(self.opts.columns[j])}f}"

    def best(self, j: int) -> set[int]:
        """Rows holding the best value of column j (ties compared at the printed precision); cells marked as
        scored under another protocol take no part."""
        vals = [(i, round(r[j], self.decimals(self.opts.columns[j]))) for i, r in enumerate(self.values)
                if r[j] is not None and (i, j) not in self.marks]
        if len(vals) < 2:
            return set()
        target = (min if self.lower_better[j] else max)(v for _, v in vals)
        return {i for i, v in vals if v == target}

    def delta_label(self) -> str:
        d = self.opts.delta
        return f"Δ ({d.target} − {d.baseline})" if d else ""

    def layout(self) -> list[tuple[str, Any]]:
        """Printed rows in order: ("row", i) and ("delta", model) right after each model's rows."""
        out, models = [], list(dict.fromkeys(m for m, _ in self.rows))
        for m in models:
            out += [("row", i) for i, (mm, _) in enumerate(self.rows) if mm == m]
            if m in self.deltas:
                out.append(("delta", m))
        return out


# --------------------------------------------------------------------------- building
def load_table_options(path: str | Path) -> TableOptions:
    opts: TableOptions = load_typed(TableOptions, path)
    if not opts.columns:
        raise OptionsError(f"{path}: 'columns' is empty (e.g. - {{set: test, metric: psnr}})")
    if not opts.rows:
        raise OptionsError(f"{path}: 'rows' is empty (e.g. - {{model: SwinIR, data: GGT-100K, run: swinir_ggt}})")
    return opts


def _summary_path(r: RowOptions, results_root: str) -> Path:
    if r.summary:
        return Path(r.summary)
    if r.run:
        return Path(results_root) / r.run / "summary.json"
    raise OptionsError(f"table row {r}: give 'run' or 'summary'")


def build_table(opts: TableOptions) -> Table:
    rows, values, lower = [], [], [None] * len(opts.columns)
    summaries, paths = [], []
    for r in opts.rows:
        p = _summary_path(r, opts.results_root)
        if not p.is_file():
            raise OptionsError(f"table row (model={r.model}, data={r.data}): summary not found: {p} "
                               "(run `ggt-ir eval` first)")
        s = json.loads(p.read_text())
        summaries.append(s)
        paths.append(p)
        label = s.get("label") or {}
        model, data = r.model or label.get("model") or s.get("name", "?"), r.data or label.get("data") or "?"
        rows.append((model, data))
        vals = []
        for j, c in enumerate(opts.columns):
            info = s.get("sets", {}).get(c.set)
            v = None
            if info is not None:
                src = info["per_category"].get(c.category, {}) if c.category else info.get("means", {})
                v = src.get(c.metric)
            vals.append(None if v is None else float(v))
            variant = s.get("metrics", {}).get(c.metric)
            if c.lower_better is not None:
                lower[j] = c.lower_better
            elif variant is not None and lower[j] is None:
                lower[j] = bool(variant["lower_better"])
            elif variant is not None and lower[j] != bool(variant["lower_better"]):
                raise OptionsError(f"column {c.set}:{c.metric}: summaries disagree on the direction of {c.metric}")
        values.append(vals)
    for j, c in enumerate(opts.columns):
        if lower[j] is None:  # no summary has it: fall back to the metric table
            from ggt_ir.eval.metrics import SPECS

            lower[j] = SPECS[c.metric].lower_better if c.metric in SPECS else False
    table = Table(opts, rows, values, [bool(x) for x in lower], summaries=summaries, summary_paths=paths)
    check_protocols(table)
    if opts.compare.rows:
        unknown = [x for x in opts.compare.rows if x not in {table.row_label(i) for i in range(len(rows))}]
        if unknown:
            raise OptionsError(f"compare.rows: no table row {', '.join(map(repr, unknown))} (rows: "
                               + ", ".join(repr(table.row_label(i)) for i in range(len(rows))) + ")")
    if opts.delta:
        for m in dict.fromkeys(mm for mm, _ in rows):
            base = [i for i, (mm, d) in enumerate(rows) if mm == m and d == opts.delta.baseline]
            tgt = [i for i, (mm, d) in enumerate(rows) if mm == m and d == opts.delta.target]
            if base and tgt:
                b, t = values[base[0]], values[tgt[0]]
                table.deltas[m] = [None if x is None or y is None else y - x for x, y in zip(b, t)]
    return table


# --------------------------------------------------------------------------- protocols
PROTOCOL_IGNORED = ("note",)  # free text in a metric block, not part of how it scores


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cell_protocol(summary: dict, c: ColumnOptions) -> Optional[dict]:
    """How one cell was scored: every key of the summary's ``metrics.<metric>`` block, flattened
    (``options.test_y_channel``, ...), except free text, and ``num_images``, the number of images its mean
    is over. None when the summary records no block for the metric."""
    variant = (summary.get("metrics") or {}).get(c.metric)
    if variant is None:
        return None
    p = {k: v for k, v in _flatten(variant).items() if k.split(".")[0] not in PROTOCOL_IGNORED}
    recorded = ((summary.get("protocol") or {}).get("metrics") or {}).get(c.metric)
    if recorded:  # the summary's protocol block: weight files and package versions, hashed by the eval
        p["weights"] = ", ".join(f"{w.get('file')}={str(w.get('sha256'))[:12]}" for w in recorded.get("weights", []))
        p["protocol_sha256"] = recorded.get("sha256")
    info = (summary.get("sets") or {}).get(c.set) or {}
    n = (info.get("per_category", {}).get(c.category) or {}).get("num_images") if c.category else info.get("num_images")
    if n is not None:
        p["num_images"] = n
    return p


_ABSENT = "(not recorded)"


def check_protocols(t: Table) -> None:
    """Compare, column by column, the protocols of the cells that have a value; the most common one is the
    column's (ties: the first row's). Others are marked in ``t.marks`` with the keys that differ, or with
    ``protocol: strict`` refused in one error listing them all."""
    problems = []
    t.protocol_keys = []
    for j, c in enumerate(t.opts.columns):
        cells = [(i, cell_protocol(t.summaries[i], c)) for i in range(len(t.rows)) if t.values[i][j] is not None]
        keys = sorted({k for _, p in cells if p for k in p})
        t.protocol_keys.append(keys)
        if len(cells) < 2:
            continue
        counts: dict[str, int] = {}
        for _, p in cells:
            counts[json.dumps(p, sort_keys=True)] = counts.get(json.dumps(p, sort_keys=True), 0) + 1
        ref_key = max(counts, key=lambda k: counts[k])  # max keeps the first of equal counts
        ref = json.loads(ref_key)
        for i, p in cells:
            if json.dumps(p, sort_keys=True) == ref_key:
                continue
            if p is None:
                why = f"the summary records no 'metrics.{c.metric}' block"
            elif ref is None:
                why = f"the column's other cells record no 'metrics.{c.metric}' block"
            else:
                diff = [k for k in keys if p.get(k, _ABSENT) != ref.get(k, _ABSENT)]
                why = "; ".join(f"{k} = {json.dumps(p.get(k, _ABSENT))} (column: {json.dumps(ref.get(k, _ABSENT))})"
                                for k in diff)
            t.marks[(i, j)] = why
            problems.append(f"{t.row_label(i)} ({t.summary_paths[i]}) in column {c.set}:{c.metric}"
                            f"{':' + c.category if c.category else ''}: {why}")
    if problems and t.opts.protocol == "strict":
        raise OptionsError("cells scored under different protocols in one column (protocol: strict; "
                           "use protocol: mark to print them marked): " + " | ".join(problems))


def protocol_notes(t: Table) -> list[str]:
    """One line per marked cell: row, column, and how its protocol differs."""
    return [f"{t.row_label(i)}, {t.set_label(t.opts.columns[j])} {t.metric_label(t.opts.columns[j])}: {why}"
            for (i, j), why in sorted(t.marks.items())]


# --------------------------------------------------------------------------- writers
def _arrow(lower: bool, latex: bool = False) -> str:
    if latex:
        return r"$\downarrow$" if lower else r"$\uparrow$"
    return "↓" if lower else "↑"


def to_markdown(t: Table) -> str:
    cols = t.opts.columns
    head = ["Model", "Training data"] + [f"{t.set_label(c)} {t.metric_label(c)}{_arrow(t.lower_better[j])}"
                                         for j, c in enumerate(cols)]
    lines = []
    if t.opts.title:
        lines += [f"**{t.opts.title}**", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * len(cols)) + "|"]
    best = [t.best(j) for j in range(len(cols))]
    for kind, ref in t.layout():
        if kind == "row":
            model, data = t.rows[ref]
            cells = [(f"**{t.fmt(j, v)}**" if ref in best[j] else t.fmt(j, v)) + ("†" if (ref, j) in t.marks else "")
                     for j, v in enumerate(t.values[ref])]
            lines.append("| " + " | ".join([model, data] + cells) + " |")
        else:
            cells = [t.fmt(j, v, signed=True) + ("†" if t.delta_marked(ref, j) else "") for j, v in enumerate(t.deltas[ref])]
            lines.append("| " + " | ".join([ref, t.delta_label()] + cells) + " |")
    if t.marks:
        lines += ["", "† scored under a different protocol than the rest of its column (not compared for bold):"]
        lines += [f"- {n}" for n in protocol_notes(t)]
    return "\n".join(lines) + "\n"


_TEX_ESCAPE = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
               "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in s)


def _tex_num(cell: str) -> str:
    """A printed number for LaTeX: a real minus sign, ``--`` for a missing value."""
    cell = cell.replace("–", "--")
    return cell.replace("{-", "{$-$", 1) if cell.startswith(r"\textbf{-") else (
        "$-$" + cell[1:] if cell.startswith("-") and cell != "--" else cell)


def to_latex(t: Table) -> str:
    cols = t.opts.columns
    n = len(cols)
    # header row 1: eval sets spanning their consecutive columns
    spans: list[tuple[str, int, int]] = []  # (label, first col index, last)
    for j, c in enumerate(cols):
        lab = t.set_label(c)
        if spans and spans[-1][0] == lab and spans[-1][2] == j - 1:
            spans[-1] = (lab, spans[-1][1], j)
        else:
            spans.append((lab, j, j))
    top = " & ".join(["", ""] + [rf"\multicolumn{{{b - a + 1}}}{{c}}{{{tex_escape(lab)}}}" for lab, a, b in spans])
    rules = " ".join(rf"\cmidrule(lr){{{a + 3}-{b + 3}}}" for _, a, b in spans)
    second = " & ".join(["Model", "Training data"] + [f"{tex_escape(t.metric_label(c))}{_arrow(t.lower_better[j], True)}"
                                                      for j, c in enumerate(cols)])
    out = [r"\begin{table}[t]", r"\centering"]
    if t.opts.title:
        out.append(rf"\caption{{{tex_escape(t.opts.title)}}}")
    if t.opts.label:
        out.append(rf"\label{{{t.opts.label}}}")
    out += [rf"\begin{{tabular}}{{ll{'r' * n}}}", r"\toprule", top + r" \\", rules, second + r" \\", r"\midrule"]
    best = [t.best(j) for j in range(n)]
    prev_model = None
    for kind, ref in t.layout():
        if kind == "row":
            model, data = t.rows[ref]
            if prev_model is not None and model != prev_model:
                out.append(r"\midrule")
            cells = [rf"\textbf{{{t.fmt(j, v)}}}" if ref in best[j] else t.fmt(j, v) for j, v in enumerate(t.values[ref])]
            cells = [_tex_num(c) + (r"$^\dagger$" if (ref, j) in t.marks else "") for j, c in enumerate(cells)]
            out.append(" & ".join([tex_escape(model) if model != prev_model else "", tex_escape(data)] + cells) + r" \\")
            prev_model = model
        else:
            d = t.opts.delta
            cells = [_tex_num(t.fmt(j, v, signed=True)) + (r"$^\dagger$" if t.delta_marked(ref, j) else "")
                     for j, v in enumerate(t.deltas[ref])]
            out.append(" & ".join(["", rf"$\Delta$ ({tex_escape(d.target)} $-$ {tex_escape(d.baseline)})"] + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.marks:
        out.append(r"\par\smallskip{\footnotesize $^\dagger$ scored under a different protocol than the rest of its "
                   r"column: " + "; ".join(tex_escape(n) for n in protocol_notes(t)) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "data"] + [f"{c.set}:{c.metric}" + (f":{c.category}" if c.category else "")
                                    + ("(lower)" if t.lower_better[j] else "(higher)") for j, c in enumerate(t.opts.columns)])
    for kind, ref in t.layout():
        if kind == "row":
            w.writerow(list(t.rows[ref]) + ["" if v is None else f"{v:.10g}" for v in t.values[ref]])
        else:
            w.writerow([ref, t.delta_label()] + ["" if v is None else f"{v:.10g}" for v in t.deltas[ref]])
    return buf.getvalue()


def plot(t: Table, path: Path, panel: tuple[int, int] = (320, 240)) -> None:
    """One panel per column: metric against training data (x, in row order), a line per model family.
    Drawn with Pillow (no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    datas = list(dict.fromkeys(d for _, d in t.rows))
    models = list(dict.fromkeys(m for m, _ in t.rows))
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    ncol = len(t.opts.columns)
    per_row = min(3, ncol)
    nrows = (ncol + per_row - 1) // per_row
    pw, ph = panel
    legend_h = 18 * ((len(models) + 3) // 4) + 8
    img = Image.new("RGB", (pw * per_row, ph * nrows + legend_h), "white")
    draw = ImageDraw.Draw(img)
    for j, c in enumerate(t.opts.columns):
        ox, oy = (j % per_row) * pw, (j // per_row) * ph
        left, right, top, bottom = ox + 56, ox + pw - 14, oy + 24, oy + ph - 40
        title = f"{t.set_label(c)}: {t.metric_label(c)} ({'lower' if t.lower_better[j] else 'higher'} is better)"
        draw.text((ox + 8, oy + 6), title, fill="black", font=font)
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        vals = [v for v in (r[j] for r in t.values) if v is not None]
        if not vals:
            draw.text((left + 8, top + 8), "no data", fill="gray", font=font)
            continue
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = (hi - lo) * 0.1
        lo, hi = lo - pad, hi + pad

        def xy(di: int, v: float, box=(left, right, top, bottom, lo, hi)) -> tuple[float, float]:
            x0, x1, y0, y1, v0, v1 = box
            return x0 + (x1 - x0) * ((di + 0.5) / len(datas)), y1 - (y1 - y0) * (v - v0) / (v1 - v0)

        for k in range(3):  # y ticks
            v = lo + (hi - lo) * k / 2
            _, y = xy(0, v)
            draw.line([left - 3, y, left, y], fill="black")
            draw.text((ox + 4, y - 5), t.fmt(j, v), fill="black", font=font)
        for di, d in enumerate(datas):
            x, _ = xy(di, lo)
            draw.line([x, bottom, x, bottom + 3], fill="black")
            draw.text((x - 3 * len(d), bottom + 6), d, fill="black", font=font)
        for mi, m in enumerate(models):
            pts = [xy(datas.index(d), t.values[i][j]) for i, (mm, d) in enumerate(t.rows)
                   if mm == m and t.values[i][j] is not None]
            color = palette[mi % len(palette)]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    for mi, m in enumerate(models):
        x, y = 10 + (mi % 4) * (img.width // 4), ph * nrows + 4 + 18 * (mi // 4)
        draw.rectangle([x, y + 3, x + 12, y + 11], fill=palette[mi % len(palette)])
        draw.text((x + 18, y + 2), m, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def plot_delta(t: Table, path: Path, panel_width: int = 320) -> None:
    """One panel per column: a bar per model, Δ = target − baseline training data (``delta:``), green
    where the target data is better (by the metric's direction), red where worse. Drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    models = list(t.deltas)
    ncol = len(t.opts.columns)
    per_row = min(3, ncol)
    nrows = (ncol + per_row - 1) // per_row
    pw, ph = panel_width, 56 + 24 * len(models) + 26
    d = t.opts.delta
    head = 22
    img = Image.new("RGB", (pw * per_row, head + ph * nrows), "white")
    draw = ImageDraw.Draw(img)
    # Pillow's default font has no Greek letters or minus sign: the image says "Delta" and "-"
    draw.text((8, 5), f"Delta = {d.target} - {d.baseline}, per model (green: {d.target} better, red: worse)",
              fill="black", font=font)
    for j, c in enumerate(t.opts.columns):
        ox, oy = (j % per_row) * pw, head + (j // per_row) * ph
        left, right, top = ox + 78, ox + pw - 16, oy + 26
        bottom = top + 24 * len(models) + 6
        draw.text((ox + 8, oy + 6), f"{t.set_label(c)}: {t.metric_label(c)} "
                  f"({'lower' if t.lower_better[j] else 'higher'} is better)", fill="black", font=font)
        vals = [t.deltas[m][j] for m in models]
        peak = max([abs(v) for v in vals if v is not None] + [1e-12])
        span = peak * 1.7  # room for the value beside its bar
        x0 = (left + right) / 2

        def x_of(v: float) -> float:
            return x0 + (right - left) / 2 * v / span

        draw.rectangle([left, top, right, bottom], outline=(190, 190, 190))
        draw.line([x0, top, x0, bottom], fill=(90, 90, 90))
        for tick in (-peak, peak):
            draw.line([x_of(tick), bottom, x_of(tick), bottom + 3], fill="black")
            label = t.fmt(j, tick, signed=True)
            draw.text((x_of(tick) - 3 * len(label), bottom + 6), label, fill="black", font=font)
        for mi, (m, v) in enumerate(zip(models, vals)):
            y = top + 6 + 24 * mi
            draw.text((ox + 6, y + 3), m[:12], fill="black", font=font)
            if v is None:
                draw.text((x0 + 4, y + 3), "–", fill="gray", font=font)
                continue
            better = (v < 0) if t.lower_better[j] else (v > 0)
            color = (44, 160, 44) if better else (214, 39, 40) if v != 0 else (127, 127, 127)
            draw.rectangle([min(x0, x_of(v)), y, max(x0, x_of(v)), y + 16], fill=color)
            label = t.fmt(j, v, signed=True) + (" *" if t.delta_marked(m, j) else "")  # * = † (protocol differs)
            tx = x_of(v) + 4 if v >= 0 else x_of(v) - 4 - 6 * len(label)
            draw.text((max(left + 2, min(tx, right - 6 * len(label))), y + 3), label, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# --------------------------------------------------------------------------- the HTML page
def _per_image(t: Table, i: int) -> Optional[dict]:
    """A row's per_image.json (written by ``ggt-ir eval``), or None for summaries written before it existed."""
    rel = (t.summaries[i].get("files") or {}).get("per_image_json")
    p = t.summary_paths[i].parent / (rel or "per_image.json")
    return json.loads(p.read_text()) if p.is_file() else None


def _html_table(t: Table) -> str:
    from ggt_ir.eval.webpage import arrow, esc

    cols = t.opts.columns
    spans: list[list] = []  # [set label, number of consecutive columns]
    for c in cols:
        if spans and spans[-1][0] == t.set_label(c):
            spans[-1][1] += 1
        else:
            spans.append([t.set_label(c), 1])
    out = ["<table class='result'><thead><tr><th class='l' rowspan='2'>Model</th><th class='l' rowspan='2'>Training data</th>"
           + "".join(f"<th colspan='{n}'>{esc(lab)}</th>" for lab, n in spans) + "</tr><tr>"
           + "".join(f"<th>{esc(t.metric_label(c))}{arrow(t.lower_better[j])}</th>" for j, c in enumerate(cols))
           + "</tr></thead><tbody>"]
    best = [t.best(j) for j in range(len(cols))]
    for kind, ref in t.layout():
        if kind == "row":
            model, data = t.rows[ref]
            cells = []
            for j, v in enumerate(t.values[ref]):
                text = f"<b>{t.fmt(j, v)}</b>" if ref in best[j] else t.fmt(j, v)
                if (ref, j) in t.marks:
                    cells.append(f"<td class='marked' title='{esc(t.marks[(ref, j)])}'>{text}<span class='mark'>†</span></td>")
                else:
                    cells.append(f"<td>{text}</td>")
            out.append(f"<tr><td class='l'>{esc(model)}</td><td class='l'>{esc(data)}</td>{''.join(cells)}</tr>")
        else:
            cells = []
            for j, v in enumerate(t.deltas[ref]):
                cls = ""
                if v:
                    cls = "better" if ((v < 0) if t.lower_better[j] else (v > 0)) else "worse"
                mark = "<span class='mark'>†</span>" if t.delta_marked(ref, j) else ""
                cells.append(f"<td class='{cls}'>{t.fmt(j, v, signed=True)}{mark}</td>")
            out.append(f"<tr class='delta'><td class='l'>{esc(ref)}</td><td class='l'>{esc(t.delta_label())}</td>"
                       f"{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _protocol_html(t: Table) -> str:
    from ggt_ir.eval.webpage import esc

    rows = []
    for j, c in enumerate(t.opts.columns):
        marked = [(i, why) for (i, jj), why in sorted(t.marks.items()) if jj == j]
        status = ("<span class='worse'>differs: " + "; ".join(f"{esc(t.row_label(i))}: {esc(why)}" for i, why in marked)
                  + "</span>") if marked else "<span class='better'>same for every cell</span>"
        rows.append(f"<tr><td class='l'>{esc(t.set_label(c))} {esc(t.metric_label(c))}</td>"
                    f"<td class='l' style='white-space:normal'>{esc(', '.join(t.protocol_keys[j]) or '(none recorded)')}</td>"
                    f"<td class='l' style='white-space:normal'>{status}</td></tr>")
    return ("<h2>Protocol check</h2><p class='note'>For each column, the keys compared between its cells: every key of "
            "each summary's <code>metrics.&lt;metric&gt;</code> block (flattened; free-text <code>note</code> left out) "
            f"and <code>num_images</code>, the images its mean is over. protocol: <b>{esc(t.opts.protocol)}</b> "
            "(mark: differing cells are marked † and take no part in the bold; strict: refused).</p>"
            "<table><thead><tr><th class='l'>column</th><th class='l'>keys compared</th><th class='l'>result</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _comparison_html(t: Table, out_dir: Path) -> tuple[str, dict[str, list[dict]]]:
    """The chosen rows' outputs of the same images side by side: per eval set of the columns and per
    category, the first ``compare.images_per_category`` images (in set order), LQ | each row | GT, each
    with the row's scores in the table's metrics for that set; a click opens the full-size viewer."""
    from ggt_ir.eval.report import viewer_item
    from ggt_ir.eval.webpage import arrow, esc, fmt, href, scores_text

    chosen = [i for i in range(len(t.rows)) if not t.opts.compare.rows or t.row_label(i) in t.opts.compare.rows]
    data = {i: _per_image(t, i) for i in chosen}
    missing = [i for i in chosen if data[i] is None]
    body = ["<h2>Outputs side by side</h2>"]
    if missing:
        body.append("<p class='note'>No per-image data for " + ", ".join(esc(t.row_label(i)) for i in missing)
                    + " (summaries written before ggt-ir eval wrote per_image.json; evaluate them again to show them).</p>")
    have = [i for i in chosen if data[i] is not None]
    n_per = t.opts.compare.images_per_category
    items: dict[str, list[dict]] = {}
    if not have or n_per == 0:
        return "\n".join(body + ["<p class='note'>nothing to compare.</p>"]), items

    def link(i: int, rel: Optional[str]) -> Optional[str]:
        return href(t.summary_paths[i].parent / rel, out_dir) if rel else None

    body.append("<p class='note'>The same images for every row: LQ | " + " | ".join(esc(t.row_label(i)) for i in have)
                + " | GT, with each row's scores (bold: the best of the rows). Click an image for the full-size "
                "viewer: a slider (or toggle) between any two of them, synchronised zoom and pan.</p>")
    for s in dict.fromkeys(c.set for c in t.opts.columns):
        keys = list(dict.fromkeys(c.metric for c in t.opts.columns if c.set == s))
        recs = {i: {r["image"]: r for r in data[i]["sets"].get(s, [])} for i in have}
        ref = next((i for i in have if recs[i]), None)
        body.append(f"<h3>{esc(t.set_labels_get(s))}</h3>")
        if ref is None:
            body.append("<p class='note'>no row has per-image results for this set.</p>")
            continue
        absent = [i for i in have if not recs[i]]
        if absent:
            body.append("<p class='note'>not scored on this set: " + ", ".join(esc(t.row_label(i)) for i in absent) + "</p>")
        order = list(recs[ref])
        cats = list(dict.fromkeys(recs[ref][k]["category"] for k in order))
        group = f"cmp:{s}"
        items[group] = []
        directions = {k: next((bool(t.summaries[i]["metrics"][k]["lower_better"]) for i in have
                               if k in (t.summaries[i].get("metrics") or {})), False) for k in keys}
        body.append("<div class='cats'>")
        for cat in cats:
            picks = [k for k in order if recs[ref][k]["category"] == cat][:n_per]
            body.append(f"<div class='cat' data-category='{esc(cat)}'><h4>{esc(cat)}</h4><div class='trips'>")
            for key in picks:
                base = next((i for i in have if key in recs[i]), ref)
                base_rec = recs[base][key]
                cols = [("LQ", base, base_rec, "lq")] + [(t.row_label(i), i, recs[i].get(key), "output") for i in have] \
                    + ([("GT", base, base_rec, "gt")] if base_rec.get("files", {}).get("gt") else [])
                best = {}
                for k in keys:
                    vals = [(recs[i][key]["scores"].get(k), i) for i in have if key in recs[i]]
                    vals = [(v, i) for v, i in vals if v is not None]
                    if len(vals) > 1:
                        best[k] = (min if directions[k] else max)(vals)[1]
                pos = len(items[group])
                layers, figs = [], []
                for li, (name, i, rec, role) in enumerate(cols):
                    src = link(i, rec.get("files", {}).get(role)) if rec else None
                    thumb = link(i, rec.get("thumbs", {}).get(role)) if rec else None
                    got = (rec["scores"] if role == "output" else rec.get("panel_scores", {}).get(role, {})) if rec else {}
                    scores = {k: got[k] for k in keys if k in got}  # LQ / GT: scored for the eval's grid picks
                    layers.append((name, src, scores_text(scores, directions) if scores else ""))
                    bold = role == "output"
                    caption = "".join(f"<span>{'<b>' if bold and best.get(k) == i else ''}{esc(k)}{arrow(directions[k])} {fmt(v)}"
                                      f"{'</b>' if bold and best.get(k) == i else ''}</span>" for k, v in scores.items())
                    img = (f"<img src='{thumb}' loading='lazy' alt='{esc(name)}' data-group='{esc(group)}' data-i='{pos}' "
                           f"data-layer='{li}'>" if thumb
                           else "<div style='width:96px;height:96px;background:#eee'>missing</div>")
                    figs.append(f"<figure class='panel' data-row='{esc(name)}'><span class='badge'>{esc(name)}</span>{img}"
                                f"<figcaption>{caption or '&nbsp;'}</figcaption></figure>")
                a = 1
                b = 2 if len(have) > 1 else len(cols) - 1
                items[group].append(viewer_item(f"{t.set_labels_get(s)}: {key} ({cat})", layers, a, b))
                body.append(f"<div class='trip'><div class='name'>{esc(key)}</div><div class='panels'>{''.join(figs)}</div></div>")
            body.append("</div></div>")
        body.append("</div>")
    return "\n".join(body), items


def to_html(t: Table, out_dir: Path, plots: list[Path]) -> str:
    """``<name>.html``: the table (marks and Δ rows), the plots, the protocol check, the rows (with links to
    their eval pages) and their outputs side by side. Self-contained; opens from file://."""
    from ggt_ir.eval.webpage import esc, href, page

    title = t.opts.title or t.opts.name
    body = [f"<h1>{esc(title)}</h1>", _html_table(t)]
    if t.marks:
        body.append("<p class='note'><span class='mark'>†</span> scored under a different protocol than the rest of its "
                    "column (not compared for bold):</p><ul class='note'>"
                    + "".join(f"<li>{esc(n)}</li>" for n in protocol_notes(t)) + "</ul>")
    if plots:
        body.append("<div class='plots'>" + "".join(f"<img src='{href(p, out_dir)}' alt='{esc(p.name)}'>" for p in plots)
                    + "</div>")
    rows = []
    for i, p in enumerate(t.summary_paths):
        page_rel = (t.summaries[i].get("files") or {}).get("html")
        eval_page = p.parent / page_rel if page_rel else None
        link = (f"<a href='{href(eval_page, out_dir)}'>eval page</a> &middot; " if eval_page and eval_page.is_file() else "")
        rows.append(f"<li>{esc(t.row_label(i))}: {link}<a href='{href(p, out_dir)}'>summary.json</a></li>")
    body.append("<h2>Rows</h2><ul>" + "".join(rows) + "</ul>")
    body.append(_protocol_html(t))
    cmp_html, items = _comparison_html(t, out_dir)
    body.append(cmp_html)
    return page(title, "\n".join(body), items)


def write_all(t: Table, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext, text in (("md", to_markdown(t)), ("tex", to_latex(t)), ("csv", to_csv(t))):
        p = out_dir / f"{name}.{ext}"
        p.write_text(text)
        files.append(p)
    plots = []
    if t.opts.plot:
        plots.append(out_dir / f"{name}.png")
        plot(t, plots[-1])
        if t.deltas:
            plots.append(out_dir / f"{name}_delta.png")
            plot_delta(t, plots[-1])
    files += plots
    if t.opts.html:
        p = out_dir / f"{name}.html"
        p.write_text(to_html(t, out_dir, plots))
        files.append(p)
    return files


# --------------------------------------------------------------------------- CLI
def _parse_columns(spec: str) -> list[ColumnOptions]:
    cols = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3):
            raise OptionsError(f"--columns: expected set:metric[:category], got {item!r}")
        cols.append(ColumnOptions(set=parts[0], metric=parts[1], category=parts[2] if len(parts) == 3 else None))
    return cols


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ggt-ir table", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("summaries", nargs="*", help="summary.json files (rows from their label: model / data)")
    p.add_argument("-opt", "--opt", help="table option file (options/tables/*.yml)")
    p.add_argument("--columns", help="set:metric[:category],... (without -opt)")
    p.add_argument("--delta", help="BASELINE:TARGET training-data names for the Δ row (without -opt)")
    p.add_argument("--name", help="output stem (default: the option file's name)")
    p.add_argument("--out-dir", help="output folder (default: results/tables)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-html", action="store_true", help="no <name>.html comparison page")
    p.add_argument("--protocol", choices=("mark", "strict"),
                   help="cells of one column scored under different protocols: mark them (default) or refuse")
    add_import_argument(p)
    a = p.parse_args(argv)
    try:
        import_modules(a.imports, "--import")
        if a.opt:
            opts = load_table_options(a.opt)
        else:
            if not a.summaries or not a.columns:
                p.error("give -opt FILE, or summary.json files and --columns")
            opts = TableOptions(name="table", rows=[RowOptions(summary=s) for s in a.summaries],
                                columns=_parse_columns(a.columns))
            if a.delta:
                base, _, tgt = a.delta.partition(":")
                opts.delta = DeltaOptions(baseline=base, target=tgt)
        if a.opt and (a.summaries or a.columns):
            opts.rows += [RowOptions(summary=s) for s in a.summaries]
            opts.columns += _parse_columns(a.columns) if a.columns else []
        if a.name:
            opts.name = a.name
        if a.out_dir:
            opts.out_dir = a.out_dir
        if a.no_plot:
            opts.plot = False
        if a.no_html:
            opts.html = False
        if a.protocol:
            opts.protocol = a.protocol
        table = build_table(opts)
    except OptionsError as e:
        print(f"ggt-ir table: {e}", file=sys.stderr)
        return 2
    files = write_all(table, Path(opts.out_dir), opts.name)
    print(to_markdown(table))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
