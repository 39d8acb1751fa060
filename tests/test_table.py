"""`ggt-ir table` on fixture summaries (tests/data/results/*/summary.json): exact Markdown and LaTeX."""
from __future__ import annotations

from pathlib import Path

import pytest

from ggt_ir.eval.table import build_table, load_table_options, main, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[1]
TABLE = "tests/data/table_generalization.yml"

EXPECTED_MD = """\
**Existing data vs GGT-100K**

| Model | Training data | GGT test PSNR↑ | GGT test SSIM↑ | GGT test LPIPS↓ | GGT test PSNR (rain)↑ | RealLQ MUSIQ↑ | RealLQ NIQE↓ |
|:---|:---|---:|---:|---:|---:|---:|---:|
| SwinIR | Synthetic | 22.50 | 0.7010 | 0.3123 | 20.10 | 55.12 | 5.123 |
| SwinIR | Existing | 23.25 | 0.7204 | 0.2871 | 20.90 | 58.40 | 4.876 |
| SwinIR | GGT-100K | **24.50** | **0.7512** | 0.2301 | **22.45** | **63.91** | **4.200** |
| SwinIR | Δ (GGT-100K − Existing) | +1.25 | +0.0308 | -0.0570 | +1.55 | +5.51 | -0.676 |
| Restormer | Existing | 23.90 | 0.7302 | 0.2702 | 21.00 | 57.00 | 4.900 |
| Restormer | GGT-100K | **24.50** | 0.7488 | **0.2289** | 22.00 | 61.00 | – |
| Restormer | Δ (GGT-100K − Existing) | +0.60 | +0.0186 | -0.0413 | +1.00 | +4.00 | – |
"""

EXPECTED_TEX = r'''\begin{table}[t]
\centering
\caption{Existing data vs GGT-100K}
\label{tab:generalization}
\begin{tabular}{llrrrrrr}
\toprule
 &  & \multicolumn{4}{c}{GGT test} & \multicolumn{2}{c}{RealLQ} \\
\cmidrule(lr){3-6} \cmidrule(lr){7-8}
Model & Training data & PSNR$\uparrow$ & SSIM$\uparrow$ & LPIPS$\downarrow$ & PSNR (rain)$\uparrow$ & MUSIQ$\uparrow$ & NIQE$\downarrow$ \\
\midrule
SwinIR & Synthetic & 22.50 & 0.7010 & 0.3123 & 20.10 & 55.12 & 5.123 \\
 & Existing & 23.25 & 0.7204 & 0.2871 & 20.90 & 58.40 & 4.876 \\
 & GGT-100K & \textbf{24.50} & \textbf{0.7512} & 0.2301 & \textbf{22.45} & \textbf{63.91} & \textbf{4.200} \\
 & $\Delta$ (GGT-100K $-$ Existing) & +1.25 & +0.0308 & $-$0.0570 & +1.55 & +5.51 & $-$0.676 \\
\midrule
Restormer & Existing & 23.90 & 0.7302 & 0.2702 & 21.00 & 57.00 & 4.900 \\
 & GGT-100K & \textbf{24.50} & 0.7488 & \textbf{0.2289} & 22.00 & 61.00 & -- \\
 & $\Delta$ (GGT-100K $-$ Existing) & +0.60 & +0.0186 & $-$0.0413 & +1.00 & +4.00 & -- \\
\bottomrule
\end{tabular}
\end{table}
'''


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the fixture's paths are relative to the repository root


def test_markdown_and_latex_are_exact():
    table = build_table(load_table_options(TABLE))
    assert to_markdown(table) == EXPECTED_MD
    assert to_latex(table) == EXPECTED_TEX


