"""``ggt-ir table``: paper-style generalization tables from ``ggt-ir eval`` summaries.

Rows are model x training data, columns eval set x metric (with ↑/↓ from the summaries), the best
value of each column in bold, and a Δ row per model: the target training data (GGT-100K) minus
the baseline data. Writes Markdown, LaTeX (booktabs), CSV and a PNG plot of each column's metric
against the training data, one line per model family.

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

from ggt_ir.config import OptionsError, load_typed

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
class TableOptions:
    name: str = "table"
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

    # -- labels
    def set_label(self, c: ColumnOptions) -> str:
        return self.opts.set_labels.get(c.set, c.set)

    def metric_label(self, c: ColumnOptions) -> str:
        if c.label:
            return c.label
        base = self.opts.metric_labels.get(c.metric, DEFAULT_METRIC_LABELS.get(c.metric, c.metric))
        return f"{base} ({c.category})" if c.category else base

    def decimals(self, c: ColumnOptions) -> int:
        return self.opts.decimals.get(c.metric, self.opts.decimals.get("default", DEFAULT_DECIMALS.get(c.metric, 4)))

    def fmt(self, j: int, v: Optional[float], signed: bool = False) -> str:
        if v is None:
            return "–"
        return f"{v:+.{self.decimals(self.opts.columns[j])}f}" if signed else f"{v:.{self.decimals(self.opts.columns[j])}f}"

    def best(self, j: int) -> set[int]:
        """Rows holding the best value of column j (ties compared at the printed precision)."""
        vals = [(i, round(r[j], self.decimals(self.opts.columns[j]))) for i, r in enumerate(self.values) if r[j] is not None]
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
    for r in opts.rows:
        p = _summary_path(r, opts.results_root)
        if not p.is_file():
            raise OptionsError(f"table row (model={r.model}, data={r.data}): summary not found: {p} "
                               "(run `ggt-ir eval` first)")
        s = json.loads(p.read_text())
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
    table = Table(opts, rows, values, [bool(x) for x in lower])
    if opts.delta:
        for m in dict.fromkeys(mm for mm, _ in rows):
            base = [i for i, (mm, d) in enumerate(rows) if mm == m and d == opts.delta.baseline]
            tgt = [i for i, (mm, d) in enumerate(rows) if mm == m and d == opts.delta.target]
            if base and tgt:
                b, t = values[base[0]], values[tgt[0]]
                table.deltas[m] = [None if x is None or y is None else y - x for x, y in zip(b, t)]
    return table


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
            cells = [f"**{t.fmt(j, v)}**" if ref in best[j] else t.fmt(j, v) for j, v in enumerate(t.values[ref])]
            lines.append("| " + " | ".join([model, data] + cells) + " |")
        else:
            cells = [t.fmt(j, v, signed=True) for j, v in enumerate(t.deltas[ref])]
            lines.append("| " + " | ".join([ref, t.delta_label()] + cells) + " |")
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
            cells = [_tex_num(c) for c in cells]
            out.append(" & ".join([tex_escape(model) if model != prev_model else "", tex_escape(data)] + cells) + r" \\")
            prev_model = model
        else:
            d = t.opts.delta
            cells = [_tex_num(t.fmt(j, v, signed=True)) for j, v in enumerate(t.deltas[ref])]
            out.append(" & ".join(["", rf"$\Delta$ ({tex_escape(d.target)} $-$ {tex_escape(d.baseline)})"] + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
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


def write_all(t: Table, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext, text in (("md", to_markdown(t)), ("tex", to_latex(t)), ("csv", to_csv(t))):
        p = out_dir / f"{name}.{ext}"
        p.write_text(text)
        files.append(p)
    if t.opts.plot:
        p = out_dir / f"{name}.png"
        plot(t, p)
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
    a = p.parse_args(argv)
    try:
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
