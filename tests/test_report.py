"""The eval report (index.html) and the table's comparison page, built once (tests/screenshot_reports.py:
demo data, two tiny SwinIRs, weight-free metrics).

Read as HTML without a browser: one table row per image, grids for every category, every link resolves to
a file, the viewer's data is complete, and the page stays light (only thumbnails and panels are <img>;
full-size files are reached through the viewer). Then opened in headless Chromium, where one is installed
(skipped otherwise; .ci/run installs Debian's chromium): sorting by a click, the
full-size viewer (zoom, pan, slider, layers, keys), no script error, no missing file."""
from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from screenshot_reports import Browser, build_reports, check_eval_page, check_table_page, find_chromium

from ggt_ir.eval.webpage import fmt

VOID = {"img", "meta", "br", "input", "link", "hr", "source"}


class Page(HTMLParser):
    """Every element with its attributes and ancestors; the text of each element; the inline JSON."""

    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.path, self.elements, self.stack, self.data = path, [], [], None
        self._script = None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "parents": list(self.stack), "text": []}
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append(el)
        if tag == "script" and el["attrs"].get("id") == "ggt-data":
            self._script = el

    def handle_endtag(self, tag):
        while self.stack:
            el = self.stack.pop()
            if el["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self.stack:
            el["text"].append(data)
        if self._script is not None and self.stack and self.stack[-1] is self._script:
            self.data = json.loads(data)

    def find(self, tag=None, within=None, **attrs) -> list[dict]:
        """Elements by tag and attributes (``cls`` matches one of the classes); ``within``: an ancestor's test."""
        out = []
        for el in self.elements:
            a = el["attrs"]
            if tag and el["tag"] != tag:
                continue
            if "cls" in attrs and attrs["cls"] not in (a.get("class") or "").split():
                continue
            if any(a.get(k) != v for k, v in attrs.items() if k != "cls"):
                continue
            if within and not any(within(p) for p in el["parents"]):
                continue
            out.append(el)
        return out

    def local_links(self) -> list[str]:
        return [el["attrs"][k] for el in self.elements for k in ("src", "href")
                if el["attrs"].get(k) and not el["attrs"][k].startswith(("#", "http:", "https:", "data:"))]


def text(el) -> str:
    return "".join(el["text"])


def resolves(page: Page, link: str) -> bool:
    return (page.path.parent / unquote(link)).is_file()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    return build_reports(tmp_path_factory.mktemp("reports"), log=lambda *a: None)


def test_eval_page_one_row_per_image_grids_for_every_category(reports):
    page = Page(reports["eval_page"])
    summary = json.loads((reports["eval_dir"] / "summary.json").read_text())
    per_image = json.loads((reports["eval_dir"] / "per_image.json").read_text())
    csv_rows = list(csv.DictReader((reports["eval_dir"] / "per_image.csv").open()))
    assert list(summary["sets"]) == ["test", "reallq"] and summary["files"]["per_image_json"] == "per_image.json"
    for si, (s, info) in enumerate(summary["sets"].items()):
        rows = page.find("tr", within=lambda p, si=si: p["attrs"].get("id") == f"img-{si}")
        rows = [r for r in rows if any(p["tag"] == "tbody" for p in r["parents"])]
        assert len(rows) == info["num_images"] == len(per_image["sets"][s])
        # each row opens its own image in the viewer
        thumbs = page.find("img", cls="thumb", **{"data-group": s})
        assert sorted(int(t["attrs"]["data-i"]) for t in thumbs) == list(range(info["num_images"]))
        # the grids: every category of the set, LQ | output (| GT) with the scores printed on the panels
        grid_imgs = page.find("img", within=lambda p: "cat" in (p["attrs"].get("class") or "").split(),
                              **{"data-group": s})
        cats = {next(p for p in g["parents"] if "cat" in (p["attrs"].get("class") or "").split())["attrs"]["data-category"]
                for g in grid_imgs}
        assert cats == set(info["per_category"]), f"set {s}: grids cover {cats}"
        roles = {g["attrs"]["data-layer"] for g in grid_imgs}
        assert roles == ({"0", "1", "2"} if info["paired"] else {"0", "1"})
        # the viewer's items: the full-size files, in set order
        items = page.data["items"][s]
        assert [it["title"].split(": ", 1)[1].rsplit(" (", 1)[0] for it in items] == [r["image"] for r in per_image["sets"][s]]
        for it in items:
            names = [layer["name"] for layer in it["layers"]]
            assert names == (["LQ", "output", "GT"] if info["paired"] else ["LQ", "output"])
            assert all(resolves(page, layer["src"]) for layer in it["layers"])
            assert it["layers"][1]["src"].startswith(f"images/{s}/") and it["layers"][1]["scores"]
    # the table's numbers are the CSV's, the panel captions carry the scores
    psnr_col = [th for th in page.find("th", **{"data-key": "psnr"})
                if any(p["attrs"].get("id") == "img-0" for p in th["parents"])]
    assert len(psnr_col) == 1
    first = csv_rows[0]
    row = next(r for r in page.find("tr") if any(text(c) == first["image"] for c in page.find("td") if r in c["parents"]))
    cells = [c for c in page.find("td") if c["parents"] and c["parents"][-1] is row]
    psnr_cell = cells[4 + list(summary["sets"]["test"]["means"]).index("psnr")]
    assert float(psnr_cell["attrs"]["data-v"]) == pytest.approx(float(first["psnr"]), abs=1e-6)
    pick = next(r for r in per_image["sets"]["test"] if r.get("panel"))
    out_fig = next(f for f in page.find("figure", **{"data-role": "output"})
                   if any(g["attrs"].get("src", "").endswith(pick["panel"]["output"]) for g in page.find("img")
                          if f in g["parents"]))
    caption = text(out_fig)
    assert f"psnr↑ {fmt(pick['scores']['psnr'])}" in caption and f"ssim↑ {fmt(pick['scores']['ssim'])}" in caption
    assert set(pick["panel_scores"]["lq"]) == {"psnr", "ssim", "entropy"} and set(pick["panel_scores"]["gt"]) == {"entropy"}


def test_eval_page_links_resolve_and_the_page_stays_light(reports):
    page = Page(reports["eval_page"])
    links = page.local_links()
    assert links and all(resolves(page, x) for x in links), [x for x in links if not resolves(page, x)]
    # <img> elements only show previews; full-size images are reached through the viewer's data
    srcs = [el["attrs"]["src"] for el in page.find("img") if el["attrs"].get("src")]
    assert srcs and all(s.startswith(("thumbs/", "grids/")) and s.endswith(".jpg") for s in srcs)
    n = sum(len(v) for v in page.data["items"].values())
    assert reports["eval_page"].stat().st_size / n < 6000  # bytes of page per image
    from PIL import Image

    thumb = Image.open(reports["eval_dir"] / unquote(srcs[-1]))
    assert max(thumb.size) <= 128
    assert (reports["eval_dir"] / "grids" / "test.png").is_file() and "grids/test.png" in links


def test_table_page_compares_the_rows_on_the_same_images(reports):
    page = Page(reports["table_page"])
    links = page.local_links()
    assert all(resolves(page, x) for x in links), [x for x in links if not resolves(page, x)]
    assert any(x.endswith("tiny_delta.png") for x in links) and any(x.endswith("tiny.png") for x in links)
    assert sum("swinir_existing/index.html" in x for x in links) == 1  # each row links to its eval page
    summary = json.loads((reports["eval_dir"] / "summary.json").read_text())
    for s, info in summary["sets"].items():
        group = f"cmp:{s}"
        imgs = page.find("img", **{"data-group": group})
        cats = {next(p for p in g["parents"] if "cat" in (p["attrs"].get("class") or "").split())["attrs"]["data-category"]
                for g in imgs}
        assert cats == set(info["per_category"])
        items = page.data["items"][group]
        assert len(items) == sum(min(2, v["num_images"]) for v in info["per_category"].values())
        for it in items:
            names = [layer["name"] for layer in it["layers"]]
            assert names == ["LQ", "SwinIR / Existing", "SwinIR / GGT-100K"] + (["GT"] if info["paired"] else [])
            assert (it["a"], it["b"]) == (1, 2)
            assert all(resolves(page, layer["src"]) for layer in it["layers"])
            assert "swinir_existing/images/" in it["layers"][1]["src"] and "swinir_ggt-100k/images/" in it["layers"][2]["src"]
    delta = [r for r in page.find("tr", cls="delta")]
    assert len(delta) == 1 and "GGT-100K − Existing" in text(delta[0])
    same = [el for el in page.find("span", cls="better") if text(el) == "same for every cell"]
    assert len(same) == 4  # the protocol check: one result per column, all the same
    keys = next(el for el in page.find("td") if "implementation" in text(el).split(", "))
    assert "options.convention" in text(keys) and "num_images" in text(keys)
    assert "protocol_sha256" in text(keys)  # the summaries' protocol blocks (weights, versions) are compared too


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (apt-get install chromium, or set $CHROMIUM): "
                                                    "the report pages were not checked in a browser")
def test_report_pages_in_headless_chromium(reports, tmp_path):
    with Browser(find_chromium()) as b:
        shots = check_eval_page(b, reports, tmp_path, log=lambda *a: None)
        shots += check_table_page(b, reports, tmp_path, log=lambda *a: None)
    assert len(shots) == 7 and all(p.stat().st_size > 10_000 for p in shots)