def test_cli_writes_markdown_latex_csv_and_plot(tmp_path):
    assert main(["-opt", TABLE, "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "generalization.md").read_text() == EXPECTED_MD
    assert (tmp_path / "generalization.tex").read_text() == EXPECTED_TEX
    csv_lines = (tmp_path / "generalization.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,data,test:psnr(higher),test:ssim(higher),test:lpips(lower)")
    assert csv_lines[4] == "SwinIR,Δ (GGT-100K − Existing),1.25,0.0308,-0.057,1.55,5.505,-0.676"
    from PIL import Image

    assert Image.open(tmp_path / "generalization.png").size[0] > 600


def test_summaries_on_the_command_line(tmp_path):
    files = [f"tests/data/results/{n}/summary.json" for n in ("swinir_exist", "swinir_ggt")]
    assert main(files + ["--columns", "test:psnr,reallq:niqe", "--delta", "Existing:GGT-100K",
                         "--out-dir", str(tmp_path), "--name", "quick", "--no-plot"]) == 0
    md = (tmp_path / "quick.md").read_text()
    assert "| SwinIR | GGT-100K | **24.50** | **4.200** |" in md
    assert "| SwinIR | Δ (GGT-100K − Existing) | +1.25 | -0.676 |" in md
    assert not (tmp_path / "quick.png").exists()


def test_missing_summary_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "t.yml"
    bad.write_text("rows: [{model: X, data: Y, run: nope}]\ncolumns: [{set: test, metric: psnr}]\n")
    assert main(["-opt", str(bad), "--out-dir", str(tmp_path)]) == 2
    assert "summary not found: results/nope/summary.json" in capsys.readouterr().err


def _copied_fixture(tmp_path: Path, edit) -> Path:
    """The fixture table with its summaries copied to tmp_path, ``edit(name, summary)`` applied to each."""
    import json
    import shutil

    import yaml

    for src in (ROOT / "tests/data/results").glob("*/summary.json"):
        s = json.loads(src.read_text())
        for m in s["metrics"].values():
            m["options"] = {"convention": "pyiqa"}
        edit(src.parent.name, s)
        (tmp_path / src.parent.name).mkdir()
        (tmp_path / src.parent.name / "summary.json").write_text(json.dumps(s))
    opt = yaml.safe_load((ROOT / TABLE).read_text())
    opt["results_root"] = str(tmp_path)
    opt["rows"][2] = {"run": "swinir_ggt"}
    p = tmp_path / "table.yml"
    p.write_text(yaml.safe_dump(opt))
    return p


def test_cells_scored_under_another_protocol_are_marked_or_refused(tmp_path):
    from ggt_ir.config import OptionsError

    def edit(name, s):
        if name == "swinir_ggt":  # the column's best PSNR, scored with the other SSIM/PSNR convention
            s["metrics"]["psnr"]["options"]["convention"] = "basicsr"
        if name == "restormer_exist":  # the mean of 100 images, not 500
            s["sets"]["test"]["num_images"] = 100

    opt_file = _copied_fixture(tmp_path, edit)
    table = build_table(load_table_options(opt_file))
    cols = [f"{c.set}:{c.metric}:{c.category}" for c in table.opts.columns]
    marked = {(table.row_label(i), cols[j]) for i, j in table.marks}
    assert marked == {("SwinIR / GGT-100K", "test:psnr:None"), ("SwinIR / GGT-100K", "test:psnr:rain"),
                      ("Restormer / Existing", "test:psnr:None"), ("Restormer / Existing", "test:ssim:None"),
                      ("Restormer / Existing", "test:lpips:None")}  # per-category counts (rain) are unchanged
    assert "options.convention" in table.protocol_keys[0] and "num_images" in table.protocol_keys[0]
    md = to_markdown(table)
    # marked cells take no part in the bold: the best PSNR left is Restormer / GGT-100K's 24.50
    assert "| SwinIR | GGT-100K | 24.50† | **0.7512** |" in md and "| Restormer | GGT-100K | **24.50** |" in md
    assert "| SwinIR | Δ (GGT-100K − Existing) | +1.25† |" in md
    assert 'options.convention = "basicsr" (column: "pyiqa")' in md and "num_images = 100 (column: 500)" in md
    assert r"24.50$^\dagger$" in to_latex(table)
    table.opts.protocol = "strict"
    with pytest.raises(OptionsError, match=r"SwinIR / GGT-100K \(.*swinir_ggt/summary.json\) in column test:psnr: "
                                           r"options.convention"):
        build_table(table.opts)
    assert main(["-opt", str(opt_file), "--protocol", "strict", "--out-dir", str(tmp_path / "out")]) == 2


def test_same_protocol_no_marks_and_html_page_and_delta_plot(tmp_path):
    from PIL import Image

    opt_file = _copied_fixture(tmp_path, lambda name, s: None)
    assert main(["-opt", str(opt_file), "--out-dir", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "generalization.md").read_text() == EXPECTED_MD  # nothing marked
    delta = Image.open(out / "generalization_delta.png")
    assert delta.size[0] >= 900 and delta.size[1] > 100
    page = (out / "generalization.html").read_text()
    assert "<tr class='delta'>" in page and "same for every cell" in page
    assert "No per-image data for" in page  # the fixtures have no per_image.json: said, not silently empty
    assert main(["-opt", str(opt_file), "--out-dir", str(tmp_path / "out2"), "--no-html"]) == 0
    assert not (tmp_path / "out2" / "generalization.html").exists()
